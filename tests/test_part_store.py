"""The one part store under every stage: a part killed at any step, retried tasks, racing jobs, one listing.

A plain directory stands for object storage (Streaming's local uploader and downloader), as in
test_remote_packing. A part is "killed" by raising at one of the store's steps (``storage.parts.reached``): what
is left on disk and on the bucket is what a process killed right there leaves.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, synthetic_documents, write_documents_mds

from meco_callbacks.corpus.documents.conversion import convert_documents
from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.corpus.storage import parts
from meco_callbacks.formats import DATASET_INFO_FILE

SETTINGS = {'max_seq_len': 32, 'documents_per_task': 25, 'strategy': 'bfd', 'progress': False}
STEPS = [
    'shards written',  # the attempt holds its shards, not its marker
    'marker written',  # complete, not renamed
    'renamed',  # finished here, nothing uploaded
    'uploaded index.json',  # during publishing: some files up, not the marker
]


class Killed(BaseException):
    """Stands for the signal that kills a process (nothing catches it on the way out)."""


def kill_at(monkeypatch: pytest.MonkeyPatch, step: str, occurrence: int = 2) -> None:
    """Make the ``occurrence``-th part to reach ``step`` die there."""
    seen = []

    def reached(at: str) -> None:
        if at == step:
            seen.append(at)
            if len(seen) == occurrence:
                raise Killed(step)

    monkeypatch.setattr(parts, 'reached', reached)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its path: what a reader of the directory or bucket can see."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


@pytest.fixture(scope='module')
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('source') / 'docs.jsonl'
    path.write_text(''.join(json.dumps(doc) + '\n' for doc in synthetic_documents(60, seed=6)))
    return path


@pytest.fixture(scope='module')
def converted(tmp_path_factory: pytest.TempPathFactory, source: Path, tokenizer) -> Path:
    """An undisturbed stage-1 run with a bucket: ``<root>/docs`` and ``<root>/bucket``."""
    root = tmp_path_factory.mktemp('undisturbed')
    convert_documents(
        [str(source)], root / 'docs', tokenizer, progress=False, unit_bytes=1024, remote=str(root / 'bucket')
    )
    return root


@pytest.mark.parametrize('step', [*STEPS[:3], 'uploaded shard.00000.mds', 'uploaded unit.json'])
def test_a_stage_one_unit_killed_at_any_step_is_redone_byte_for_byte(
    tmp_path: Path, source: Path, tokenizer, converted: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    settings = {'progress': False, 'unit_bytes': 1024, 'remote': str(tmp_path / 'bucket')}
    kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        convert_documents([str(source)], tmp_path / 'docs', tokenizer, **settings)
    monkeypatch.undo()
    convert_documents([str(source)], tmp_path / 'docs', tokenizer, **settings)
    assert tree(tmp_path / 'docs') == tree(converted / 'docs')
    assert tree(tmp_path / 'bucket') == tree(converted / 'bucket')


@pytest.fixture(scope='module')
def documents(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """200 documents in one shard: 8 windows of 25, so 8 parts."""
    return write_documents_mds(tmp_path_factory.mktemp('docs') / 'docs', synthetic_documents(200, seed=5), tokenizer)


@pytest.fixture(scope='module')
def packed(tmp_path_factory: pytest.TempPathFactory, documents: Path) -> Path:
    """An undisturbed packing into a bucket."""
    bucket = tmp_path_factory.mktemp('packed') / 'bucket'
    pack_documents(documents, bucket.with_name('scratch'), remote=str(bucket), **SETTINGS)
    return bucket


@pytest.mark.parametrize('step', [*STEPS, 'uploaded part.json'])
def test_a_stage_two_part_killed_at_any_step_is_redone_byte_for_byte(
    tmp_path: Path, documents: Path, packed: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    bucket = tmp_path / 'bucket'
    kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        pack_documents(documents, tmp_path / 'scratch', remote=str(bucket), **SETTINGS)
    monkeypatch.undo()
    pack_documents(documents, tmp_path / 'scratch', remote=str(bucket), **SETTINGS)
    assert tree(bucket) == tree(packed)


def test_finished_parts_on_object_storage_are_found_with_one_listing(
    tmp_path: Path, documents: Path, packed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = tmp_path / 'bucket'
    pack_documents(documents, tmp_path / 'machine0', remote=str(bucket), part='0/1', **{**SETTINGS, 'progress': False})
    (bucket / 'index.json').unlink()  # as if the joining run had died: every part is on the bucket, no index
    from meco_callbacks.corpus.storage import remote

    listings, downloads = [], []
    real_list, real_fetch = remote.Remote.list_files, remote.Remote.fetch
    monkeypatch.setattr(remote.Remote, 'list_files', lambda self: listings.append(1) or real_list(self))
    monkeypatch.setattr(remote.Remote, 'fetch', lambda self, name: downloads.append(name) or real_fetch(self, name))
    pack_documents(documents, tmp_path / 'machine1', remote=str(bucket), **SETTINGS)  # another machine joins
    assert len(listings) == 1
    assert sorted(name for name in downloads if name != DATASET_INFO_FILE) == sorted(['index.json', 'part.json'] * 8)
    assert tree(bucket) == tree(packed)


def test_two_part_jobs_finishing_at_once_join_what_one_job_joins(tmp_path: Path, documents: Path) -> None:
    """Job B finds every part finished; job A joins and renames the set into place; then B joins too."""
    import meco_callbacks.corpus.packing.packing as packing

    whole = tmp_path / 'whole'
    pack_documents(documents, whole, **SETTINGS)
    out = tmp_path / 'shared'
    assert pack_documents(documents, out, part='0/2', **SETTINGS) == {'part': '0/2', 'joined': False}
    claim = packing.claim_join

    def a_finishes_first(staging: Path) -> Path | None:
        packing.claim_join = claim  # job A (part 0/2 again, all parts finished) runs its whole join now
        assert pack_documents(documents, out, part='0/2', **SETTINGS)['rows'] > 0
        return claim(staging)

    packing.claim_join = a_finishes_first
    try:
        assert pack_documents(documents, out, part='1/2', **SETTINGS) == {'part': '1/2', 'joined': False}
    finally:
        packing.claim_join = claim
    assert tree(out) == tree(whole)
    assert sorted(path.name for path in tmp_path.iterdir()) == ['shared', 'whole']


def _pack_part(documents: Path, out: Path, part: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    pack_documents(documents, out, part=part, **SETTINGS)


def test_two_part_jobs_running_at_once_on_one_directory_give_one_job_s_result(tmp_path: Path, documents: Path) -> None:
    whole = tmp_path / 'whole'
    pack_documents(documents, whole, **SETTINGS)
    context = multiprocessing.get_context('fork')
    start = context.Barrier(2)
    jobs = [context.Process(target=_pack_part, args=(documents, tmp_path / 'shared', f'{i}/2', start)) for i in (0, 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    if not (tmp_path / 'shared').exists():  # each finished before the other: the last part's run did not see it
        pack_documents(documents, tmp_path / 'shared', **SETTINGS)
    assert tree(tmp_path / 'shared') == tree(whole)


SPARK_RETRY = """
import sys
from pathlib import Path

import numpy

from meco_callbacks.corpus.documents import spark_conversion
from meco_callbacks.corpus.documents.spark_conversion import convert_documents_on_spark, spark_session

inputs, root, tokenizer = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
spark = spark_session('local[2,2]')  # a failed task is retried once, as on a cluster
convert_documents_on_spark([inputs], root / 'undisturbed', tokenizer, spark=spark, partitions=4)
convert = spark_conversion.convert_units


def killed_once(task, units):
    from pyspark import TaskContext
    from streaming import MDSWriter

    units = list(units)
    context = TaskContext.get()
    if 1 in [unit.index for unit in units] and context.attemptNumber() == 0:  # its shard, not its marker
        attempt = Path(task.staging) / f'part-00001.attempt-{context.taskAttemptId()}.tmp'
        with MDSWriter(out=str(attempt), columns=task.columns) as writer:
            for _ in range(3):
                writer.write({'input_ids': numpy.arange(3, dtype='uint32'), 'length': 3, 'url': 'x'})
        raise RuntimeError('killed after its shard, before its marker')
    yield from convert(task, iter(units))


spark_conversion.convert_units = killed_once
for run in ('first', 'rerun'):
    try:
        convert_documents_on_spark([inputs], root / 'retried', tokenizer, spark=spark, partitions=4, remote=str(root / 'bucket'))
        print(run, 'published')
        break
    except Exception as error:
        print(run, 'failed:', type(error).__name__, error)
        spark_conversion.convert_units = convert
"""


@pytest.mark.slow  # starts a JVM (10-15 s)
def test_a_retried_spark_task_s_leftover_attempt_neither_blocks_publishing_nor_duplicates(
    tmp_path: Path, tokenizer_dir: Path, tokenizer
) -> None:
    docs = synthetic_documents(400, seed=3)
    for i in range(4):
        (tmp_path / f'in-{i}.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs[i::4]))
    run = subprocess.run(
        [sys.executable, '-c', SPARK_RETRY, str(tmp_path / 'in-*.jsonl'), str(tmp_path), str(tokenizer_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a JVM and three conversions: minutes on a loaded machine
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'first published' in run.stdout, run.stdout
    assert tree(tmp_path / 'bucket') == tree(tmp_path / 'undisturbed') == tree(tmp_path / 'retried')
    from streaming import LocalDataset

    dataset = LocalDataset(str(tmp_path / 'bucket'))
    urls = sorted(dataset[i]['url'] for i in range(len(dataset)))
    assert urls == sorted(d['url'] for d in docs)  # each document exactly once


@pytest.fixture(scope='module')
def web_documents(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """3,000 documents of web-like lengths (log-normal around 550 tokens, as bench/pack.py), in 1 MiB shards."""
    import numpy as np
    from streaming import MDSWriter

    from meco_callbacks.formats import DOCUMENT_COLUMNS, DOCUMENT_FORMAT, write_dataset_info
    from meco_callbacks.tokenizer.fingerprint import tokenizer_info

    out = tmp_path_factory.mktemp('web') / 'docs'
    rng = np.random.default_rng(4)
    lengths = np.maximum(rng.lognormal(np.log(550), 1.25, 3000), 8).astype(np.int64)
    with MDSWriter(out=str(out), columns=DOCUMENT_COLUMNS, size_limit=1 << 20) as writer:
        for i, length in enumerate(lengths.tolist()):
            ids = rng.integers(0, 300, length, dtype=np.uint32)  # within the test tokenizer's vocabulary
            writer.write({'input_ids': ids, 'length': length, 'url': f'https://site{i % 37}.example/{i}'})
    write_dataset_info(out, {'format': DOCUMENT_FORMAT, 'tokenizer': tokenizer_info(tokenizer)})
    return out


@pytest.mark.parametrize('row', [2048, 8192])
def test_a_held_out_split_of_web_like_documents_pads_under_two_percent(
    tmp_path: Path, web_documents: Path, row: int
) -> None:
    from streaming import LocalDataset

    from meco_callbacks.formats import read_dataset_info

    settings = {'documents_per_task': 100, 'strategy': 'bfd', 'progress': False, 'holdout': 0.2}
    stats = pack_documents(web_documents, tmp_path / 'split', row, **settings)
    held = stats['heldout']
    assert held['padding_tokens'] / held['tokens'] < 0.02
    sides = {}
    for name in ('train', 'heldout'):
        dataset = LocalDataset(str(tmp_path / 'split' / name))
        sides[name] = [
            url
            for i in range(len(dataset))
            for url, cont in [(dataset[i]['urls'], dataset[i]['continued'])]
            for url in url[cont:]
        ]
    urls = [f'https://site{i % 37}.example/{i}' for i in range(3000)]
    assert sorted(sides['train'] + sides['heldout']) == sorted(urls)  # each document in exactly one set, once
    assert 0.15 < len(sides['heldout']) / len(urls) < 0.25
    assert held['documents_in_other_split'] == len(sides['train']) and held['documents_read'] == 3000
    shards = json.loads((tmp_path / 'split' / 'heldout' / 'index.json').read_text())['shards']
    assert len(shards) == 1  # not one per training window (30 windows)
    assert read_dataset_info(tmp_path / 'split' / 'heldout')['split']['name'] == 'heldout'
    assert sorted(path.name for path in (tmp_path / 'split').iterdir()) == ['heldout', 'train']


def test_a_held_out_split_packed_by_two_machines_into_object_storage_equals_one_local_run(
    tmp_path: Path, documents: Path
) -> None:
    settings = {**SETTINGS, 'holdout': 0.2}
    local = pack_documents(documents, tmp_path / 'local', **settings)
    bucket = tmp_path / 'bucket'
    first = pack_documents(documents, tmp_path / 'machine0', remote=str(bucket), part='0/2', **settings)
    assert first['train'] == {'part': '0/2', 'joined': False}
    assert pack_documents(documents, tmp_path / 'machine1', remote=str(bucket), part='1/2', **settings) == local
    for name in ('train', 'heldout'):
        assert packed_rows(bucket / name) == packed_rows(tmp_path / 'local' / name)


def packed_rows(directory: Path) -> bytes:
    """The index and shards a reader of the set reads."""
    index = json.loads((directory / 'index.json').read_text())
    names = [shard['raw_data']['basename'] for shard in index['shards']]
    return (directory / 'index.json').read_bytes() + b''.join((directory / name).read_bytes() for name in names)
