"""Stage 1 conversion: every input format becomes the same document MDS, tokens exact, release format kept as is."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_documents

from meco_callbacks.corpus.documents.conversion import convert_documents
from meco_callbacks.corpus.documents.document_checks import DocumentPolicy
from meco_callbacks.corpus.documents.sources import FieldMapping, InputError
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.formats import DOCUMENT_FORMAT, read_dataset_info
from meco_callbacks.tokenizer.fingerprint import tokenizer_info

DOCS = synthetic_documents(40)


def write_jsonl(path: Path, records: list, opener=open) -> Path:
    """One JSON object per line (``opener`` may compress)."""
    with opener(path, 'wt') as out:
        for record in records:
            out.write(json.dumps(record) + '\n')
    return path


def read_rows(directory: Path) -> list[dict]:
    """Every row of an MDS dataset, read with Streaming's own reader."""
    from streaming import LocalDataset

    dataset = LocalDataset(str(directory))
    return [dataset[i] for i in range(len(dataset))]


def expected_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)['input_ids']


def convert(inputs, out: Path, tokenizer, **kwargs):
    return convert_documents([str(p) for p in inputs], out, tokenizer, progress=False, **kwargs)


def test_jsonl_becomes_one_row_per_document_with_exact_tokens(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / 'docs.jsonl', DOCS)
    convert([source], tmp_path / 'out', tokenizer)
    rows = read_rows(tmp_path / 'out')
    assert [row['url'] for row in rows] == [doc['url'] for doc in DOCS]
    assert [row['input_ids'].tolist() for row in rows] == [expected_ids(tokenizer, doc['text']) for doc in DOCS]
    assert [row['length'] for row in rows] == [len(row['input_ids']) for row in rows]
    assert rows[0]['input_ids'].dtype == np.uint32


def test_info_file_records_format_tokenizer_backend_and_counts(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / 'docs.jsonl', DOCS)
    convert([source], tmp_path / 'out', tokenizer)
    info = read_dataset_info(tmp_path / 'out')
    tokens = sum(len(expected_ids(tokenizer, doc['text'])) for doc in DOCS)
    assert info['format'] == DOCUMENT_FORMAT
    assert info['tokenizer'] == tokenizer_info(tokenizer)
    assert info['tokenizer_backend'] == 'tiktoken'
    assert info['stats'] == {
        'documents_read': 40,
        'documents_written': 40,
        'tokens_written': tokens,
        'skipped': {},
        'urls_replaced_by_placeholder': {},
        'urls_spaces_encoded': 0,
        'metadata_missing': {},
        'files_unreadable': {},
        'inputs_read': 1,
        'inputs_empty': [],
    }


def test_round_trip_text_to_tokens_and_back(tmp_path, tokenizer):
    texts = ['Hello, world! 123', 'the model reads\ta page\n\nabout rivers  ', 'caf\u00e9 \u6771\u4eac \U0001f389']
    source = write_jsonl(tmp_path / 'docs.jsonl', [{'text': t, 'url': 'https://a.org'} for t in texts])
    convert([source], tmp_path / 'out', tokenizer)
    assert [tokenizer.decode(row['input_ids']) for row in read_rows(tmp_path / 'out')] == texts


def test_literal_eos_text_in_a_document_stays_text(tmp_path, tokenizer):
    text = 'a page <|endoftext|> about rivers<|endoftext|>'
    source = write_jsonl(tmp_path / 'docs.jsonl', [{'text': text, 'url': 'https://a.org'}])
    convert([source], tmp_path / 'out', tokenizer)
    ids = read_rows(tmp_path / 'out')[0]['input_ids'].tolist()
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids) == text


def _gz(tmp_path: Path) -> list[Path]:
    return [write_jsonl(tmp_path / 'docs.jsonl.gz', DOCS, opener=gzip.open)]


def _zst(tmp_path: Path) -> list[Path]:
    import zstandard

    path = tmp_path / 'docs.jsonl.zst'
    lines = ''.join(json.dumps(doc) + '\n' for doc in DOCS).encode()
    compressor = zstandard.ZstdCompressor()
    path.write_bytes(compressor.compress(lines[:500]) + compressor.compress(lines[500:]))  # two frames
    return [path]


def _json_array(tmp_path: Path) -> list[Path]:
    path = tmp_path / 'docs.json'
    path.write_text(json.dumps(DOCS, indent=2))
    return [path]


def _json_lines_named_json(tmp_path: Path) -> list[Path]:
    return [write_jsonl(tmp_path / 'docs.json', DOCS)]


def _parquet(tmp_path: Path) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / 'docs.parquet'
    pq.write_table(pa.Table.from_pylist(DOCS), path, row_group_size=7)
    return [path]


def _hf_save_to_disk(tmp_path: Path) -> list[Path]:
    import datasets

    datasets.Dataset.from_list(DOCS).save_to_disk(str(tmp_path / 'hf'))
    return [tmp_path / 'hf']


def _mds_text(tmp_path: Path) -> list[Path]:
    from streaming import MDSWriter

    with MDSWriter(out=str(tmp_path / 'mds'), columns={'text': 'str', 'url': 'str'}, size_limit=1000) as writer:
        for doc in DOCS:
            writer.write(doc)
    return [tmp_path / 'mds']


def _several_jsonl_files_by_glob(tmp_path: Path) -> list[Path]:
    for part in range(4):
        write_jsonl(tmp_path / f'part-{part}.jsonl', DOCS[part * 10 : (part + 1) * 10])
    return [tmp_path / 'part-*.jsonl']


@pytest.mark.parametrize(
    'make_input',
    [
        _gz,
        _zst,
        _json_array,
        _json_lines_named_json,
        _parquet,
        _hf_save_to_disk,
        _mds_text,
        _several_jsonl_files_by_glob,
    ],
    ids=lambda make: make.__name__.strip('_'),
)
def test_every_input_format_gives_the_same_documents_as_jsonl(make_input, tmp_path, tokenizer):
    convert([write_jsonl(tmp_path / 'reference.jsonl', DOCS)], tmp_path / 'reference', tokenizer)
    convert(make_input(tmp_path), tmp_path / 'out', tokenizer, unit_bytes=2000)
    rows, reference = read_rows(tmp_path / 'out'), read_rows(tmp_path / 'reference')
    assert [(r['url'], r['input_ids'].tolist()) for r in rows] == [
        (r['url'], r['input_ids'].tolist()) for r in reference
    ]
    assert read_dataset_info(tmp_path / 'out')['stats']['documents_written'] == len(DOCS)


def test_nested_fields_and_metadata_columns_from_jsonl(tmp_path, tokenizer):
    records = [
        {
            'content': {'body': 'a page about rivers'},
            'metadata': {'url': 'https://a.org/x', 'dump': 'CC-1'},
            'quality': 0.87,
            'lang': 'en',
        },
        {'content': {'body': 'forum news'}, 'metadata': {'url': 'https://b.org/'}, 'quality': None, 'lang': 'de'},
    ]
    source = write_jsonl(tmp_path / 'docs.jsonl', records)
    fields = FieldMapping(text='content.body', url='metadata.url', metadata=('quality', 'metadata.dump', 'lang'))
    convert([source], tmp_path / 'out', tokenizer, fields=fields)
    rows = read_rows(tmp_path / 'out')
    assert [(r['url'], r['quality'], r['dump'], r['lang']) for r in rows] == [
        ('https://a.org/x', '0.87', 'CC-1', 'en'),
        ('https://b.org/', '', '', 'de'),
    ]
    assert rows[1]['input_ids'].tolist() == expected_ids(tokenizer, 'forum news')
    assert read_dataset_info(tmp_path / 'out')['stats']['metadata_missing'] == {'dump': 1, 'quality': 1}


def test_nested_url_in_a_parquet_struct_column(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{'text': d['text'], 'metadata': {'url': d['url'], 'dump': 'CC'}} for d in DOCS[:5]])
    pq.write_table(table, tmp_path / 'docs.parquet')
    convert(
        [tmp_path / 'docs.parquet'],
        tmp_path / 'out',
        tokenizer,
        fields=FieldMapping(url='metadata.url', metadata=('metadata.dump',)),
    )
    assert [(r['url'], r['dump']) for r in read_rows(tmp_path / 'out')] == [(d['url'], 'CC') for d in DOCS[:5]]


def test_mds_text_with_numeric_and_json_columns(tmp_path, tokenizer):
    # Numbers are carried as text the way the packer carries an MDS column; a json column is looked into.
    from streaming import MDSWriter

    columns = {'text': 'str', 'meta': 'json', 'quality': 'float32', 'votes': 'int'}
    with MDSWriter(out=str(tmp_path / 'mds'), columns=columns, size_limit=200) as writer:
        for i, doc in enumerate(DOCS[:6]):
            writer.write(
                {'text': doc['text'], 'meta': {'url': doc['url'], 'tags': ['a', i]}, 'quality': 0.87, 'votes': i}
            )
    fields = FieldMapping(url='meta.url', metadata=('quality', 'votes', 'meta.tags'))
    convert([tmp_path / 'mds'], tmp_path / 'out', tokenizer, fields=fields)
    rows = read_rows(tmp_path / 'out')
    assert len(json.loads((tmp_path / 'mds' / 'index.json').read_text())['shards']) > 1
    assert [(r['url'], r['quality'], r['votes'], r['tags']) for r in rows] == [
        (doc['url'], '0.87', str(i), f'["a", {i}]') for i, doc in enumerate(DOCS[:6])
    ]
    assert [r['input_ids'].tolist() for r in rows] == [expected_ids(tokenizer, doc['text']) for doc in DOCS[:6]]


def _release_mds(directory: Path, rows: list[dict], dtype, compression: str | None = None) -> Path:
    """The MeCo authors' per-document format: input_ids array, length (uint32), url, and their domain column."""
    from streaming import MDSWriter

    columns = {'input_ids': f'ndarray:{np.dtype(dtype).name}', 'length': 'uint32', 'domain': 'str', 'url': 'str'}
    with MDSWriter(out=str(directory), columns=columns, compression=compression) as writer:
        for row in rows:
            writer.write(
                {
                    'input_ids': np.asarray(row['ids'], dtype=dtype),
                    'length': row.get('length', len(row['ids'])),
                    'domain': 'dclm',
                    'url': row['url'],
                }
            )
    return directory


@pytest.mark.parametrize('dtype, compression', [(np.uint32, None), (np.int32, None), (np.uint32, 'zstd')])
def test_release_format_tokens_pass_through_unchanged(dtype, compression, tmp_path, tokenizer):
    rows = [{'ids': [5, 9, 300, 17], 'url': 'https://a.org/1'}, {'ids': [42], 'url': 'https://b.org/2'}]
    source = _release_mds(tmp_path / 'release', rows, dtype, compression)
    convert([source], tmp_path / 'out', tokenizer, fields=FieldMapping(metadata=('domain',)))
    out = read_rows(tmp_path / 'out')
    assert [(r['input_ids'].tolist(), r['length'], r['url'], r['domain']) for r in out] == [
        ([5, 9, 300, 17], 4, 'https://a.org/1', 'dclm'),
        ([42], 1, 'https://b.org/2', 'dclm'),
    ]
    assert out[0]['input_ids'].dtype == np.uint32


def test_release_format_rows_with_impossible_tokens_are_counted_skips(tmp_path, tokenizer):
    rows = [
        {'ids': [5, -1], 'url': 'https://a.org'},
        {'ids': [5, len(tokenizer)], 'url': 'https://a.org'},
        {'ids': [5, 6], 'length': 3, 'url': 'https://a.org'},
        {'ids': [5, tokenizer.eos_token_id], 'url': 'https://a.org'},
        {'ids': [7], 'url': 'https://a.org'},
    ]
    convert([_release_mds(tmp_path / 'release', rows, np.int32)], tmp_path / 'out', tokenizer)
    stats = read_dataset_info(tmp_path / 'out')['stats']
    assert stats['skipped'] == {
        'negative_token_id': 1,
        'token_id_out_of_vocabulary': 1,
        'length_mismatch': 1,
        'special_token_ids': 1,
    }
    assert [r['input_ids'].tolist() for r in read_rows(tmp_path / 'out')] == [[7]]


@pytest.mark.slow
def test_a_ten_megabyte_document_is_converted_whole(tmp_path, tokenizer):
    sentence = ' the model reads a page about rivers and mountains.'
    repeats = 10_000_000 // len(sentence) + 1
    write_jsonl(tmp_path / 'big.jsonl', [{'text': sentence * repeats, 'url': 'https://big.org'}])
    convert([tmp_path / 'big.jsonl'], tmp_path / 'out', tokenizer)
    ids = read_rows(tmp_path / 'out')[0]['input_ids']
    assert len(sentence) * repeats > 10_000_000
    assert ids.tolist() == expected_ids(tokenizer, sentence) * repeats


def test_placeholder_policy_keeps_documents_without_url_and_counts_them(tmp_path, tokenizer):
    records = [
        {'text': 'a page'},
        {'text': 'b page', 'url': None},
        {'text': 'c page', 'url': ''},
        {'text': 'd page', 'url': 7},
        {'text': 'e page', 'url': 'https://e.org'},
    ]
    source = write_jsonl(tmp_path / 'docs.jsonl', records)
    convert([source], tmp_path / 'out', tokenizer, policy=DocumentPolicy(missing_url='placeholder'))
    assert [r['url'] for r in read_rows(tmp_path / 'out')] == ['', '', '', '', 'https://e.org']
    assert read_dataset_info(tmp_path / 'out')['stats']['urls_replaced_by_placeholder'] == {
        'missing_url': 2,
        'empty_url': 1,
        'url_not_string': 1,
    }


def test_parquet_without_the_url_column_is_accepted_under_the_placeholder_policy(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{'text': 'a page'}]), tmp_path / 'docs.parquet')
    convert(
        [tmp_path / 'docs.parquet'],
        tmp_path / 'out',
        tokenizer,
        policy=DocumentPolicy(missing_url='placeholder', placeholder_url='unknown.invalid'),
    )
    assert [r['url'] for r in read_rows(tmp_path / 'out')] == ['unknown.invalid']


def test_hf_backend_writes_the_same_tokens_as_auto(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / 'docs.jsonl', DOCS)
    convert([source], tmp_path / 'auto', tokenizer)
    convert([source], tmp_path / 'hf', tokenizer, tokenizer_backend='hf')
    assert read_dataset_info(tmp_path / 'hf')['tokenizer_backend'] == 'hf'
    assert [r['input_ids'].tolist() for r in read_rows(tmp_path / 'hf')] == [
        r['input_ids'].tolist() for r in read_rows(tmp_path / 'auto')
    ]


def test_an_existing_different_dataset_is_refused_without_overwrite(tmp_path, tokenizer):
    convert([write_jsonl(tmp_path / 'a.jsonl', DOCS[:3])], tmp_path / 'out', tokenizer)
    with pytest.raises(ConversionError, match='already holds a different meco-documents-v1 dataset .*--overwrite'):
        convert([write_jsonl(tmp_path / 'b.jsonl', DOCS[3:6])], tmp_path / 'out', tokenizer)
    assert [r['url'] for r in read_rows(tmp_path / 'out')] == [d['url'] for d in DOCS[:3]]


def test_overwrite_replaces_a_different_dataset(tmp_path, tokenizer):
    convert([write_jsonl(tmp_path / 'a.jsonl', DOCS[:3])], tmp_path / 'out', tokenizer)
    convert([write_jsonl(tmp_path / 'b.jsonl', DOCS[3:6])], tmp_path / 'out', tokenizer, overwrite=True)
    assert [r['url'] for r in read_rows(tmp_path / 'out')] == [d['url'] for d in DOCS[3:6]]


def test_a_directory_of_other_files_is_refused_as_output(tmp_path, tokenizer):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'notes.txt').write_text('mine')
    with pytest.raises(ConversionError, match='already holds other files'):
        convert([write_jsonl(tmp_path / 'a.jsonl', DOCS[:3])], tmp_path / 'out', tokenizer)


def test_rerunning_a_finished_conversion_changes_nothing(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / 'docs.jsonl', DOCS)
    first = convert([source], tmp_path / 'out', tokenizer)
    index_time = (tmp_path / 'out' / 'index.json').stat().st_mtime_ns
    again = convert([source], tmp_path / 'out', tokenizer)
    assert again.units_converted == 0
    assert again.info == first.info
    assert (tmp_path / 'out' / 'index.json').stat().st_mtime_ns == index_time


def test_unknown_file_type_is_refused_with_the_supported_list(tmp_path, tokenizer):
    (tmp_path / 'docs.csv').write_text('text,url\n')
    with pytest.raises(InputError, match=r'cannot tell the format of .*docs.csv.*\.jsonl/\.json/\.ndjson'):
        convert([tmp_path / 'docs.csv'], tmp_path / 'out', tokenizer)


def test_a_pattern_matching_nothing_is_refused(tmp_path, tokenizer):
    with pytest.raises(InputError, match=r"input pattern '.*/\*\.jsonl' matches no files"):
        convert([tmp_path / '*.jsonl'], tmp_path / 'out', tokenizer)


def test_a_dataset_dict_directory_asks_for_one_split(tmp_path, tokenizer):
    import datasets

    datasets.DatasetDict({'train': datasets.Dataset.from_list(DOCS[:2])}).save_to_disk(str(tmp_path / 'dd'))
    with pytest.raises(InputError, match="DatasetDict with splits \\['train'\\]; pass one split directory"):
        convert([tmp_path / 'dd'], tmp_path / 'out', tokenizer)
