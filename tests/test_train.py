"""End to end: `composer train.py yamls/tiny-cpu.yaml` trains, and a misconfigured run stops at start."""

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_MODEL, train_tiny


def composer_train(recipe: str, run_dir: Path, data: Path, tokenizer_dir: Path, *overrides: str) -> str:
    """``composer train.py yamls/<recipe> ...`` into ``variables.save_folder=run_dir``; returns the console output."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / 'composer'),
            'train.py',
            f'yamls/{recipe}',
            f'variables.data_local={data}',
            f'variables.tokenizer={tokenizer_dir}',
            f'variables.save_folder={run_dir}',
            'variables.max_seq_len=64',
            *overrides,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout + done.stderr


def logged_losses(output: str) -> list[float]:
    """Every training loss the console logger printed, in order."""
    return [float(x) for x in re.findall(r'Train loss/train/total: ([0-9.naninf]+)', output)]


@pytest.fixture(scope='module')
def tiny_run(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """yamls/tiny-cpu.yaml as shipped, 30 batches (cooldown from batch 27): its save_folder and console output."""
    run_dir = tmp_path_factory.mktemp('tiny') / 'meco'
    return run_dir, composer_train(
        'tiny-cpu.yaml', run_dir, tiny_packed, compact_tokenizer_dir, 'variables.max_duration=30ba'
    )


@pytest.fixture(scope='module')
def baseline_run(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """yamls/baseline-tiny-cpu.yaml, 10 batches of the smallest model: its save_folder and console output."""
    run_dir = tmp_path_factory.mktemp('tiny') / 'baseline'
    overrides = ['variables.max_duration=10ba', *TINY_MODEL]
    return run_dir, composer_train('baseline-tiny-cpu.yaml', run_dir, tiny_packed, compact_tokenizer_dir, *overrides)


@pytest.mark.slow
def test_composer_train_py_trains_the_tiny_recipe_and_the_loss_falls(tiny_run: tuple[Path, str]) -> None:
    losses = logged_losses(tiny_run[1])

    assert len(losses) == 30
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.slow
def test_the_tiny_recipe_saves_checkpoints_and_a_hugging_face_copy_with_the_tokenizers_vocabulary(
    tiny_run: tuple[Path, str], compact_tokenizer
) -> None:
    run_dir, output = tiny_run
    export = run_dir / 'huggingface' / 'ba30'

    assert sorted(p.name for p in run_dir.glob('ep0-ba*-rank0.pt')) == [
        'ep0-ba10-rank0.pt',
        'ep0-ba20-rank0.pt',
        'ep0-ba30-rank0.pt',
    ]
    # 388 BPE tokens and the 16 reserved metadata tokens of kind compact
    assert json.loads((export / 'config.json').read_text())['vocab_size'] == len(compact_tokenizer) == 404
    assert (export / 'tokenizer.json').is_file()
    assert f'meco_mpt_causal_lm: vocab_size 404, from the tokenizer {compact_tokenizer.name_or_path}' in output


@pytest.mark.slow
def test_the_tiny_recipe_on_the_cpu_runs_torch_attention_and_says_so_once(tiny_run: tuple[Path, str]) -> None:
    assert tiny_run[1].count("attn_impl: flex on the CPU runs as llm-foundry's torch attention") == 1


@pytest.mark.slow
def test_a_tiny_run_prints_no_warning_per_batch(tiny_run: tuple[Path, str]) -> None:
    assert 'To copy construct' not in tiny_run[1]


@pytest.mark.slow
def test_the_baseline_tiny_recipe_trains_without_metadata_or_cooldown(baseline_run: tuple[Path, str]) -> None:
    run_dir, output = baseline_run

    assert re.findall(r'Train meco/metadata_token_fraction: (\S+)', output) == ['0.0000'] * 10
    assert 'meco_cooldown' not in output
    assert (run_dir / 'ep0-ba10-rank0.pt').is_file() and (run_dir / 'huggingface' / 'ba10' / 'config.json').is_file()


@pytest.mark.slow
def test_plot_reads_the_runs_train_logs_and_draws_them_side_by_side(
    tiny_run: tuple[Path, str], baseline_run: tuple[Path, str], tmp_path: Path
) -> None:
    from meco_callbacks.training.run_log import read_run_log

    (meco_dir, meco_output), (baseline_dir, baseline_output) = tiny_run, baseline_run
    meco, baseline = read_run_log(meco_dir / 'train.log'), read_run_log(baseline_dir / 'train.log')
    png = tmp_path / 'loss.png'
    done = subprocess.run(
        [sys.executable, 'recipes/plot.py', str(meco_dir), str(baseline_dir), '--output', str(png)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert (meco.name, baseline.name) == ('meco', 'baseline')
    assert [meco.losses[b] for b in range(1, 31)] == logged_losses(meco_output)
    assert [baseline.losses[b] for b in range(1, 11)] == logged_losses(baseline_output)
    assert [meco.tokens[b] for b in range(1, 31)] == [
        int(x) for x in re.findall(r'Train time/token: (\d+)', meco_output)
    ]
    assert meco.tokens_before(27) == meco.tokens[28] > 0  # where the plot marks the cooldown
    assert (meco.cooldown_start_batch, baseline.cooldown_start_batch) == (27, None)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        f'meco: 30 logged batches, last 30, loss {meco.final_loss:.4f}',
        f'baseline: 10 logged batches, last 10, loss {baseline.final_loss:.4f}',
        f'wrote {png}',
    ]
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000


@pytest.mark.slow
def test_the_plot_command_and_the_log_reader_import_without_matplotlib() -> None:
    # (Composer itself imports matplotlib, so modules that import Composer cannot be checked this way.)
    code = (
        'import sys, meco_callbacks.cli.plot, meco_callbacks.cli.train, meco_callbacks.training.run_log; '
        "print('matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)

    assert done.stdout == 'False\n', done.stderr[-3000:]


@pytest.mark.slow
def test_ctrl_c_stops_training_with_one_line_naming_the_last_checkpoint(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path: Path
) -> None:
    args = [
        'yamls/tiny-cpu.yaml',
        f'variables.data_local={tiny_packed}',
        f'variables.tokenizer={compact_tokenizer_dir}',
        f'variables.save_folder={tmp_path}',
        'variables.max_seq_len=64',
        'variables.max_duration=400ba',
        'variables.save_interval=5ba',
        'console_log_interval=100ba',
        *TINY_MODEL,
    ]
    training = subprocess.Popen(
        [sys.executable, 'recipes/train.py', *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job: Ctrl-C reaches every process
    )
    deadline = time.monotonic() + 600
    # Composer writes the `latest` link once a checkpoint is complete, so one is whole when the Ctrl-C lands.
    while not (tmp_path / 'latest-rank0.pt').exists() and training.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(training.pid, signal.SIGINT)
    output, _ = training.communicate(timeout=300)
    checkpoint = (tmp_path / 'latest-rank0.pt').resolve()
    after = output[output.index('[batch=1/400]') :].splitlines()  # what followed the first batch

    assert training.returncode == 130, output[-4000:]
    assert checkpoint.name.startswith('ep0-ba') and checkpoint.is_file()
    assert 'Traceback' not in output
    assert [
        line
        for line in after
        if not line.startswith('\t') and 'UserWarning' not in line and 'current_batch_size' not in line
    ] == [
        '[batch=1/400]:',
        f'Training interrupted; last checkpoint {checkpoint}. Resume with: composer recipes/train.py '
        f'{shlex.join(args)} load_path={checkpoint}',
    ]


# Training as recipes/train.py runs it, with CTRL_C_PRESSES Ctrl-Cs sent as the second checkpoint (batch 10) starts
# to be written.
CTRL_C_DURING_A_CHECKPOINT = """
import os, signal, sys, threading, time
import composer.utils.checkpoint as checkpoint
from meco_callbacks.cli import train

write, files = checkpoint._write_checkpoint_file, []


def write_after_ctrl_c(state_dict, filename):
    files.append(filename)
    if len(files) == 2:
        for _ in range(int(os.environ['CTRL_C_PRESSES'])):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.01)  # the handler has run before the next press
    write(state_dict, filename)


checkpoint._write_checkpoint_file = write_after_ctrl_c
sys.argv[0] = 'recipes/train.py'
train.main()
"""


def train_with_ctrl_c_during_the_second_checkpoint(
    presses: int, tiny_packed: Path, tokenizer_dir: Path, save_folder: Path
) -> subprocess.CompletedProcess:
    """Run CTRL_C_DURING_A_CHECKPOINT (checkpoints every 5 batches, at most 400) into ``save_folder``."""
    args = [
        'yamls/tiny-cpu.yaml',
        f'variables.data_local={tiny_packed}',
        f'variables.tokenizer={tokenizer_dir}',
        f'variables.save_folder={save_folder}',
        'variables.max_seq_len=64',
        'variables.max_duration=400ba',
        'variables.save_interval=5ba',
        *TINY_MODEL,
    ]
    return subprocess.run(
        [sys.executable, '-c', CTRL_C_DURING_A_CHECKPOINT, *args],
        cwd=REPO_ROOT,
        env={**os.environ, 'CTRL_C_PRESSES': str(presses)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_write_stops_after_the_write_with_that_checkpoint_named(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path: Path
) -> None:
    done = train_with_ctrl_c_during_the_second_checkpoint(1, tiny_packed, compact_tokenizer_dir, tmp_path)
    checkpoint = tmp_path / 'ep0-ba10-rank0.pt'

    assert done.returncode == 130, done.stderr[-4000:]
    assert (tmp_path / 'latest-rank0.pt').resolve() == checkpoint
    assert torch.load(checkpoint, weights_only=False)['state']['timestamp']['Timestamp']['batch'] == 10
    assert not list(tmp_path.glob('ep0-ba15-*'))
    assert 'Traceback' not in done.stdout + done.stderr
    assert done.stderr.splitlines()[-1].startswith(f'Training interrupted; last checkpoint {checkpoint}. Resume with:')


@pytest.mark.slow
def test_a_second_ctrl_c_during_a_checkpoint_write_ends_the_process_at_once(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path: Path
) -> None:
    done = train_with_ctrl_c_during_the_second_checkpoint(2, tiny_packed, compact_tokenizer_dir, tmp_path)

    assert done.returncode == -signal.SIGINT, done.stderr[-4000:]
    assert (tmp_path / 'latest-rank0.pt').resolve() == tmp_path / 'ep0-ba5-rank0.pt'


@pytest.mark.slow
def test_document_masking_without_a_model_that_honours_it_stops_the_run(tiny_packed, compact_tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match='attn_uses_sequence_id: true'):
        train_tiny(
            tmp_path,
            tiny_packed,
            compact_tokenizer_dir,
            'max_duration=2ba',
            'model.attn_config.attn_uses_sequence_id=false',
        )


@pytest.mark.slow
def test_the_cooldown_callback_on_a_baseline_loader_stops_the_run(tiny_packed, compact_tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match='remove the callback for a baseline run'):
        train_tiny(
            tmp_path, tiny_packed, compact_tokenizer_dir, 'max_duration=2ba', 'train_loader.dataset.metadata.kind=none'
        )


@pytest.mark.slow
def test_meco_components_on_a_plain_text_loader_stop_the_run(tokenizer_dir, tmp_path):
    from streaming import MDSWriter

    with MDSWriter(out=str(tmp_path / 'text'), columns={'text': 'str'}) as writer:
        for i in range(64):
            writer.write({'text': f'plain text document number {i} ' * 20})
    with pytest.raises(ValueError, match='needs the MeCo train loader'):
        train_tiny(
            tmp_path,
            tmp_path / 'text',
            tokenizer_dir,
            'max_duration=2ba',
            'train_loader.name=text',
            'train_loader.num_workers=1',
        )


@pytest.mark.slow
def test_two_meco_eval_loaders_track_loss_with_and_without_urls_through_the_cooldown(
    tiny_packed, compact_tokenizer_dir, tmp_path
):
    """The README's "curves during training": the URL eval keeps its prefixes after the train stream drops them."""
    from llmfoundry.command_utils import train_from_yaml
    from streaming.base.util import clean_stale_shared_memory

    def eval_loader(label: str, enabled: bool) -> str:
        return (
            f'{{label: {label}, name: meco, drop_last: false, dataset: {{local: {tiny_packed}, shuffle: false, '
            f'max_seq_len: 64, document_masking: true, metadata: {{kind: compact, template: "{{}}", '
            f'enabled: {str(enabled).lower()}}}}}}}'
        )

    clean_stale_shared_memory()
    trainer = train_from_yaml(
        str(REPO_ROOT / 'yamls' / 'tiny-cpu.yaml'),
        [
            f'variables.data_local={tiny_packed}',
            f'variables.tokenizer={compact_tokenizer_dir}',
            'variables.max_seq_len=64',
            'max_duration=10ba',
            'global_train_batch_size=4',
            'device_train_microbatch_size=4',
            'eval_interval=5ba',
            'eval_subset_num_batches=2',
            f'save_folder={tmp_path}/ckpt',
            'console_log_interval=100ba',
            'python_log_level=warning',
            f'eval_loader=[{eval_loader("meco_url", True)}, {eval_loader("meco_no_url", False)}]',
            *TINY_MODEL,
        ],
    )
    clean_stale_shared_memory()

    # Evaluations ran at batches 5 and 10; the injector's last call is the last eval batch, after the cooldown.
    injected = {
        evaluator.label: evaluator.dataloader.dataloader.injector.stats.last['metadata_tokens']
        for evaluator in trainer.state.evaluators
    }
    loss = {
        label: float(metrics['LanguageCrossEntropy'].compute()) for label, metrics in trainer.state.eval_metrics.items()
    }
    assert not trainer.state.train_dataloader.injector.enabled  # the train stream cooled down at batch 9
    assert injected['eval/meco_url'] > 0 and injected['eval/meco_no_url'] == 0
    assert set(loss) == {'eval/meco_url', 'eval/meco_no_url'} and loss['eval/meco_url'] != loss['eval/meco_no_url']


@pytest.mark.slow
def test_the_tiny_recipe_trains_with_summary_attention_through_microbatches_and_the_cooldown(
    tiny_packed, compact_tokenizer_dir, tmp_path, monkeypatch
):
    from meco_callbacks.model import mpt

    seen = []

    def recording(prefix_mask, sequence_id=None):
        seen.append((tuple(prefix_mask.shape), int(prefix_mask.sum())))
        return forbidden(prefix_mask, sequence_id)

    forbidden = mpt.summary_forbidden
    monkeypatch.setattr(mpt, 'summary_forbidden', recording)
    records = train_tiny(
        tmp_path,
        tiny_packed,
        compact_tokenizer_dir,
        'max_duration=10ba',
        'device_train_microbatch_size=2',
        'train_loader.dataset.metadata.attention=summary',
    )

    assert len(records) == 10
    assert [r['prefixed'] for r in records] == [True] * 9 + [False]  # the cooldown's batch has no prefix_mask
    assert all(math.isfinite(r['loss']) for r in records)
    assert len(seen) == 2 * 9  # each prefixed batch of 4 rows as two microbatches of 2
    assert all(shape == (2, 64) and prefix_slots > 0 for shape, prefix_slots in seen)
