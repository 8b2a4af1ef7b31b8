"""The mechanisms both conversion stages share: the process pool, the output-directory rule, the joint MDS index."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.corpus.storage.joint_index import write_joint_index
from meco_callbacks.corpus.storage.output import OutputTaken, existing_output, replace_output
from meco_callbacks.corpus.storage.workers import ProcessMap, WorkerDied, WorkerTraceback
from meco_callbacks.formats import write_dataset_info


def square_slowly(task: int) -> tuple[int, int]:
    """``task`` squared and the process that computed it; earlier tasks take longer, so they finish last."""
    time.sleep(0.05 * (4 - task))
    return task * task, os.getpid()


def count_to(task: int, progress) -> int:
    """Report 1 .. ``task`` as progress, return ``task``."""
    for step in range(1, task + 1):
        progress(task, step)
    return task


def fail_on_two(task: int) -> int:
    """``task``, except for 2, which raises."""
    if task == 2:
        raise KeyError(f'no square for {task}')
    return task


def die_on_one(task: int) -> int:
    """``task``, except for 1, whose process is killed."""
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def wait(task: int) -> int:
    """``task``, after half a minute."""
    time.sleep(30)
    return task


def test_results_come_in_task_order_from_worker_processes():
    with ProcessMap(square_slowly, [0, 1, 2, 3], num_workers=3) as results:
        computed = list(results)
    assert [square for square, _ in computed] == [0, 1, 4, 9]
    assert os.getpid() not in {pid for _, pid in computed}


def test_one_worker_runs_each_task_in_this_process_when_its_result_is_asked_for():
    results = ProcessMap(fail_on_two, [0, 1, 2], num_workers=1)
    assert (next(results), next(results)) == (0, 1)
    with pytest.raises(KeyError, match='no square for 2'):
        next(results)
    assert [pid for _, pid in ProcessMap(square_slowly, [3], num_workers=4)] == [os.getpid()]


@pytest.mark.parametrize('num_workers', [1, 2])
def test_progress_reaches_the_caller_while_tasks_run(num_workers):
    reported = []
    results = list(ProcessMap(count_to, [2, 3], num_workers, on_progress=lambda *values: reported.append(values)))
    assert results == [2, 3]
    assert sorted(reported) == [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]


def test_a_task_error_is_raised_as_itself_with_the_workers_traceback_and_the_task():
    with pytest.raises(KeyError) as raised:
        list(ProcessMap(fail_on_two, [0, 1, 2, 3], num_workers=2, describe=lambda task: f'checking {task}'))
    assert str(raised.value) == "'no square for 2'"
    assert isinstance(raised.value.__cause__, WorkerTraceback)
    assert 'in fail_on_two' in str(raised.value.__cause__)
    assert raised.value.__notes__[0].startswith('raised while checking 2 in worker process ')


def test_a_killed_worker_is_named_with_its_task_and_the_rest_are_stopped():
    with pytest.raises(WorkerDied) as died:
        list(ProcessMap(die_on_one, [0, 1], num_workers=2))
    assert str(died.value) == f'worker process {died.value.pid} died (signal 9) while running task #1'
    assert died.value.exitcode == -signal.SIGKILL
    assert multiprocessing.active_children() == []


def test_closing_early_stops_running_tasks_and_never_starts_pending_ones():
    results = ProcessMap(wait, list(range(10)), num_workers=2)
    assert len(multiprocessing.active_children()) == 2
    began = time.monotonic()
    results.close()
    assert time.monotonic() - began < 5
    assert multiprocessing.active_children() == []
    with pytest.raises(StopIteration):
        next(iter(ProcessMap(wait, [], num_workers=2)))


PACKED = {'format': 'meco-packed-v1', 'max_seq_len': 8, 'tokenizer': {'fingerprint': 'sha256:ab'}}
IDENTITY = {'max_seq_len': 'max_seq_len', 'tokenizer fingerprint': 'tokenizer.fingerprint'}


def test_an_absent_or_empty_output_may_be_written(tmp_path):
    assert existing_output(tmp_path / 'absent', PACKED, IDENTITY, 'packed dataset', overwrite=False) is None
    (tmp_path / 'empty').mkdir()
    assert existing_output(tmp_path / 'empty', PACKED, IDENTITY, 'packed dataset', overwrite=False) is None


def test_the_same_dataset_is_returned_whatever_else_its_info_holds(tmp_path):
    write_dataset_info(tmp_path, dict(PACKED, stats={'rows': 3}))
    assert existing_output(tmp_path, PACKED, IDENTITY, 'packed dataset', overwrite=False) == dict(
        PACKED, stats={'rows': 3}
    )


def test_a_dataset_differing_in_an_identity_field_is_refused_naming_both_values(tmp_path):
    write_dataset_info(tmp_path, dict(PACKED, max_seq_len=4))
    with pytest.raises(OutputTaken) as taken:
        existing_output(tmp_path, PACKED, IDENTITY, 'packed dataset', overwrite=False)
    assert str(taken.value) == (
        f'{tmp_path} already holds a different meco-packed-v1 dataset (it differs in max_seq_len (4 there, 8 asked)); '
        'pass --overwrite (overwrite=True) to replace it once the new one is complete, or choose another output '
        'directory'
    )
    assert isinstance(taken.value, ConversionError) and isinstance(taken.value, FileExistsError)
    assert existing_output(tmp_path, PACKED, IDENTITY, 'packed dataset', overwrite=True) is None


def test_other_files_or_another_format_are_refused_as_something_else(tmp_path):
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'a.txt').write_text('mine')
    with pytest.raises(OutputTaken, match=r'notes already holds other files, something other than a packed dataset;'):
        existing_output(tmp_path / 'notes', PACKED, IDENTITY, 'packed dataset', overwrite=False)
    write_dataset_info(tmp_path / 'notes', {'format': 'meco-documents-v1'})
    with pytest.raises(OutputTaken, match=r'something other than a packed dataset \(a meco-documents-v1 dataset\);'):
        existing_output(tmp_path / 'notes', PACKED, IDENTITY, 'packed dataset', overwrite=False)


def test_replacing_retires_the_old_output_and_a_leftover_of_a_killed_replacement(tmp_path):
    for name, content in (('out', 'old'), ('out.replaced', 'left by a killed run'), ('staging', 'new')):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'file').write_text(content)
    replace_output(tmp_path / 'out', tmp_path / 'staging')
    assert sorted(path.name for path in tmp_path.iterdir()) == ['out']
    assert (tmp_path / 'out' / 'file').read_text() == 'new'


def write_parts(directory: Path, parts: int) -> list[Path]:
    """``parts`` MDS parts under ``directory/parts``, 5 samples each (two shards a part), sample i holding i."""
    from streaming import MDSWriter

    dirs = []
    for part in range(parts):
        out = directory / 'parts' / f'part.{part:05d}'
        with MDSWriter(out=str(out), columns={'i': 'int'}, size_limit=40) as writer:
            for i in range(5 * part, 5 * part + 5):
                writer.write({'i': i})
        dirs.append(out)
    return dirs


def read_all(directory: Path) -> list[int]:
    from streaming import LocalDataset

    dataset = LocalDataset(str(directory))
    return [dataset[i]['i'] for i in range(len(dataset))]


def test_a_joint_index_lists_every_parts_shards_in_order_where_they_are(tmp_path):
    parts = write_parts(tmp_path / 'joint', 3)
    count = write_joint_index(tmp_path / 'joint', parts)
    index = json.loads((tmp_path / 'joint' / 'index.json').read_text())
    assert count == len(index['shards']) > 3
    assert index['shards'][0]['raw_data']['basename'] == 'parts/part.00000/shard.00000.mds'
    assert read_all(tmp_path / 'joint') == list(range(15))


def test_streamings_merge_index_lists_the_same_shards_in_other_bytes(tmp_path):
    from streaming.base.util import merge_index

    write_joint_index(tmp_path / 'ours' / 'parts', write_parts(tmp_path / 'ours', 2))
    theirs = write_parts(tmp_path / 'theirs', 2)
    merge_index([str(part / 'index.json') for part in theirs], str(tmp_path / 'theirs' / 'parts'))
    ours = (tmp_path / 'ours' / 'parts' / 'index.json').read_text()
    merged = (tmp_path / 'theirs' / 'parts' / 'index.json').read_text()
    assert json.loads(merged) == json.loads(ours)
    assert merged != ours
    assert ours == json.dumps(json.loads(ours), sort_keys=True)  # as MDSWriter writes an index
