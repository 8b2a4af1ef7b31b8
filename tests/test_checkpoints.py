"""model/checkpoints.py: a Composer checkpoint's model weights from one file or a sharded directory, on the CPU.

The sharded directories are written by torch.distributed.checkpoint in Composer's layout (``{'state': {'model':
..., 'optimizers': ...}, 'rng': ...}``): by one process, and by two gloo processes that each hold half of every
tensor (DTensor shards), as FSDP ranks do; the reader reassembles them without a process group.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from meco_callbacks.model.checkpoints import (
    CheckpointError,
    is_sharded_checkpoint,
    load_model_weights,
    strip_prefix,
)


def composer_state(seed: int = 0) -> dict:
    """A Composer-shaped checkpoint: model weights under state.model, optimizer state and rng beside them."""
    g = torch.Generator().manual_seed(seed)
    model = {
        'model.transformer.wte.weight': torch.randn(12, 8, generator=g),
        'model.transformer.blocks.0.attn.Wqkv.weight': torch.randn(16, 8, generator=g),
        'model.lm_head.weight': torch.randn(12, 8, generator=g),
    }
    optimizer = {'state': {name: {'exp_avg': torch.randn(v.shape, generator=g)} for name, v in model.items()}}
    return {
        'state': {'model': model, 'optimizers': {'DecoupledAdamW': optimizer}, 'run_name': 'tiny'},
        'rng': [{'torch': torch.random.get_rng_state()}],
    }


def test_a_checkpoint_file_gives_its_model_weights(tmp_path: Path) -> None:
    state = composer_state()
    torch.save(state, tmp_path / 'ep0-ba4-rank0.pt')

    weights = load_model_weights(tmp_path / 'ep0-ba4-rank0.pt')

    assert weights.keys() == state['state']['model'].keys()
    assert all(torch.equal(weights[k], v) for k, v in state['state']['model'].items())
    assert not is_sharded_checkpoint(tmp_path / 'ep0-ba4-rank0.pt')


def test_a_sharded_directory_gives_the_model_weights_and_leaves_the_optimizer(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = composer_state()
    dcp.save(state, checkpoint_id=str(tmp_path / 'ep0-ba4'))
    (tmp_path / 'latest-rank0.pt').symlink_to('ep0-ba4')  # Composer's latest link to a sharded checkpoint

    for path in (tmp_path / 'ep0-ba4', tmp_path / 'latest-rank0.pt'):
        weights = load_model_weights(path)
        assert is_sharded_checkpoint(path)
        assert weights.keys() == state['state']['model'].keys()  # no optimizer state, no rng
        assert all(torch.equal(weights[k], v) for k, v in state['state']['model'].items())


def _save_half_per_rank(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: every weight as a DTensor sharded along dim 0, saved together as FSDP ranks do."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group(  # a rendezvous that fails (the port taken meanwhile) fails in a minute, not 30
        'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        mesh = init_device_mesh('cpu', (2,))
        state = composer_state()
        state['state']['model'] = {
            k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in state['state']['model'].items()
        }
        if rank > 0:
            state.pop('rng')  # Composer: only rank 0 saves the rng under sharded checkpointing
        dcp.save(state, checkpoint_id=out)
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without destroying the group or finalizing: torch 2.7's ProcessGroupGloo destructor joins its worker
    # thread while holding the GIL, and that thread may need the GIL to free a tensor. A rank hung there forever
    # once in a few runs (gdb: ~ProcessGroupGloo in std::thread::join, the worker in take_gil), holding the test.
    os._exit(0)


@pytest.mark.slow
def test_a_directory_sharded_over_two_ranks_is_reassembled_without_a_process_group(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = tmp_path / 'ep0-ba4'
    ranks = mp.spawn(_save_half_per_rank, args=(port, str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not ranks.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail('the two ranks did not finish saving in 300 s')
    expected = composer_state()['state']['model']

    weights = load_model_weights(out)

    assert sorted(p.name for p in out.iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], v) for k, v in expected.items())


def test_a_path_that_is_neither_is_named_with_what_to_pass(tmp_path: Path) -> None:
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'folder' / 'notes.txt').write_text('x')
    (tmp_path / 'text.pt').write_text('not a checkpoint')
    torch.save({'weights': torch.ones(1)}, tmp_path / 'other.pt')

    with pytest.raises(
        CheckpointError, match=r"not a sharded Composer checkpoint \(no \.metadata file; it holds \['notes.txt'\]\)"
    ):
        load_model_weights(tmp_path / 'folder')
    with pytest.raises(
        FileNotFoundError, match=r'no Composer checkpoint at .*missing.*__<rank>_0\.distcp and \.metadata'
    ):
        load_model_weights(tmp_path / 'missing')
    with pytest.raises(CheckpointError, match='not a readable Composer checkpoint file'):
        load_model_weights(tmp_path / 'text.pt')
    with pytest.raises(CheckpointError, match=r'not a Composer checkpoint \(no state\.model\)'):
        load_model_weights(tmp_path / 'other.pt')


def test_a_sharded_directory_without_model_weights_is_refused(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save({'app': {'weights': torch.ones(2)}}, checkpoint_id=str(tmp_path / 'other'))

    with pytest.raises(CheckpointError, match='without model weights under state.model'):
        load_model_weights(tmp_path / 'other')


def test_strip_prefix_removes_composers_model_prefix_only_where_present() -> None:
    assert strip_prefix({'model.transformer.wte.weight': 1, 'lm_head.weight': 2}) == {
        'transformer.wte.weight': 1,
        'lm_head.weight': 2,
    }
