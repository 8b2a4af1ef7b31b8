"""Object storage in and out of both conversion stages, and packing split into resumable parts.

A plain directory stands for object storage: Streaming's storage layer, which both stages go through, uploads to
and downloads from it with its local uploader and downloader, as it would with s3:// or gs://.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, synthetic_documents, write_documents_mds

from meco_callbacks.corpus.documents.conversion import convert_documents
from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.formats import DATASET_INFO_FILE, read_dataset_info

WINDOW = 25  # documents per window: small windows make many parts out of a tiny set


def packed_bytes(directory: Path) -> dict[str, bytes]:
    """The bytes a reader of the packed set reads: index.json and every shard it lists, by path."""
    index = json.loads((directory / 'index.json').read_text())
    names = [shard[key]['basename'] for shard in index['shards'] for key in ('raw_data', 'zip_data') if shard.get(key)]
    return {'index.json': (directory / 'index.json').read_bytes()} | {
        name: (directory / name).read_bytes() for name in names if (directory / name).is_file()
    }


@pytest.fixture(scope='module')
def documents(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A document set of 200 documents in one shard: 8 windows of 25."""
    return write_documents_mds(tmp_path_factory.mktemp('docs') / 'docs', synthetic_documents(200, seed=5), tokenizer)


@pytest.fixture(scope='module', params=['stream', 'bfd'])
def whole(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, documents: Path) -> Path:
    """The set packed locally in one run, with each strategy (stream cuts rows across windows, bfd does not)."""
    out = tmp_path_factory.mktemp('whole') / request.param
    pack_documents(documents, out, max_seq_len=32, documents_per_task=WINDOW, strategy=request.param, progress=False)
    return out


def strategy_of(packed: Path) -> str:
    return read_dataset_info(packed)['strategy']


def test_packing_a_remote_document_set_into_a_remote_packed_set_writes_the_bytes_of_local_packing(
    tmp_path: Path, documents: Path, whole: Path
) -> None:
    stats = pack_documents(
        tmp_path / 'cache',
        tmp_path / 'scratch',
        max_seq_len=32,
        documents_per_task=WINDOW,
        strategy=strategy_of(whole),
        progress=False,
        documents_remote=str(documents),
        remote=str(tmp_path / 'bucket' / 'packed'),
    )
    remote = tmp_path / 'bucket' / 'packed'
    assert packed_bytes(remote) == packed_bytes(whole)
    assert stats == read_dataset_info(whole)['stats']
    assert read_dataset_info(remote)['source']['path'] == str(documents)
    # The documents' shard was downloaded into the cache; the local scratch side is gone once uploaded.
    assert (tmp_path / 'cache' / 'shard.00000.mds').read_bytes() == (documents / 'shard.00000.mds').read_bytes()
    assert not (tmp_path / 'scratch').exists() and not (tmp_path / 'scratch.packing').exists()


def test_a_packed_set_on_the_remote_streams_like_the_local_one(tmp_path: Path, documents: Path, whole: Path) -> None:
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    remote = tmp_path / 'bucket' / 'packed'
    settings = {'max_seq_len': 32, 'documents_per_task': WINDOW, 'strategy': strategy_of(whole), 'progress': False}
    pack_documents(documents, tmp_path / 'scratch', remote=str(remote), **settings)
    clean_stale_shared_memory()
    streamed = StreamingDataset(remote=str(remote), local=str(tmp_path / 'train-cache'), batch_size=1, shuffle=False)
    clean_stale_shared_memory()
    local = StreamingDataset(local=str(whole), batch_size=1, shuffle=False)
    assert len(streamed) == len(local) == read_dataset_info(whole)['stats']['rows']
    assert all(streamed[i]['input_ids'].tolist() == local[i]['input_ids'].tolist() for i in range(len(local)))


def test_a_remote_document_set_without_an_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / 'empty-bucket').mkdir()
    with pytest.raises(FileNotFoundError, match='empty-bucket holds no index.json'):
        pack_documents(
            tmp_path / 'cache', tmp_path / 'out', max_seq_len=32, documents_remote=str(tmp_path / 'empty-bucket')
        )


def test_an_object_storage_scheme_streaming_does_not_know_is_refused(tmp_path: Path, documents: Path) -> None:
    with pytest.raises(ValueError, match=r"ftp://host/packed: object storage scheme 'ftp' is not supported.*s3://"):
        pack_documents(documents, tmp_path / 'out', max_seq_len=32, remote='ftp://host/packed', progress=False)


def test_split_packing_equals_whole_packing_byte_for_byte(tmp_path: Path, documents: Path, whole: Path) -> None:
    runs = {}
    for part in ('2/3', '0/3', '1/3'):  # any order: the run that finishes the last part joins
        runs[part] = pack_documents(
            documents,
            tmp_path / 'split',
            max_seq_len=32,
            documents_per_task=WINDOW,
            strategy=strategy_of(whole),
            progress=False,
            part=part,
        )
    assert runs['2/3'] == {'part': '2/3', 'joined': False} and runs['0/3'] == {'part': '0/3', 'joined': False}
    assert runs['1/3'] == read_dataset_info(whole)['stats']
    assert packed_bytes(tmp_path / 'split') == packed_bytes(whole)


def test_parts_finished_on_the_remote_by_another_machine_are_reused(
    tmp_path: Path, documents: Path, whole: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = tmp_path / 'bucket' / 'packed'
    settings = {'max_seq_len': 32, 'documents_per_task': WINDOW, 'strategy': strategy_of(whole), 'progress': False}
    first = pack_documents(documents, tmp_path / 'machine0', remote=str(remote), part='0/2', **settings)
    assert first == {'part': '0/2', 'joined': False}
    assert sorted(path.parent.name for path in remote.glob('*/part.json')) == [f'part.0000{k}' for k in range(4)]
    assert not (remote / 'index.json').exists() and not (remote / DATASET_INFO_FILE).exists()
    with caplog.at_level(logging.INFO, logger='meco_callbacks.corpus.packing.pack_parts'):
        pack_documents(documents, tmp_path / 'machine1', remote=str(remote), **settings)  # no part: the rest, then join
    parts = len(list(whole.glob('part.*')))
    assert f'{parts - 4} parts to pack, 4 already finished, reused; 4 of {parts} parts' in caplog.text
    assert packed_bytes(remote) == packed_bytes(whole)
    assert read_dataset_info(remote)['stats'] == read_dataset_info(whole)['stats']


def test_stage_one_with_a_remote_uploads_every_shard_and_its_index(tmp_path: Path, tokenizer) -> None:
    source = tmp_path / 'docs.jsonl'
    source.write_text(''.join(json.dumps(doc) + '\n' for doc in synthetic_documents(60, seed=6)))
    remote = tmp_path / 'bucket' / 'docs'
    convert_documents([str(source)], tmp_path / 'docs', tokenizer, progress=False, unit_bytes=1024, remote=str(remote))
    local = {
        path.relative_to(tmp_path / 'docs').as_posix(): path.read_bytes()
        for path in (tmp_path / 'docs').rglob('*')
        if path.is_file() and path.name != 'meco_conversion_plan.json'  # the local side's record for resuming
    }
    uploaded = {path.relative_to(remote).as_posix(): path.read_bytes() for path in remote.rglob('*') if path.is_file()}
    assert uploaded == local
    assert len([name for name in uploaded if name.endswith('.mds')]) > 1 and DATASET_INFO_FILE in uploaded


def test_stage_one_uploads_each_unit_when_it_is_finished_and_the_index_only_at_the_merge(
    tmp_path: Path, tokenizer
) -> None:
    source = tmp_path / 'docs.jsonl'
    source.write_text(''.join(json.dumps(doc) + '\n' for doc in synthetic_documents(60, seed=6)))
    remote = tmp_path / 'bucket' / 'docs'
    settings = {'progress': False, 'unit_bytes': 1024, 'remote': str(remote), 'num_jobs': 2}
    convert_documents([str(source)], tmp_path / 'docs', tokenizer, job_index=0, **settings)
    units = sorted(path.parent.name for path in remote.glob('unit-*/unit.json'))
    assert units and all(int(name.split('-')[1]) % 2 == 0 for name in units)  # job 0's units, already uploaded
    assert not (remote / 'index.json').exists() and not (remote / DATASET_INFO_FILE).exists()


@pytest.mark.slow
def test_a_packing_killed_midway_resumes_redoing_only_the_missing_parts(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    docs = write_documents_mds(tmp_path / 'docs', synthetic_documents(1500, seed=7), tokenizer)
    settings = {'max_seq_len': 32, 'documents_per_task': 10, 'strategy': 'bfd', 'progress': False}
    pack_documents(docs, tmp_path / 'whole', **settings)
    staging = tmp_path / 'packed.packing'
    script = (
        'from meco_callbacks.corpus.packing.packing import pack_documents\n'
        f'pack_documents({str(docs)!r}, {str(tmp_path / "packed")!r}, **{settings!r})\n'
    )
    run = subprocess.Popen([sys.executable, '-c', script], cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    while len(list(staging.glob('part.?????/part.json'))) < 3:
        assert run.poll() is None, 'the packing ended before it could be killed'
        time.sleep(0.002)
    run.send_signal(signal.SIGKILL)
    run.wait()
    markers = staging.glob('part.?????/part.json')  # not part.00042.tmp/: killed while writing
    finished = {path.parent.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in markers}
    windows = len(list((tmp_path / 'whole').glob('part.*')))
    assert 3 <= len(finished) < windows and not (tmp_path / 'packed').exists()
    with caplog.at_level(logging.INFO, logger='meco_callbacks.corpus.packing.pack_parts'):
        pack_documents(docs, tmp_path / 'packed', **settings)
    assert f'{windows - len(finished)} parts to pack, {len(finished)} already finished, reused' in caplog.text
    for name, (inode, mtime) in finished.items():
        marker = tmp_path / 'packed' / name / 'part.json'
        assert (marker.stat().st_ino, marker.stat().st_mtime_ns) == (inode, mtime)
    assert packed_bytes(tmp_path / 'packed') == packed_bytes(tmp_path / 'whole')


def test_the_pack_command_reports_an_unsupported_scheme_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meco_callbacks.cli.pack import main

    assert main(['ftp://host/docs', str(tmp_path / 'out'), '--max-seq-len', '32']) == 2
    assert "object storage scheme 'ftp' is not supported" in capsys.readouterr().err


def test_the_convert_command_asks_for_a_local_output_beside_a_remote(capsys: pytest.CaptureFixture[str]) -> None:
    from meco_callbacks.cli.documents import main

    assert main(['in.jsonl', '--output', 's3://bucket/docs', '--tokenizer', 'gpt2']) == 2
    assert '--output data/docs --remote s3://bucket/docs' in capsys.readouterr().err


def test_stage_one_jobs_on_machines_sharing_only_the_remote_merge_into_the_one_machine_dataset(
    tmp_path: Path, tokenizer
) -> None:
    from meco_callbacks.corpus.documents.document_merge import merge_document_parts

    source = tmp_path / 'docs.jsonl'
    source.write_text(''.join(json.dumps(doc) + '\n' for doc in synthetic_documents(60, seed=6)))
    convert_documents([str(source)], tmp_path / 'one' / 'docs', tokenizer, progress=False, unit_bytes=1024)
    remote = tmp_path / 'bucket' / 'docs'
    for job in (0, 1):  # each machine its own local --output
        convert_documents(
            [str(source)],
            tmp_path / f'machine{job}' / 'docs',
            tokenizer,
            progress=False,
            unit_bytes=1024,
            remote=str(remote),
            job_index=job,
            num_jobs=2,
        )
    merge_document_parts(tmp_path / 'machine1' / 'docs', remote=str(remote))
    assert (remote / 'index.json').read_bytes() == (tmp_path / 'one' / 'docs' / 'index.json').read_bytes()
    one = {path.relative_to(tmp_path / 'one' / 'docs') for path in (tmp_path / 'one' / 'docs').rglob('*.mds')}
    assert {path.relative_to(remote) for path in remote.rglob('*.mds')} == one
    assert read_dataset_info(remote)['stats'] == read_dataset_info(tmp_path / 'one' / 'docs')['stats']


@pytest.mark.parametrize('strategy', ['stream', 'bfd'])
def test_packing_from_object_storage_with_a_quarter_of_the_set_as_cache_limit_stays_under_it(
    tmp_path: Path, tokenizer, strategy: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / 'docs.jsonl'
    source.write_text(''.join(json.dumps(doc) + '\n' for doc in synthetic_documents(400, seed=8)))
    bucket = tmp_path / 'bucket' / 'docs'  # one shard per unit: many small shards
    convert_documents([str(source)], tmp_path / 'docs', tokenizer, progress=False, unit_bytes=2048, remote=str(bucket))
    shards = [path.stat().st_size for path in bucket.rglob('*.mds')]
    size = sum(path.stat().st_size for path in bucket.rglob('*') if path.is_file())
    assert len(shards) >= 12 and 2 * max(shards) < size // 4
    settings = {'max_seq_len': 64, 'strategy': strategy, 'progress': False, 'num_workers': 2}
    whole = pack_documents(tmp_path / 'docs', tmp_path / 'whole', **settings)
    with caplog.at_level(logging.INFO, logger='meco_callbacks.corpus.packing.shard_cache'):
        stats = pack_documents(
            tmp_path / 'cache', tmp_path / 'packed', documents_remote=str(bucket), cache_limit=size // 4, **settings
        )
    assert stats == whole
    assert packed_bytes(tmp_path / 'packed') == packed_bytes(tmp_path / 'whole')
    peak = int(caplog.text.split('peak ')[1].split(' bytes')[0])
    assert 0 < peak <= size // 4
    assert not list((tmp_path / 'cache').rglob('*.mds'))  # every shard evicted once read
