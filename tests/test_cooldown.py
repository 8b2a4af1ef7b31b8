"""The cooldown callback: an exact switch to plain documents, identical batches across stop and resume."""

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from composer.core import Callback, State, Time
from composer.loggers import Logger, LoggerDestination
from conftest import COMPACT_TOKENS, REPO_ROOT, TINY_MODEL, train_tiny
from recorder import read_records

from meco_callbacks.training.cooldown import cooldown_boundary

RUN = ['max_duration=16ba', 'variables.cooldown=0.25', 'save_interval=1ba']  # boundary: batch 12
TOTALS = ('meco/metadata_tokens_total', 'meco/dropped_tokens_total')


class TotalsLogger(LoggerDestination):
    """A test logger destination: one JSON line ``[batch, metadata total, dropped total]`` per logged total."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if TOTALS[0] in metrics:
            with self.path.open('a') as f:
                f.write(json.dumps([step, *(metrics[name] for name in TOTALS)]) + '\n')


def train_logging_totals(run_dir: Path, *args, **kwargs) -> list[dict]:
    """``train_tiny`` with the ``meco/*_total`` metrics the run logs written to ``run_dir/totals.jsonl``."""
    from llmfoundry import registry

    if 'totals_logger' not in registry.loggers:
        registry.loggers.register('totals_logger', func=TotalsLogger)
    return train_tiny(run_dir, *args, f'loggers.totals_logger.path={run_dir}/totals.jsonl', **kwargs)


def logged_totals(run_dir: Path) -> dict[int, list[int]]:
    """Batch -> [metadata tokens total, dropped tokens total] as the run logged them."""
    return {line[0]: line[1:] for line in map(json.loads, (run_dir / 'totals.jsonl').read_text().splitlines())}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tiny_packed, compact_tokenizer_dir):
    """One uninterrupted run per number of dataloader workers, checkpointing every batch."""
    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path_factory.mktemp(f'full{workers}')
        runs[workers] = (
            run_dir,
            train_logging_totals(
                run_dir, tiny_packed, compact_tokenizer_dir, *RUN, f'train_loader.num_workers={workers}'
            ),
        )
    return runs


@pytest.mark.slow
def test_batches_before_the_boundary_carry_prefixes_and_none_after(uninterrupted):
    records = uninterrupted[0][1]
    meta_ids = range(1, COMPACT_TOKENS + 1)  # the tiny recipe's prefix: its site's reserved token (kind compact)
    assert [r['batch'] for r in records] == list(range(16))
    assert [r['prefixed'] for r in records] == [True] * 12 + [False] * 4
    assert all(r['metadata_tokens'] > 0 for r in records[:12])
    assert all(r['metadata_tokens'] == 0 for r in records[12:])
    assert all(r['first_row'][0] in meta_ids for r in records[:12])
    assert not any(token in meta_ids for r in records[12:] for token in r['first_row'])


@pytest.mark.slow
def test_the_run_is_the_same_with_two_dataloader_workers(uninterrupted):
    assert [r['hash'] for r in uninterrupted[0][1]] == [r['hash'] for r in uninterrupted[2][1]]


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('stop', [8, 12, 14], ids=['before', 'at', 'after'])
def test_resuming_reproduces_the_uninterrupted_batches_and_losses(
    uninterrupted, tiny_packed, compact_tokenizer_dir, tmp_path, workers, stop
):
    run_dir, full = uninterrupted[workers]
    resumed = train_tiny(
        tmp_path,
        tiny_packed,
        compact_tokenizer_dir,
        *RUN,
        f'train_loader.num_workers={workers}',
        f'load_path={run_dir}/checkpoints/ep0-ba{stop}-rank0.pt',
    )
    assert [r['batch'] for r in resumed] == list(range(stop, 16))
    assert [(r['hash'], r['loss']) for r in resumed] == [(r['hash'], r['loss']) for r in full[stop:]]


@pytest.mark.slow
def test_a_resumed_run_logs_the_token_totals_of_the_uninterrupted_run(
    uninterrupted, tiny_packed, compact_tokenizer_dir, tmp_path
):
    run_dir, _ = uninterrupted[0]
    train_logging_totals(
        tmp_path, tiny_packed, compact_tokenizer_dir, *RUN, f'load_path={run_dir}/checkpoints/ep0-ba8-rank0.pt'
    )
    full, resumed = logged_totals(run_dir), logged_totals(tmp_path)

    assert sorted(resumed) == list(range(8, 16))
    assert resumed == {batch: full[batch] for batch in range(8, 16)}
    assert full[11][0] > full[7][0] > 0 and full[15][0] == full[11][0]  # totals grow until the boundary, then stay


@pytest.mark.slow
def test_a_checkpoint_in_cooldown_refuses_a_later_boundary(uninterrupted, tiny_packed, compact_tokenizer_dir, tmp_path):
    run_dir, _ = uninterrupted[0]
    with pytest.raises(ValueError, match='already in cooldown'):
        train_tiny(
            tmp_path,
            tiny_packed,
            compact_tokenizer_dir,
            'max_duration=16ba',
            'variables.cooldown=0.05',
            f'load_path={run_dir}/checkpoints/ep0-ba14-rank0.pt',
        )


@pytest.mark.slow
def test_two_ranks_switch_at_the_same_batch_and_never_share_a_sample(tiny_packed, compact_tokenizer_dir, tmp_path):
    records = tmp_path / 'records.jsonl'
    cmd = [
        sys.executable,
        '-m',
        'composer.cli.launcher',
        '-n',
        '2',
        '--stdout',
        str(tmp_path / 'rank{rank}.out'),
        '--stderr',
        str(tmp_path / 'rank{rank}.err'),
        str(REPO_ROOT / 'tests' / 'train_recorded.py'),
        str(REPO_ROOT / 'yamls' / 'tiny-cpu.yaml'),
        f'variables.data_local={tiny_packed}',
        f'variables.tokenizer={compact_tokenizer_dir}',
        'variables.max_seq_len=64',
        f'callbacks.batch_recorder.path={records}',
        'max_duration=8ba',
        'variables.cooldown=0.25',
        'global_train_batch_size=4',
        'device_train_microbatch_size=2',
        'python_log_level=warning',
        *TINY_MODEL,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        done.stdout[-3000:] + done.stderr[-3000:] + ''.join(p.read_text()[-3000:] for p in tmp_path.glob('rank*.err'))
    )
    by_rank = {rank: [r for r in read_records(records) if r['rank'] == rank] for rank in (0, 1)}
    for rank in (0, 1):
        assert [r['prefixed'] for r in by_rank[rank]] == [True] * 6 + [False] * 2
    rows = [h for r in read_records(records) for h in r['row_hashes']]
    assert len(rows) == 8 * 4 and len(set(rows)) == len(rows)


@pytest.mark.parametrize(
    'max_duration,kwargs,expected',
    [
        ('100ba', {}, '90ba'),
        ('100ba', {'cooldown': 0.2}, '80ba'),
        ('1000tok', {'boundary': '900tok'}, '900tok'),
        ('40sp', {'cooldown': 0.25}, '30sp'),
    ],
)
def test_the_boundary_is_a_fraction_or_a_time_in_max_durations_unit(max_duration, kwargs, expected):
    assert cooldown_boundary(Time.from_timestring(max_duration), **kwargs) == Time.from_timestring(expected)


@pytest.mark.parametrize(
    'max_duration,kwargs,message',
    [
        ('100ba', {'cooldown': 1.0}, r'fraction in \(0, 1\)'),
        ('100ba', {'cooldown': 0.0}, r'fraction in \(0, 1\)'),
        ('100ba', {'boundary': '120ba'}, 'inside the run'),
        ('100ba', {'boundary': '50tok'}, 'same unit'),
        ('2ep', {}, 'batches, tokens or samples'),
        ('100ba', {'cooldown': 0.1, 'boundary': '90ba'}, 'not both'),
    ],
)
def test_bad_boundaries_are_clear_errors(max_duration, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cooldown_boundary(Time.from_timestring(max_duration), **kwargs)


@pytest.fixture(scope='module')
def cooldown_data(tmp_path_factory, compact_tokenizer):
    """A separate packed dataset to cool down on, and the set of its rows."""
    from conftest import pack_texts, synthetic_documents, write_packed_mds

    rows = pack_texts(synthetic_documents(400, seed=7), compact_tokenizer, 64)
    path = write_packed_mds(tmp_path_factory.mktemp('cooldown'), rows, 64, compact_tokenizer)
    return path, {tuple(r['input_ids']) for r in rows}


def cooldown_stream(path):
    return f'callbacks.meco_cooldown.cooldown_streams.hq.local={path}'


@pytest.fixture(scope='module')
def with_cooldown_streams(tmp_path_factory, tiny_packed, compact_tokenizer_dir, cooldown_data):
    run_dir = tmp_path_factory.mktemp('streams')
    return run_dir, train_tiny(run_dir, tiny_packed, compact_tokenizer_dir, *RUN, cooldown_stream(cooldown_data[0]))


@pytest.mark.slow
def test_cooldown_streams_supply_every_batch_after_the_boundary(with_cooldown_streams, cooldown_data):
    records = with_cooldown_streams[1]
    from_cooldown = [tuple(r['first_row']) in cooldown_data[1] for r in records]
    assert from_cooldown == [False] * 12 + [True] * 4


@pytest.mark.slow
@pytest.mark.parametrize('stop', [12, 14], ids=['at', 'after'])
def test_resuming_at_or_after_the_switch_to_cooldown_streams_reproduces_the_run(
    with_cooldown_streams, tiny_packed, compact_tokenizer_dir, cooldown_data, tmp_path, stop
):
    run_dir, full = with_cooldown_streams
    resumed = train_tiny(
        tmp_path,
        tiny_packed,
        compact_tokenizer_dir,
        *RUN,
        cooldown_stream(cooldown_data[0]),
        f'load_path={run_dir}/checkpoints/ep0-ba{stop}-rank0.pt',
    )
    assert [r['batch'] for r in resumed] == list(range(stop, 16))
    assert [(r['hash'], r['loss']) for r in resumed] == [(r['hash'], r['loss']) for r in full[stop:]]


@pytest.mark.slow
def test_resuming_a_resumed_run_across_the_switch_to_cooldown_streams_reproduces_the_run(
    with_cooldown_streams, tiny_packed, compact_tokenizer_dir, cooldown_data, tmp_path
):
    run_dir, full = with_cooldown_streams
    first, second = tmp_path / 'first', tmp_path / 'second'
    first.mkdir(), second.mkdir()
    streams = cooldown_stream(cooldown_data[0])
    once = train_tiny(
        first, tiny_packed, compact_tokenizer_dir, *RUN, streams, f'load_path={run_dir}/checkpoints/ep0-ba8-rank0.pt'
    )
    twice = train_tiny(
        second, tiny_packed, compact_tokenizer_dir, *RUN, streams, f'load_path={first}/checkpoints/ep0-ba14-rank0.pt'
    )

    assert [(r['hash'], r['loss']) for r in once] == [(r['hash'], r['loss']) for r in full[8:]]
    assert [(r['hash'], r['loss']) for r in twice] == [(r['hash'], r['loss']) for r in full[14:]]


class WorkerCensus(Callback):
    """A test callback: after every batch, one JSON line ``[batch, pids of this process's live child processes]``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def batch_end(self, state: State, logger: Logger) -> None:
        pids = sorted(child.pid for child in multiprocessing.active_children())
        with self.path.open('a') as f:
            f.write(json.dumps([int(state.timestamp.batch) - 1, pids]) + '\n')


@pytest.mark.slow
def test_the_main_loaders_workers_stop_at_the_switch_to_cooldown_streams(
    with_cooldown_streams, tiny_packed, compact_tokenizer_dir, cooldown_data, tmp_path
):
    from llmfoundry import registry

    if 'worker_census' not in registry.callbacks:
        registry.callbacks.register('worker_census', func=WorkerCensus)
    census = tmp_path / 'census.jsonl'
    records = train_tiny(
        tmp_path,
        tiny_packed,
        compact_tokenizer_dir,
        *RUN,
        cooldown_stream(cooldown_data[0]),
        'train_loader.num_workers=2',
        f'callbacks.worker_census.path={census}',
    )
    alive = dict(map(tuple, map(json.loads, census.read_text().splitlines())))
    main_workers, cooldown_workers = set(alive[11]), set(alive[12])

    assert [r['hash'] for r in records] == [r['hash'] for r in with_cooldown_streams[1]]
    assert all(len(alive[batch]) == 2 and set(alive[batch]) == main_workers for batch in range(12))
    assert all(len(alive[batch]) == 2 and set(alive[batch]) == cooldown_workers for batch in range(12, 16))
    assert not main_workers & cooldown_workers


@pytest.mark.slow
def test_cooldown_streams_of_another_tokenizer_are_refused(tiny_packed, compact_tokenizer_dir, cooldown_data, tmp_path):
    import json
    import shutil

    from meco_callbacks.formats import DATASET_INFO_FILE

    other = tmp_path / 'other'
    shutil.copytree(cooldown_data[0], other)
    info = json.loads((other / DATASET_INFO_FILE).read_text())
    info['tokenizer']['fingerprint'] = 'sha256:ffffffffffffffff'
    (other / DATASET_INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match='token ids would mean different text'):
        train_tiny(tmp_path, tiny_packed, compact_tokenizer_dir, *RUN, cooldown_stream(other))


@pytest.mark.slow
@pytest.mark.parametrize(
    'change, moved_to', [('max_duration=20ba', '15ba'), ('variables.cooldown=0.5', '8ba')], ids=['duration', 'fraction']
)
def test_resuming_with_settings_that_move_the_boundary_is_refused_with_both_boundaries(
    uninterrupted, tiny_packed, compact_tokenizer_dir, tmp_path, change, moved_to
):
    run_dir, _ = uninterrupted[0]
    with pytest.raises(
        ValueError, match=rf'boundary at 12ba, but this run places it at {moved_to}.*allow_boundary_change'
    ):
        train_tiny(
            tmp_path,
            tiny_packed,
            compact_tokenizer_dir,
            *RUN,
            change,
            f'load_path={run_dir}/checkpoints/ep0-ba8-rank0.pt',
        )


@pytest.mark.slow
def test_allow_boundary_change_moves_the_boundary_of_a_resumed_run(
    uninterrupted, tiny_packed, compact_tokenizer_dir, tmp_path
):
    run_dir, full = uninterrupted[0]
    resumed = train_tiny(
        tmp_path,
        tiny_packed,
        compact_tokenizer_dir,
        *RUN,
        'variables.cooldown=0.5',
        'callbacks.meco_cooldown.allow_boundary_change=true',
        f'load_path={run_dir}/checkpoints/ep0-ba6-rank0.pt',
    )
    assert [r['prefixed'] for r in resumed] == [True] * 2 + [False] * 8  # batches 6..15, plain from batch 8
    assert [r['hash'] for r in resumed[:2]] == [r['hash'] for r in full[6:8]]


def test_a_misspelt_cooldown_key_is_refused_with_the_valid_keys():
    from llmfoundry.utils.builders import build_callback

    with pytest.raises(
        ValueError,
        match=r"unknown meco_cooldown key\(s\) \['cooldwn'\]; it takes "
        r"\['cooldown', 'boundary', 'cooldown_streams', 'allow_boundary_change'\]",
    ):
        build_callback('meco_cooldown', {'cooldwn': 0.2})
