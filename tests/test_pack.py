"""The packer (stage 2): document MDS -> rows of exactly max_seq_len tokens with per-segment lengths and metadata."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_documents, write_documents_mds
from streaming import MDSWriter
from streaming.base.format import reader_from_json
from streaming.base.format.mds.encodings import get_mds_encoded_size, mds_encode

from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.formats import (
    DATASET_INFO_FILE,
    DOCUMENT_FORMAT,
    PACKED_FORMAT,
    read_dataset_info,
    write_dataset_info,
)
from meco_callbacks.tokenizer.fingerprint import tokenizer_info

A = [11, 12, 13]
B = [21, 22, 23, 24, 25, 26, 27, 28, 29, 30]
C = [41, 42, 43, 44, 45]
URL_A, URL_B, URL_C = 'https://a.example/1', 'https://b.example/2', 'https://c.example/3'


def write_token_documents(
    out_dir: Path,
    docs: list[dict[str, Any]],
    tokenizer: Any | None,
    dtype: str = 'uint32',
    extra_columns: tuple[str, ...] = (),
    compression: str | None = None,
) -> Path:
    """A document MDS with the given token ids; with an info file naming ``tokenizer`` unless it is None."""
    columns = {
        'input_ids': f'ndarray:{dtype}',
        'length': 'int' if dtype == 'uint32' else 'uint32',
        'url': 'str',
        **dict.fromkeys(extra_columns, 'str'),
    }
    with MDSWriter(out=str(out_dir), columns=columns, compression=compression) as writer:
        for doc in docs:
            ids = np.asarray(doc['input_ids'], dtype=dtype)
            writer.write(
                {
                    'input_ids': ids,
                    'length': doc.get('length', len(ids)),
                    'url': doc['url'],
                    **{name: doc[name] for name in extra_columns},
                }
            )
    if tokenizer is not None:
        write_dataset_info(out_dir, {'format': DOCUMENT_FORMAT, 'tokenizer': tokenizer_info(tokenizer)})
    return out_dir


def read_rows(packed_dir: Path) -> list[dict[str, Any]]:
    """Every row of a packed MDS, in order, read with Streaming's own shard reader."""
    rows = []
    for shard in json.loads((packed_dir / 'index.json').read_text())['shards']:
        reader = reader_from_json(str(packed_dir), None, shard)
        rows += [reader.get_item(i) for i in range(shard['samples'])]
    return rows


def abc_documents() -> list[dict[str, Any]]:
    return [{'input_ids': A, 'url': URL_A}, {'input_ids': B, 'url': URL_B}, {'input_ids': C, 'url': URL_C}]


@pytest.fixture(scope='module')
def llama_like_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer that, like Llama-3, puts ``<|begin_of_text|>`` (id 0) before encoded text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {'<|begin_of_text|>': 0, '<|end_of_text|>': 1, '<unk>': 2, **{f'w{i}': i for i in range(3, 64)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single='<|begin_of_text|> $A', special_tokens=[('<|begin_of_text|>', 0)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token='<|begin_of_text|>', eos_token='<|end_of_text|>', unk_token='<unk>'
    )
    out = tmp_path_factory.mktemp('llama_like')
    wrapped.save_pretrained(out)
    return out


def test_documents_are_laid_end_to_end_with_eos_and_cut_into_rows(tmp_path: Path, tokenizer) -> None:
    E = tokenizer.eos_token_id
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    rows = read_rows(tmp_path / 'packed')
    assert [row['input_ids'].tolist() for row in rows] == [
        [11, 12, 13, E, 21, 22, 23, 24],
        [25, 26, 27, 28, 29, 30, E, 41],
    ]
    assert [row['segment_lengths'].tolist() for row in rows] == [[4, 4], [7, 1]]
    assert [row['continued'] for row in rows] == [0, 1]
    assert [row['urls'] for row in rows] == [[URL_A, URL_B], [URL_B, URL_C]]
    assert all(row['input_ids'].dtype == np.uint32 for row in rows)


def test_a_document_longer_than_a_row_spans_rows_marked_continued(tmp_path: Path, tokenizer) -> None:
    E = tokenizer.eos_token_id
    docs = write_token_documents(
        tmp_path / 'docs', [{'input_ids': B, 'url': URL_B}, {'input_ids': A, 'url': URL_A}], tokenizer
    )
    pack_documents(docs, tmp_path / 'packed', max_seq_len=4, progress=False)
    rows = read_rows(tmp_path / 'packed')
    assert [row['input_ids'].tolist() for row in rows] == [[21, 22, 23, 24], [25, 26, 27, 28], [29, 30, E, 11]]
    assert [row['segment_lengths'].tolist() for row in rows] == [[4], [4], [3, 1]]
    assert [row['continued'] for row in rows] == [0, 1, 1]
    assert [row['urls'] for row in rows] == [[URL_B], [URL_B], [URL_B, URL_A]]


def test_documents_of_every_size_class_are_read_exactly(tmp_path: Path, tokenizer) -> None:
    # MDS stores an array's shape in 1, 2 or 4 bytes depending on its length; each width must decode exactly.
    E = tokenizer.eos_token_id
    rng = np.random.default_rng(0)
    documents = [
        {'input_ids': rng.integers(1, 300, size).tolist(), 'url': f'https://x.example/{size}'}
        for size in (1, 255, 256, 65_535, 65_536, 70_001)
    ]
    docs = write_token_documents(tmp_path / 'docs', documents, tokenizer)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=1000, progress=False)
    stream = np.concatenate([row['input_ids'] for row in read_rows(tmp_path / 'packed')])
    expected = np.concatenate([np.append(np.asarray(doc['input_ids'], np.uint32), E) for doc in documents])
    assert stats['rows'] == len(expected) // 1000
    assert stream.tolist() == expected[: len(stream)].tolist()


def test_each_segment_carries_its_documents_metadata_and_a_continued_segment_repeats_it(
    tmp_path: Path, tokenizer
) -> None:
    extra = {URL_A: ('a.example', 'rivers'), URL_B: ('b.example', 'music'), URL_C: ('c.example', 'code')}
    documents = [dict(doc, domain=extra[doc['url']][0], topic=extra[doc['url']][1]) for doc in abc_documents()]
    docs = write_token_documents(tmp_path / 'docs', documents, tokenizer, extra_columns=('domain', 'topic'))
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    rows = read_rows(tmp_path / 'packed')
    assert [row['metadata'] for row in rows] == [
        [{'domain': 'a.example', 'topic': 'rivers'}, {'domain': 'b.example', 'topic': 'music'}],
        [{'domain': 'b.example', 'topic': 'music'}, {'domain': 'c.example', 'topic': 'code'}],
    ]


def test_metadata_columns_selects_the_carried_columns(tmp_path: Path, tokenizer) -> None:
    documents = [dict(doc, domain='d', topic='t') for doc in abc_documents()]
    docs = write_token_documents(tmp_path / 'docs', documents, tokenizer, extra_columns=('domain', 'topic'))
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False, metadata_columns=['topic'])
    assert [row['metadata'] for row in read_rows(tmp_path / 'packed')] == [[{'topic': 't'}] * 2] * 2
    assert read_dataset_info(tmp_path / 'packed')['source']['metadata_columns'] == ['topic']


def test_a_tokenizer_that_adds_bos_gets_bos_before_every_document(
    tmp_path: Path, llama_like_tokenizer_dir: Path
) -> None:
    from transformers import AutoTokenizer

    llama_like = AutoTokenizer.from_pretrained(str(llama_like_tokenizer_dir))
    assert llama_like('w5 w6')['input_ids'] == [0, 5, 6]
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), llama_like)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    rows = read_rows(tmp_path / 'packed')
    bos, eos = 0, 1
    assert [row['input_ids'].tolist() for row in rows] == [
        [bos, 11, 12, 13, eos, bos, 21, 22],
        [23, 24, 25, 26, 27, 28, 29, 30],
        [eos, bos, 41, 42, 43, 44, 45, eos],
    ]
    assert [row['segment_lengths'].tolist() for row in rows] == [[5, 3], [8], [1, 7]]
    assert [row['continued'] for row in rows] == [0, 1, 1]
    assert stats['special_tokens'] == 6 and stats['tokens_dropped'] == 0


def test_the_authors_int32_release_without_info_file_packs_with_a_given_tokenizer(
    tmp_path: Path, tokenizer, tokenizer_dir: Path
) -> None:
    E = tokenizer.eos_token_id
    release = [dict(doc, domain='dclm') for doc in abc_documents()]
    docs = write_token_documents(tmp_path / 'docs', release, None, dtype='int32', extra_columns=('domain',))
    assert read_dataset_info(docs) is None
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, tokenizer=str(tokenizer_dir), progress=False)
    rows = read_rows(tmp_path / 'packed')
    assert [row['input_ids'].tolist() for row in rows] == [
        [11, 12, 13, E, 21, 22, 23, 24],
        [25, 26, 27, 28, 29, 30, E, 41],
    ]
    assert rows[0]['input_ids'].dtype == np.uint32
    assert [row['metadata'] for row in rows] == [[{'domain': 'dclm'}] * 2] * 2
    info = read_dataset_info(tmp_path / 'packed')
    assert info['tokenizer']['fingerprint'] == tokenizer_info(tokenizer)['fingerprint']
    assert info['source']['format'] is None


def test_documents_without_info_file_and_without_tokenizer_are_refused(tmp_path: Path) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), None, dtype='int32')
    with pytest.raises(ValueError, match='pass --tokenizer'):
        pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert not (tmp_path / 'packed').exists()


def test_a_tokenizer_whose_fingerprint_differs_from_the_documents_is_an_error(
    tmp_path: Path, tokenizer, llama_like_tokenizer_dir: Path
) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    with pytest.raises(ValueError, match='is not the one that produced'):
        pack_documents(
            docs, tmp_path / 'packed', max_seq_len=8, tokenizer=str(llama_like_tokenizer_dir), progress=False
        )
    assert not (tmp_path / 'packed').exists()


def test_a_token_id_beyond_the_tokenizers_vocabulary_is_an_error(tmp_path: Path, tokenizer) -> None:
    documents = abc_documents() + [{'input_ids': [7, len(tokenizer) + 5], 'url': URL_A}]
    docs = write_token_documents(tmp_path / 'docs', documents, None)
    with pytest.raises(ValueError, match=rf'document 3 of .* has token id {len(tokenizer) + 5}, outside'):
        pack_documents(docs, tmp_path / 'packed', max_seq_len=8, tokenizer=tokenizer, progress=False)


def test_the_info_file_records_format_tokenizer_source_and_stats(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    info = read_dataset_info(tmp_path / 'packed')
    assert info['format'] == PACKED_FORMAT
    assert info['max_seq_len'] == 8
    assert info['tokenizer'] == read_dataset_info(docs)['tokenizer']
    assert info['source'] == {
        'path': str(docs.resolve()),
        'format': DOCUMENT_FORMAT,
        'documents': 3,
        'metadata_columns': [],
    }
    assert (
        info['stats']
        == stats
        == {
            'rows': 2,
            'tokens': 16,
            'documents_read': 3,
            'documents_packed': 3,
            'skipped': {},
            'segments': 4,
            'continued_segments': 1,
            'document_tokens': 18,
            'special_tokens': 3,
            'tokens_dropped': 5,
        }
    )


def test_stats_account_for_every_document_and_token(tmp_path: Path, tokenizer) -> None:
    docs = write_documents_mds(tmp_path / 'docs', synthetic_documents(300), tokenizer)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=64, progress=False)
    rows = read_rows(tmp_path / 'packed')
    assert stats['documents_read'] == 300
    assert stats['documents_read'] == stats['documents_packed'] + sum(stats['skipped'].values())
    assert stats['document_tokens'] + stats['special_tokens'] == stats['tokens'] + stats['tokens_dropped']
    assert stats['tokens'] == stats['rows'] * 64 == sum(int(row['segment_lengths'].sum()) for row in rows)
    assert stats['rows'] == len(rows)
    assert stats['segments'] == sum(len(row['urls']) for row in rows) == sum(len(row['metadata']) for row in rows)
    assert stats['continued_segments'] == sum(row['continued'] for row in rows)
    assert 0 <= stats['tokens_dropped'] < 64


class ZeroLengthArrayMDSWriter(MDSWriter):
    """An MDSWriter that also stores zero-length arrays, as writers other than Streaming's can.

    Streaming's own ndarray encoding refuses empty arrays, but its reader decodes them: a one-axis shape of 0.
    """

    def encode_sample(self, sample: dict[str, Any]) -> bytes:
        sizes, data = [], []
        for key, encoding in zip(self.column_names, self.column_encodings):
            value = sample[key]
            empty_array = isinstance(value, np.ndarray) and value.size == 0
            datum = bytes([1 << 2, 0]) if empty_array else mds_encode(encoding, value)
            if get_mds_encoded_size(encoding) is None:
                sizes.append(len(datum))
            data.append(datum)
        return np.array(sizes, np.uint32).tobytes() + b''.join(data)


def test_empty_documents_are_counted_skips(tmp_path: Path, tokenizer) -> None:
    documents = [{'input_ids': [], 'url': URL_C}] + abc_documents() + [{'input_ids': [], 'url': URL_C}]
    docs = tmp_path / 'docs'
    with ZeroLengthArrayMDSWriter(out=str(docs), columns={'input_ids': 'ndarray:uint32', 'url': 'str'}) as writer:
        for doc in documents:
            writer.write({'input_ids': np.asarray(doc['input_ids'], np.uint32), 'url': doc['url']})
    write_dataset_info(docs, {'format': DOCUMENT_FORMAT, 'tokenizer': tokenizer_info(tokenizer)})
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert stats['documents_read'] == 5
    assert stats['skipped'] == {'empty_document': 2}
    assert stats['documents_packed'] == 3
    assert [row['urls'] for row in read_rows(tmp_path / 'packed')] == [[URL_A, URL_B], [URL_B, URL_C]]


def test_a_length_column_that_disagrees_with_input_ids_is_a_counted_skip(tmp_path: Path, tokenizer) -> None:
    documents = abc_documents() + [{'input_ids': [1, 2], 'length': 9, 'url': URL_A}]
    docs = write_token_documents(tmp_path / 'docs', documents, tokenizer)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert stats['skipped'] == {'length_column_mismatch': 1}
    assert stats['documents_read'] == 4 and stats['documents_packed'] == 3


def test_documents_entirely_in_the_dropped_last_partial_row_are_counted_skips(tmp_path: Path, tokenizer) -> None:
    E = tokenizer.eos_token_id
    documents = [
        {'input_ids': B[:7], 'url': URL_B},
        {'input_ids': [51], 'url': URL_A},
        {'input_ids': [52, 53], 'url': URL_C},
    ]
    docs = write_token_documents(tmp_path / 'docs', documents, tokenizer)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert [row['input_ids'].tolist() for row in read_rows(tmp_path / 'packed')] == [[21, 22, 23, 24, 25, 26, 27, E]]
    assert stats['tokens_dropped'] == 5  # 51 E 52 53 E
    assert stats['documents_packed'] == 1
    assert stats['skipped'] == {'in_dropped_last_partial_row': 2}


def row_fields(row: dict[str, Any]) -> tuple:
    return (row['input_ids'].tolist(), row['segment_lengths'].tolist(), row['continued'], row['urls'], row['metadata'])


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (the parts' files included) by its path there."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob('*'))
        if path.is_file()
    }


def test_parallel_packing_writes_byte_identical_output_to_serial(tmp_path: Path, tokenizer) -> None:
    documents = [dict(doc, topic=f'topic{i % 3}') for i, doc in enumerate(synthetic_documents(600, seed=1))]
    docs = write_documents_mds(tmp_path / 'docs', documents, tokenizer, extra_columns=('topic',))
    serial = pack_documents(docs, tmp_path / 'serial', max_seq_len=48, documents_per_task=37, progress=False)
    parallel = pack_documents(
        docs, tmp_path / 'parallel', max_seq_len=48, documents_per_task=37, num_workers=2, progress=False
    )
    assert serial == parallel
    assert serial['rows'] > 100
    assert files_of(tmp_path / 'parallel') == files_of(tmp_path / 'serial')


def test_rows_do_not_depend_on_how_documents_are_split_into_tasks(tmp_path: Path, tokenizer) -> None:
    docs = write_documents_mds(tmp_path / 'docs', synthetic_documents(200, seed=2), tokenizer)
    one_per_task = pack_documents(docs, tmp_path / 'one', max_seq_len=16, documents_per_task=1, progress=False)
    all_in_one = pack_documents(docs, tmp_path / 'all', max_seq_len=16, progress=False)
    assert one_per_task == all_in_one
    # Shard boundaries follow the plan's parts; the rows themselves must not.
    assert len(json.loads((tmp_path / 'one' / 'index.json').read_text())['shards']) > 1
    assert [row_fields(row) for row in read_rows(tmp_path / 'one')] == [
        row_fields(row) for row in read_rows(tmp_path / 'all')
    ]


@pytest.mark.parametrize('compression', [None, 'zstd'])
def test_a_row_reaching_far_into_the_next_ranges_is_completed_exactly(
    tmp_path: Path, tokenizer, compression: str | None
) -> None:
    # 1000 one-token documents (2 tokens with EOS) in ranges of 300: the only 1500-token row starts in the
    # first range and reaches 450 documents into the following ones, read a few hundred at a time.
    E = tokenizer.eos_token_id
    documents = [{'input_ids': [1 + i % 300], 'url': f'https://x.example/{i}'} for i in range(1000)]
    docs = write_token_documents(tmp_path / 'docs', documents, tokenizer, compression=compression)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=1500, documents_per_task=300, progress=False)
    rows = read_rows(tmp_path / 'packed')
    assert len(rows) == stats['rows'] == 1
    assert rows[0]['input_ids'].tolist() == [token for i in range(750) for token in (1 + i % 300, E)]
    assert rows[0]['urls'] == [f'https://x.example/{i}' for i in range(750)]
    assert stats['documents_packed'] == 750 and stats['skipped'] == {'in_dropped_last_partial_row': 250}


def test_compressed_document_shards_pack_like_uncompressed_ones(tmp_path: Path, tokenizer) -> None:
    plain = write_token_documents(tmp_path / 'plain', abc_documents(), tokenizer)
    zipped = write_token_documents(tmp_path / 'zipped', abc_documents(), tokenizer, compression='zstd')
    assert not list(zipped.glob('*.mds'))  # only the compressed shard is on disk
    pack_documents(plain, tmp_path / 'from_plain', max_seq_len=8, progress=False)
    pack_documents(zipped, tmp_path / 'from_zipped', max_seq_len=8, progress=False)
    rows = read_rows(tmp_path / 'from_zipped')
    plain_rows = read_rows(tmp_path / 'from_plain')
    assert [row['input_ids'].tolist() for row in rows] == [row['input_ids'].tolist() for row in plain_rows]
    assert [row['urls'] for row in rows] == [[URL_A, URL_B], [URL_B, URL_C]]


def read_with_streaming_dataset(packed_dir: Path) -> list[dict[str, Any]]:
    """Every row through Streaming's StreamingDataset, as the training loader reads them."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    dataset = StreamingDataset(local=str(packed_dir), batch_size=1, shuffle=False)
    return [dataset[i] for i in range(len(dataset))]


def test_compressed_output_reads_back_through_streaming_dataset(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False, compression='zstd')
    shards = [path.relative_to(tmp_path / 'packed').as_posix() for path in (tmp_path / 'packed').rglob('shard.*')]
    assert shards == ['part.00000/shard.00000.mds.zstd']
    assert read_dataset_info(tmp_path / 'packed')['compression'] == 'zstd'
    E = tokenizer.eos_token_id
    assert [row['input_ids'].tolist() for row in read_with_streaming_dataset(tmp_path / 'packed')] == [
        [11, 12, 13, E, 21, 22, 23, 24],
        [25, 26, 27, 28, 29, 30, E, 41],
    ]


def test_streaming_dataset_reads_the_packed_rows(tmp_path: Path, tokenizer) -> None:
    docs = write_documents_mds(tmp_path / 'docs', synthetic_documents(100, seed=3), tokenizer)
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=32, progress=False)
    samples = read_with_streaming_dataset(tmp_path / 'packed')
    assert len(samples) == stats['rows']
    assert all(sample['input_ids'].shape == (32,) and int(sample['segment_lengths'].sum()) == 32 for sample in samples)
    assert [sample['input_ids'].tolist() for sample in samples] == [
        row['input_ids'].tolist() for row in read_rows(tmp_path / 'packed')
    ]


def test_an_output_dir_holding_a_different_dataset_is_refused_unless_overwrite(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    with pytest.raises(FileExistsError, match='differs in max_seq_len.*--overwrite'):
        pack_documents(docs, tmp_path / 'packed', max_seq_len=4, progress=False)
    assert read_dataset_info(tmp_path / 'packed')['max_seq_len'] == 8
    pack_documents(docs, tmp_path / 'packed', max_seq_len=4, progress=False, overwrite=True)
    assert read_dataset_info(tmp_path / 'packed')['max_seq_len'] == 4


def test_an_output_dir_holding_other_files_is_refused_unless_overwrite(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    (tmp_path / 'packed').mkdir()
    (tmp_path / 'packed' / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='something other than a packed dataset'):
        pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert (tmp_path / 'packed' / 'notes.txt').read_text() == 'keep me'
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False, overwrite=True)
    assert sorted(path.name for path in (tmp_path / 'packed').iterdir()) == [
        'index.json',
        DATASET_INFO_FILE,
        'part.00000',
    ]
    assert sorted(path.name for path in (tmp_path / 'packed' / 'part.00000').iterdir()) == [
        'index.json',
        'part.json',
        'shard.00000.mds',
    ]


def test_packing_again_with_the_same_settings_rebuilds_the_same_dataset(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    first = files_of(tmp_path / 'packed')
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert files_of(tmp_path / 'packed') == first


def test_an_output_dir_overlapping_the_documents_is_refused_even_with_overwrite(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    for out in (docs, docs / 'packed', tmp_path):
        with pytest.raises(ValueError, match='overlaps the documents'):
            pack_documents(docs, out, max_seq_len=8, progress=False, overwrite=True)
    assert read_dataset_info(docs)['format'] == DOCUMENT_FORMAT


def test_a_staging_dir_left_by_an_interrupted_run_is_replaced(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    (tmp_path / 'packed.packing').mkdir()
    (tmp_path / 'packed.packing' / 'shard.00000.mds').write_bytes(b'half written')
    stats = pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    assert not (tmp_path / 'packed.packing').exists()
    assert len(read_rows(tmp_path / 'packed')) == stats['rows'] == 2


def test_documents_too_few_for_one_row_are_an_error(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    with pytest.raises(ValueError, match='holds 21 tokens .* fewer than one row of max_seq_len=64'):
        pack_documents(docs, tmp_path / 'packed', max_seq_len=64, progress=False)
    assert not (tmp_path / 'packed').exists() and not (tmp_path / 'packed.packing').exists()


def test_a_dataset_without_a_url_column_is_refused(tmp_path: Path, tokenizer) -> None:
    with MDSWriter(out=str(tmp_path / 'docs'), columns={'input_ids': 'ndarray:uint32', 'length': 'int'}) as writer:
        writer.write({'input_ids': np.asarray(A, np.uint32), 'length': 3})
    with pytest.raises(ValueError, match="has no 'url' column"):
        pack_documents(tmp_path / 'docs', tmp_path / 'packed', max_seq_len=2, tokenizer=tokenizer, progress=False)


def test_a_packed_dataset_is_refused_as_documents(tmp_path: Path, tokenizer) -> None:
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    pack_documents(docs, tmp_path / 'packed', max_seq_len=8, progress=False)
    with pytest.raises(ValueError, match="holds a 'meco-packed-v1' dataset, not documents"):
        pack_documents(tmp_path / 'packed', tmp_path / 'again', max_seq_len=4, progress=False)


def load_cli() -> Any:
    spec = importlib.util.spec_from_file_location('pack_cli', REPO_ROOT / 'convert' / 'pack.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_help_states_the_bos_eos_policy_and_row_layout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_cli().main(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert '[BOS] document-tokens EOS' in text
    assert 'BOS starts one only when the tokenizer itself adds a BOS' in text
    assert 'segment_lengths (summing to --max-seq-len)' in text


def test_cli_packs_and_prints_stats_and_reports_bad_input_with_exit_code_2(
    tmp_path: Path, tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = load_cli()
    docs = write_token_documents(tmp_path / 'docs', abc_documents(), tokenizer)
    assert cli.main([str(docs), str(tmp_path / 'packed'), '--max-seq-len', '8', '--no-progress']) == 0
    assert json.loads(capsys.readouterr().out)['rows'] == 2
    assert cli.main([str(docs), str(tmp_path / 'packed'), '--max-seq-len', '4', '--no-progress']) == 2
    assert 'differs in max_seq_len' in capsys.readouterr().err
