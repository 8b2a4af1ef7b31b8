"""Stage 1 on Spark (local[2]): the local converter's rows, skip reasons and counts, surviving a killed driver."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import REPO_ROOT, synthetic_documents

from meco_callbacks.corpus.documents.conversion import convert_documents
from meco_callbacks.corpus.documents.document_checks import DocumentPolicy
from meco_callbacks.corpus.documents.sources import FieldMapping
from meco_callbacks.formats import read_dataset_info
from meco_callbacks.tokenizer.fingerprint import tokenizer_fingerprint

FIELDS = FieldMapping('text', 'url', ('meta.source',))
POLICY = DocumentPolicy(max_document_chars=3000)
COUNTED = (
    'documents_read',
    'documents_written',
    'tokens_written',
    'skipped',
    'urls_spaces_encoded',
    'metadata_missing',
)


def hostile_lines() -> list[bytes]:
    """JSON Lines records of every kind the checks must count, between good ones."""
    good = [json.dumps(dict(doc, meta={'source': 'web'})).encode() for doc in synthetic_documents(30, seed=1)]
    bad = [
        b'{"text": "cut off',  # malformed_json
        b'{"text": "caf\xe9", "url": "https://a.example/x"}',  # invalid_utf8
        b'',  # blank_line
        b'   \r',  # blank_line (a CRLF blank line)
        b'[1, 2]',  # not_a_json_object
        b'{"text": 42, "url": "https://a.example/n"}',  # text_not_string
        b'{"text": "no url here"}',  # missing_url
        b'{"text": "null url", "url": null}',  # missing_url
        b'{"text": "", "url": "https://a.example/e"}',  # empty_text
        b'{"text": "a line\\nbreak", "url": "https://a.example/nl\\nx"}',  # url_has_whitespace
        b'{"text": "spaced", "url": "https://a.example/a b"}',  # kept, %20
        json.dumps({'text': 'x ' * 2000, 'url': 'https://a.example/huge'}).encode(),  # document_too_long
        b'{"text": "eos <|endoftext|> stays text", "url": "https://a.example/eos"}\r',  # kept (CRLF)
        b'{"text": "no meta", "url": "https://a.example/m"}',  # kept, metadata_missing
    ]
    return good[:10] + bad + good[10:]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Plain, gzip and zstd JSON Lines (one with a byte-order mark) and Parquet, with hostile records in each."""
    root = tmp_path_factory.mktemp('spark-corpus')
    lines = hostile_lines()
    (root / 'a.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
    (root / 'b.jsonl.gz').write_bytes(gzip.compress(b'\n'.join(lines[::2]) + b'\n'))
    (root / 'c.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(b'\xef\xbb\xbf' + b'\n'.join(lines[1::2])))
    (root / 'd.jsonl').write_bytes(b'')  # an empty input
    docs = synthetic_documents(12, seed=2)
    table = pa.table(
        {
            'text': [d['text'] for d in docs] + [None, '', 'kept too'],
            'url': [d['url'] for d in docs] + ['https://p.example/1', 'https://p.example/2', None],
            'meta': [{'source': 'parquet'}] * 15,
        }
    )
    pq.write_table(table, root / 'e.parquet', row_group_size=5)
    return [str(root / '*.jsonl'), str(root / '*.jsonl.gz'), str(root / 'c.jsonl.zst'), str(root / 'e.parquet')]


@pytest.fixture(scope='module')
def spark():
    """One local[2] session for the module: no UI, no network."""
    from meco_callbacks.corpus.documents.spark_conversion import spark_session

    session = spark_session('local[2]')
    yield session
    session.stop()


@pytest.fixture(scope='module')
def local_dataset(corpus, tokenizer, tmp_path_factory) -> Path:
    """The local converter's dataset of the corpus."""
    out = tmp_path_factory.mktemp('local') / 'docs'
    convert_documents(corpus, out, tokenizer, fields=FIELDS, policy=POLICY, progress=False)
    return out


@pytest.fixture(scope='module')
def spark_dataset(corpus, tokenizer, spark, tmp_path_factory) -> Path:
    """The Spark converter's dataset of the same corpus, in four or more partitions."""
    from meco_callbacks.corpus.documents.spark_conversion import convert_documents_on_spark

    out = tmp_path_factory.mktemp('spark') / 'docs'
    convert_documents_on_spark(corpus, out, tokenizer, spark=spark, fields=FIELDS, policy=POLICY, partitions=4)
    return out


@pytest.fixture(scope='module')
def spark_read_dataset(corpus, tokenizer, spark, tmp_path_factory) -> Path:
    """The same corpus read by Spark and handed to the tasks as rows, as inputs on s3a:// or HDFS are."""
    from meco_callbacks.corpus.documents import spark_conversion

    out = tmp_path_factory.mktemp('spark-read') / 'docs'
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spark_conversion, 'task_readable', lambda spark, pattern: None)
        spark_conversion.convert_documents_on_spark(
            corpus, out, tokenizer, spark=spark, fields=FIELDS, policy=POLICY, partitions=4
        )
    return out


def rows(directory: Path) -> list[tuple]:
    """Every row as (url, input_ids, source), read with Streaming's own reader."""
    from streaming import LocalDataset

    dataset = LocalDataset(str(directory))
    return [
        (r['url'], tuple(r['input_ids'].tolist()), r['source']) for r in map(dataset.__getitem__, range(len(dataset)))
    ]


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_spark_writes_the_local_converters_rows(local_dataset, spark_dataset):
    local = rows(local_dataset)
    assert len(local) == 2 * (30 + 3) + 12  # a.jsonl, then b and c between them: 30 good and 3 kept oddities each
    assert rows(spark_dataset) == local  # each task converts one of the local converter's units: its order too


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_inputs_spark_reads_give_the_same_rows_and_counts(local_dataset, spark_read_dataset):
    assert sorted(rows(spark_read_dataset)) == sorted(rows(local_dataset))
    local, spark = read_dataset_info(local_dataset)['stats'], read_dataset_info(spark_read_dataset)['stats']
    assert {key: spark[key] for key in COUNTED} == {key: local[key] for key in COUNTED}
    assert [Path(path).name for path in spark['inputs_empty']] == ['d.jsonl']


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_spark_counts_every_skip_under_the_local_reasons(local_dataset, spark_dataset):
    local, spark = read_dataset_info(local_dataset)['stats'], read_dataset_info(spark_dataset)['stats']
    assert {key: spark[key] for key in COUNTED} == {key: local[key] for key in COUNTED}
    assert spark['documents_read'] == spark['documents_written'] + sum(spark['skipped'].values())
    assert spark['skipped'] == {
        'blank_line': 4,
        'document_too_long': 2,
        'empty_text': 3,
        'invalid_utf8': 2,
        'malformed_json': 2,
        'missing_text': 1,
        'missing_url': 5,
        'not_a_json_object': 2,
        'text_not_string': 2,
        'url_has_whitespace': 2,
    }
    assert [Path(path).name for path in spark['inputs_empty']] == ['d.jsonl']
    assert spark['inputs_read'] == 5


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_spark_records_the_tokenizer_fingerprint_and_backend(spark_dataset, tokenizer):
    info = read_dataset_info(spark_dataset)
    assert info['tokenizer']['fingerprint'] == tokenizer_fingerprint(tokenizer)
    assert info['tokenizer_backend'] == 'tiktoken'
    assert info['conversion']['engine'] == 'spark'
    assert info['conversion']['partitions'] >= 4


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_a_second_run_finds_the_dataset_done(corpus, tokenizer, spark, spark_dataset):
    from meco_callbacks.corpus.documents.spark_conversion import convert_documents_on_spark

    report = convert_documents_on_spark(corpus, spark_dataset, tokenizer, spark=spark, fields=FIELDS, policy=POLICY)
    assert report.reused


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_a_finished_dataset_is_uploaded_to_object_storage_byte_for_byte(
    corpus, tokenizer, spark, spark_dataset, tmp_path
):
    from meco_callbacks.corpus.documents.spark_conversion import convert_documents_on_spark

    bucket = tmp_path / 'bucket'  # a directory stands for the bucket, through Streaming's own uploader
    convert_documents_on_spark(
        corpus, spark_dataset, tokenizer, spark=spark, fields=FIELDS, policy=POLICY, remote=str(bucket)
    )

    def files(root: Path) -> dict[str, bytes]:
        return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}

    assert files(bucket) == files(spark_dataset)
    assert any(name.startswith('part-') for name in files(bucket))


@pytest.mark.slow  # starts a JVM (10-15 s, once per module)
def test_a_run_killed_after_its_first_parts_is_redone_whole(tmp_path, tokenizer_dir, tokenizer, spark):
    from meco_callbacks.corpus.documents.spark_conversion import convert_documents_on_spark

    docs = synthetic_documents(8000, seed=3)
    for i in range(32):  # a unit and a part per file: the job is still running when its first part appears
        (tmp_path / f'in-{i:02d}.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs[i::32]))
    inputs, out = [str(tmp_path / 'in-*.jsonl')], tmp_path / 'docs'
    command = [sys.executable, str(REPO_ROOT / 'convert/spark_documents.py'), *inputs, '--output', str(out)]
    command += ['--tokenizer', str(tokenizer_dir), '--master', 'local[1]', '--partitions', '16']
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = tmp_path / 'docs.spark-partial'
    deadline = time.monotonic() + 240
    while not list(staging.glob('part-?????')) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()[-3000:]
    assert list(staging.glob('part-?????')) and not out.exists()  # killed midway: some parts written, no dataset

    convert_documents_on_spark(inputs, out, tokenizer, spark=spark, partitions=16)
    written = rows_without_metadata(out)
    assert sorted(written) == sorted((d['url'], tuple(tokenizer(d['text'])['input_ids'])) for d in docs)
    assert not staging.exists()


def rows_without_metadata(directory: Path) -> list[tuple]:
    from streaming import LocalDataset

    dataset = LocalDataset(str(directory))
    return [(r['url'], tuple(r['input_ids'].tolist())) for r in map(dataset.__getitem__, range(len(dataset)))]


def test_the_command_names_the_missing_java_and_how_to_install_it(tmp_path, monkeypatch, capsys):
    from meco_callbacks.cli.spark_documents import main

    monkeypatch.delenv('JAVA_HOME', raising=False)
    monkeypatch.setenv('PATH', str(tmp_path))  # nothing on it, java least of all
    assert main(['x.jsonl', '--output', str(tmp_path / 'out'), '--tokenizer', 'gpt2']) == 2
    error = capsys.readouterr().err
    assert 'Java runtime' in error and 'apt-get install openjdk-17-jre-headless' in error
    assert not (tmp_path / 'out').exists()
