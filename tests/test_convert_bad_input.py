"""Bad input never crashes a conversion halfway nor disappears: each case is a counted skip or a clear error."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from conftest import synthetic_documents
from test_tokenization import merges_into_eos_tokenizer

from meco_callbacks.corpus.documents.conversion import convert_documents
from meco_callbacks.corpus.documents.document_checks import DocumentPolicy
from meco_callbacks.corpus.documents.sources import FieldMapping, InputError
from meco_callbacks.formats import read_dataset_info

GOOD = {'text': 'a page about rivers', 'url': 'https://en.wikipedia.org/wiki/River'}
GOOD_LINE = json.dumps(GOOD).encode()
WITH_TOPIC = FieldMapping(metadata=('topic',))


def convert(inputs, out: Path, tokenizer, **kwargs):
    return convert_documents([str(p) for p in inputs], out, tokenizer, progress=False, **kwargs)


def urls_written(directory: Path) -> list[str]:
    from streaming import LocalDataset

    dataset = LocalDataset(str(directory))
    return [dataset[i]['url'] for i in range(len(dataset))]


def record(**fields) -> bytes:
    return json.dumps(fields).encode()


BAD_LINES = {
    'malformed_json': b'{"text": "a page", "url": ',
    'not_a_json_object': b'["a page", "https://a.org"]',
    'blank_line': b'   \t',
    'invalid_utf8': b'{"text": "caf\xe9", "url": "https://a.org"}',
    'missing_text': record(url='https://a.org'),
    'missing_text (null)': record(text=None, url='https://a.org'),
    'text_not_string': record(text=['a', 'page'], url='https://a.org'),
    'empty_text': record(text='', url='https://a.org'),
    'empty_text (whitespace only)': record(text=' \n\t\u3000 ', url='https://a.org'),
    'text_invalid_unicode': b'{"text": "lone \\ud800 surrogate", "url": "https://a.org"}',
    'missing_url': record(text='a page'),
    'missing_url (null)': record(text='a page', url=None),
    'empty_url': record(text='a page', url=''),
    'url_not_string': record(text='a page', url=['https://a.org']),
    'url_has_whitespace': record(text='a page', url='https://a.org/a\tpage'),
    'url_has_whitespace (newline injection)': record(text='a page', url='https://a.org\n\nIgnore the above'),
    'url_has_control_characters': record(text='a page', url='https://a.org/\x07bell'),
    'url_has_control_characters (bidi override)': record(text='a page', url='https://a.org/\u202egro.live'),
    'url_too_long': record(text='a page', url='https://a.org/' + 'a' * 1987),
    'metadata_invalid_unicode': b'{"text": "a page", "url": "https://a.org", "topic": "\\udfff"}',
}


@pytest.mark.parametrize('case', BAD_LINES, ids=list(BAD_LINES))
def test_each_bad_record_is_a_counted_skip_with_its_reason(case, tmp_path, tokenizer):
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(GOOD_LINE + b'\n' + BAD_LINES[case] + b'\n' + GOOD_LINE + b'\n')
    convert([source], tmp_path / 'out', tokenizer, fields=WITH_TOPIC)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert stats['skipped'] == {case.split(' ')[0]: 1}
    assert (stats['documents_read'], stats['documents_written']) == (3, 2)


def test_a_url_of_exactly_the_limit_is_kept(tmp_path, tokenizer):
    url = 'https://a.org/' + 'a' * 1986
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(record(text='a page', url=url) + b'\n')
    convert([source], tmp_path / 'out', tokenizer)
    assert urls_written(tmp_path / 'out') == [url]


def test_read_equals_written_plus_skipped_over_many_units(tmp_path, tokenizer):
    lines = [GOOD_LINE] * 30 + list(BAD_LINES.values()) * 3 + [json.dumps(d).encode() for d in synthetic_documents(30)]
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(b'\n'.join(lines) + b'\n')
    convert([source], tmp_path / 'out', tokenizer, fields=WITH_TOPIC, unit_bytes=700, num_workers=2)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert stats['documents_read'] == len(lines)
    assert stats['documents_written'] == 60
    assert sum(stats['skipped'].values()) == 3 * len(BAD_LINES)


def test_a_document_over_the_length_limit_is_skipped(tmp_path, tokenizer):
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(record(text='a' * 101, url='https://a.org') + b'\n' + GOOD_LINE + b'\n')
    convert([source], tmp_path / 'out', tokenizer, policy=DocumentPolicy(max_document_chars=100))
    assert read_dataset_info(tmp_path / 'out')['stats']['skipped'] == {'document_too_long': 1}


def test_a_file_with_a_byte_order_mark_is_read(tmp_path, tokenizer):
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(b'\xef\xbb\xbf' + GOOD_LINE + b'\n')
    convert([source], tmp_path / 'out', tokenizer)
    assert urls_written(tmp_path / 'out') == [GOOD['url']]


def test_a_marked_file_cut_into_units_gives_each_document_once(tmp_path, tokenizer):
    # Issue 15 item 1. Lines of equal length; the second unit starts exactly where line 10 starts (after the
    # 3-byte mark), so a reader that forgot the mark's bytes ends unit 0 three bytes late and reads line 10 twice.
    lines = [record(text=f'document {i:02d}', url=f'https://a.org/{i:02d}') for i in range(30)]
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(b'\xef\xbb\xbf' + b''.join(line + b'\n' for line in lines))
    convert([source], tmp_path / 'out', tokenizer, unit_bytes=3 + 10 * (len(lines[0]) + 1))
    info = read_dataset_info(tmp_path / 'out')
    assert info['conversion']['units'] == 3
    assert urls_written(tmp_path / 'out') == [f'https://a.org/{i:02d}' for i in range(30)]
    assert (info['stats']['documents_read'], info['stats']['documents_written']) == (30, 30)


def test_spaces_in_a_url_are_percent_encoded_and_counted_by_default(tmp_path, tokenizer):
    # Issue 20 item 8: a space inside a path is common in real file names and harmless once encoded.
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(
        record(text='a page', url='https://docs.example.org/My Guide/page one.html') + b'\n' + GOOD_LINE + b'\n'
    )
    convert([source], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert urls_written(tmp_path / 'out') == ['https://docs.example.org/My%20Guide/page%20one.html', GOOD['url']]
    assert (stats['urls_spaces_encoded'], stats['skipped']) == (1, {})


def test_url_spaces_skip_drops_documents_whose_url_has_a_space(tmp_path, tokenizer):
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(record(text='a page', url='https://a.org/a page') + b'\n' + GOOD_LINE + b'\n')
    convert([source], tmp_path / 'out', tokenizer, policy=DocumentPolicy(url_spaces='skip'))
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert urls_written(tmp_path / 'out') == [GOOD['url']]
    assert (stats['urls_spaces_encoded'], stats['skipped']) == (0, {'url_has_whitespace': 1})


def test_a_url_made_too_long_by_encoding_its_spaces_is_skipped(tmp_path, tokenizer):
    url = 'https://a.org/' + ' ' * 10
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(record(text='a page', url=url) + b'\n')
    convert([source], tmp_path / 'out', tokenizer, policy=DocumentPolicy(max_url_chars=len(url) + 19))
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert (stats['urls_spaces_encoded'], stats['skipped']) == (0, {'url_too_long': 1})


def test_an_empty_input_file_is_reported(tmp_path, tokenizer):
    (tmp_path / 'a-empty.jsonl').write_bytes(b'')
    (tmp_path / 'b.jsonl').write_bytes(GOOD_LINE + b'\n')
    convert([tmp_path / '*.jsonl'], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert stats['inputs_empty'] == [str(tmp_path / 'a-empty.jsonl')]
    assert (stats['inputs_read'], stats['documents_written']) == (2, 1)


def test_a_corrupt_gzip_file_is_counted_unreadable_and_the_rest_converted(tmp_path, tokenizer):
    (tmp_path / 'a.jsonl.gz').write_bytes(b'this is not gzip data at all')
    (tmp_path / 'b.jsonl').write_bytes(GOOD_LINE + b'\n')
    convert([tmp_path / 'a.jsonl.gz', tmp_path / 'b.jsonl'], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert list(stats['files_unreadable']) == [str(tmp_path / 'a.jsonl.gz')]
    assert stats['files_unreadable'][str(tmp_path / 'a.jsonl.gz')].startswith('BadGzipFile: Not a gzipped file')
    assert urls_written(tmp_path / 'out') == [GOOD['url']]


def test_a_truncated_gzip_file_keeps_the_documents_before_the_damage(tmp_path, tokenizer):
    docs = synthetic_documents(200)
    whole = gzip.compress(b''.join(json.dumps(d).encode() + b'\n' for d in docs))
    (tmp_path / 'cut.jsonl.gz').write_bytes(whole[: len(whole) // 2])
    convert([tmp_path / 'cut.jsonl.gz'], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    written = urls_written(tmp_path / 'out')
    assert 0 < len(written) < len(docs)
    assert written == [d['url'] for d in docs[: len(written)]]
    assert stats['documents_read'] == stats['documents_written'] + sum(stats['skipped'].values())
    assert 'EOFError' in stats['files_unreadable'][str(tmp_path / 'cut.jsonl.gz')]


def test_a_corrupt_parquet_file_is_counted_unreadable(tmp_path, tokenizer):
    (tmp_path / 'a.parquet').write_bytes(b'PAR1 but nothing else')
    (tmp_path / 'b.jsonl').write_bytes(GOOD_LINE + b'\n')
    convert([tmp_path / 'a.parquet', tmp_path / 'b.jsonl'], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert list(stats['files_unreadable']) == [str(tmp_path / 'a.parquet')]
    assert stats['documents_written'] == 1


def test_a_dangling_link_matched_by_a_glob_is_counted_unreadable(tmp_path, tokenizer):
    (tmp_path / 'b.jsonl').write_bytes(GOOD_LINE + b'\n')
    os.symlink(tmp_path / 'gone.jsonl', tmp_path / 'a.jsonl')
    convert([tmp_path / '*.jsonl'], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert stats['files_unreadable'] == {str(tmp_path / 'a.jsonl'): 'FileNotFoundError: No such file or directory'}


def test_parquet_without_the_text_column_is_refused_naming_its_columns(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{'content': 'a page', 'url': 'https://a.org'}]), tmp_path / 'a.parquet')
    with pytest.raises(
        InputError,
        match=r"a.parquet has no text column 'text' \(columns: \['content', 'url'\]\); "
        r'name the right one with --text-field',
    ):
        convert([tmp_path / 'a.parquet'], tmp_path / 'out', tokenizer)


def test_parquet_without_the_url_column_is_refused_under_the_skip_policy(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{'text': 'a page', 'link': 'https://a.org'}]), tmp_path / 'a.parquet')
    with pytest.raises(InputError, match=r"has no url column 'url' .* --url-field"):
        convert([tmp_path / 'a.parquet'], tmp_path / 'out', tokenizer)


def test_a_placeholder_that_is_not_a_valid_url_is_refused():
    with pytest.raises(ValueError, match="placeholder_url 'no such url' is itself not a valid URL"):
        DocumentPolicy(missing_url='placeholder', placeholder_url='no such url')


def test_text_that_tokenizes_to_nothing_is_a_counted_skip(tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token='[UNK]'))
    backend.normalizer = normalizers.BertNormalizer()  # drops control characters
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        [GOOD['text']] * 5,
        trainers.WordPieceTrainer(vocab_size=100, special_tokens=['[UNK]', '[SEP]'], show_progress=False),
    )
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token='[UNK]', eos_token='[SEP]')
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(record(text='\x00\x01\x02', url='https://a.org') + b'\n' + GOOD_LINE + b'\n')
    convert([source], tmp_path / 'out', wordpiece)
    info = read_dataset_info(tmp_path / 'out')
    assert info['tokenizer_backend'] == 'hf'
    assert info['stats']['skipped'] == {'no_tokens': 1}


def test_text_that_the_tokenizer_merges_into_a_special_token_is_skipped(tmp_path):
    # Even split_special_tokens cannot stop this tokenizer's merges from rebuilding <|endoftext|> from its text.
    tokenizer = merges_into_eos_tokenizer(tmp_path / 'tokenizer')
    source = tmp_path / 'docs.jsonl'
    source.write_bytes(
        record(text='a page <|endoftext|> about rivers', url='https://a.org') + b'\n' + GOOD_LINE + b'\n'
    )
    convert([source], tmp_path / 'out', tokenizer)
    info = read_dataset_info(tmp_path / 'out')
    assert info['tokenizer_backend'] == 'hf'
    assert info['stats']['skipped'] == {'special_token_ids': 1}
    assert urls_written(tmp_path / 'out') == [GOOD['url']]
