"""End to end: `composer train.py yamls/tiny-cpu.yaml` trains, and a misconfigured run stops at start."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_MODEL, train_tiny


@pytest.mark.slow
def test_composer_train_py_trains_the_tiny_recipe_and_the_loss_falls(tiny_packed, tokenizer_dir, tmp_path):
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / 'composer'),
            'train.py',
            'yamls/tiny-cpu.yaml',
            f'variables.data={tiny_packed}',
            f'variables.tokenizer={tokenizer_dir}',
            'variables.max_seq_len=64',
            'max_duration=30ba',
            'global_train_batch_size=8',
            'device_train_microbatch_size=8',
            'console_log_interval=1ba',
            f'save_folder={tmp_path}/ckpt',
            'save_interval=30ba',
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    losses = [float(x) for x in re.findall(r'Train loss/train/total: ([0-9.naninf]+)', done.stdout + done.stderr)]
    assert len(losses) == 30
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert (tmp_path / 'ckpt' / 'ep0-ba30-rank0.pt').is_file()


def test_document_masking_without_a_model_that_honours_it_stops_the_run(tiny_packed, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match='attn_uses_sequence_id: true'):
        train_tiny(
            tmp_path, tiny_packed, tokenizer_dir, 'max_duration=2ba', 'model.attn_config.attn_uses_sequence_id=false'
        )


def test_the_cooldown_callback_on_a_baseline_loader_stops_the_run(tiny_packed, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match='remove the callback for a baseline run'):
        train_tiny(tmp_path, tiny_packed, tokenizer_dir, 'max_duration=2ba', 'train_loader.dataset.metadata.kind=none')


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
    tiny_packed, tokenizer_dir, tmp_path
):
    """The README's "curves during training": the URL eval keeps its prefixes after the train stream drops them."""
    from llmfoundry.command_utils import train_from_yaml
    from streaming.base.util import clean_stale_shared_memory

    def eval_loader(label: str, enabled: bool) -> str:
        return (
            f'{{label: {label}, name: meco, drop_last: false, dataset: {{local: {tiny_packed}, shuffle: false, '
            f'max_seq_len: 64, document_masking: true, metadata: {{kind: domain, enabled: {str(enabled).lower()}}}}}}}'
        )

    clean_stale_shared_memory()
    trainer = train_from_yaml(
        str(REPO_ROOT / 'yamls' / 'tiny-cpu.yaml'),
        [
            f'variables.data={tiny_packed}',
            f'variables.tokenizer={tokenizer_dir}',
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
