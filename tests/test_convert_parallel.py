"""Workers, jobs and restarts never change the output: the same bytes for any split of the work."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO_ROOT, synthetic_documents

from meco_callbacks.corpus.documents.conversion import convert_documents
from meco_callbacks.corpus.documents.document_merge import merge_document_parts
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.formats import read_dataset_info


def write_corpus(directory: Path, files: int, per_file: int) -> str:
    """``files`` JSON Lines files of synthetic documents; returns their glob."""
    directory.mkdir()
    docs = synthetic_documents(files * per_file, seed=3)
    for part in range(files):
        with open(directory / f'part-{part:02d}.jsonl', 'w') as out:
            for doc in docs[part * per_file : (part + 1) * per_file]:
                out.write(json.dumps(doc) + '\n')
    return str(directory / '*.jsonl')


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path, with its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob('*')) if path.is_file()
    }


def convert(inputs: str, out: Path, tokenizer, **kwargs):
    return convert_documents([inputs], out, tokenizer, progress=False, unit_bytes=3000, **kwargs)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp('corpus') / 'in', files=3, per_file=60)


@pytest.fixture(scope='module')
def serial(corpus, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('serial') / 'out'
    convert(corpus, out, tokenizer)
    return out


def test_two_workers_write_the_same_bytes_as_one(corpus, serial, tokenizer, tmp_path):
    convert(corpus, tmp_path / 'out', tokenizer, num_workers=2)
    assert tree(tmp_path / 'out') == tree(serial)
    assert read_dataset_info(serial)['conversion']['units'] > 10


def test_auto_and_hf_backends_write_identical_shards_with_two_workers(corpus, serial, tokenizer, tmp_path):
    convert(corpus, tmp_path / 'hf', tokenizer, num_workers=2, tokenizer_backend='hf')
    shards = {name: data for name, data in tree(tmp_path / 'hf').items() if name.endswith('.mds')}
    assert read_dataset_info(serial)['tokenizer_backend'] == 'tiktoken'
    assert read_dataset_info(tmp_path / 'hf')['tokenizer_backend'] == 'hf'
    assert shards == {name: data for name, data in tree(serial).items() if name.endswith('.mds')}
    assert len(shards) == read_dataset_info(serial)['conversion']['units']


def test_job_parts_merged_equal_a_single_run(corpus, serial, tokenizer, tmp_path):
    for job in (1, 0):
        report = convert(corpus, tmp_path / 'out', tokenizer, job_index=job, num_jobs=2)
        assert report.info is None
    assert not (tmp_path / 'out').exists()
    merge_document_parts(tmp_path / 'out')
    assert tree(tmp_path / 'out') == tree(serial)


def test_merge_refuses_while_a_part_is_missing(corpus, tokenizer, tmp_path):
    convert(corpus, tmp_path / 'out', tokenizer, job_index=0, num_jobs=2)
    with pytest.raises(ConversionError, match=r'units are not converted yet \(e\.g\. \[1, 3, 5, 7, 9\]\)'):
        merge_document_parts(tmp_path / 'out')


def test_a_run_after_a_partial_one_converts_only_the_rest(corpus, serial, tokenizer, tmp_path):
    convert(corpus, tmp_path / 'out', tokenizer, job_index=0, num_jobs=2)
    report = convert(corpus, tmp_path / 'out', tokenizer)
    units = read_dataset_info(serial)['conversion']['units']
    assert report.units_converted == units // 2
    assert tree(tmp_path / 'out') == tree(serial)


def test_a_resumed_run_reports_its_own_work_over_its_whole_wall_time_and_what_it_reused(
    corpus, serial, tokenizer, tmp_path, caplog
):
    # Issue 20 item 6: the figures of a resumed run count only the units it converted, from the run's start.
    units = read_dataset_info(serial)['conversion']['units']
    convert(corpus, tmp_path / 'out', tokenizer, job_index=0, num_jobs=2)
    started = time.perf_counter() - 100  # as if starting the command (imports, loading) had taken 100 s
    with caplog.at_level(logging.INFO, logger='meco_callbacks.corpus.documents.conversion'):
        report = convert(corpus, tmp_path / 'out', tokenizer, started=started)
    per_unit = [json.loads(path.read_text()) for path in sorted((tmp_path / 'out').glob('unit-*/unit.json'))]
    mine, earlier = per_unit[1::2], per_unit[0::2]
    converted = (sum(u['documents_written'] for u in mine), sum(u['tokens_written'] for u in mine))
    reused = (sum(u['documents_written'] for u in earlier), sum(u['tokens_written'] for u in earlier))
    assert (report.units_converted, report.units_reused) == (units // 2, units - units // 2)
    assert (report.converted.documents_written, report.converted.tokens_written) == converted
    assert (report.reused.documents_written, report.reused.tokens_written) == reused
    assert converted[1] + reused[1] == report.info['stats']['tokens_written']
    assert report.wall_seconds >= 100
    assert report.tokens_per_second == converted[1] / report.wall_seconds
    assert (
        f'This run converted {units // 2} units ({converted[0]} documents, {converted[1]} tokens) in '
        f'{report.wall_seconds:.1f}s wall from its start' in caplog.text
    )
    assert f': {report.tokens_per_second:.0f} tokens/s' in caplog.text
    assert f'Reused {units - units // 2} units converted earlier ({reused[0]} documents, {reused[1]} tokens).' in (
        caplog.text
    )

    again = convert(corpus, tmp_path / 'out', tokenizer)
    assert (again.units_converted, again.units_reused, again.converted.tokens_written) == (0, units, 0)
    assert again.reused.tokens_written == report.info['stats']['tokens_written']


def test_a_different_conversion_in_progress_is_refused(corpus, tokenizer, tmp_path):
    convert(corpus, tmp_path / 'out', tokenizer, job_index=0, num_jobs=2)
    with pytest.raises(ConversionError, match=r'out.partial holds a different conversion in progress'):
        convert(corpus, tmp_path / 'out', tokenizer, tokenizer_backend='hf', num_jobs=1)


def _cli(inputs: str, out: Path, tokenizer_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / 'convert' / 'documents.py'),
        inputs,
        '--output',
        str(out),
        '--tokenizer',
        str(tokenizer_dir),
        '--num-workers',
        '2',
        '--unit-mb',
        '0.002',
        '--no-progress',
    ]


@pytest.mark.slow
def test_rerun_after_a_worker_is_killed_gives_the_uninterrupted_output(tokenizer_dir, tmp_path):
    inputs = write_corpus(tmp_path / 'in', files=4, per_file=150)
    partial = tmp_path / 'out.partial'
    run = subprocess.Popen(
        _cli(inputs, tmp_path / 'out', tokenizer_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while len(list(partial.glob('unit-?????'))) < 3:  # let a few units finish, then kill a worker mid-run
        assert run.poll() is None, run.communicate()
        time.sleep(0.01)
    parent = psutil.Process(run.pid)
    worker = next(child for child in parent.children() if child.cmdline() == parent.cmdline())
    os.kill(worker.pid, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 2
    assert f'worker process {worker.pid} died (signal 9)' in stderr
    assert 'run the same command again to resume' in stderr
    assert not (tmp_path / 'out').exists()
    done_before = len(list(partial.glob('unit-?????')))

    # The same arguments as the command line's --unit-mb 0.002 (2097 bytes), run again here.
    rerun = convert_documents([inputs], tmp_path / 'out', str(tokenizer_dir), progress=False, unit_bytes=2097)
    convert_documents([inputs], tmp_path / 'reference', str(tokenizer_dir), progress=False, unit_bytes=2097)
    assert rerun.units_converted == rerun.info['conversion']['units'] - done_before
    assert tree(tmp_path / 'out') == tree(tmp_path / 'reference')


def test_cli_help_explains_inputs_and_backends():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'convert' / 'documents.py'), '--help'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert '--tokenizer-backend {auto,hf,tiktoken}' in result.stdout
    assert 'MeCo release format' in result.stdout
