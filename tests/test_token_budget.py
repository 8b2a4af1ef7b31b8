"""A budget in tokens (``tok``) means document tokens for MeCo runs, so MeCo and its baseline get the same steps.

Composer adds the DataSpec's ``get_num_tokens_in_batch`` to ``time/token``; llm-foundry's count is
``attention_mask.sum()``, which counted MeCo's prefixes, so ``max_duration: ...tok`` stopped MeCo early (about a
third fewer steps on short documents).
"""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT, TINY_MODEL
from llmfoundry.data.dataloader import build_dataloader
from streaming.base.util import clean_stale_shared_memory


def token_counts(packed, tokenizer, metadata):
    """(Composer's token count, attended tokens) of every batch of the meco loader with the ``metadata`` block."""
    clean_stale_shared_memory()
    spec = build_dataloader(
        {
            'name': 'meco',
            'drop_last': True,
            'num_workers': 0,
            'dataset': {'local': str(packed), 'shuffle': False, 'max_seq_len': 64, 'metadata': metadata},
        },
        tokenizer,
        4,
    )
    counts = []
    for raw in spec.dataloader:
        batch = spec.batch_transforms(raw)
        counts.append((spec.get_num_tokens_in_batch(batch), int(batch['attention_mask'].sum())))
    del spec
    clean_stale_shared_memory()
    return counts


@pytest.mark.parametrize('form', ['compact', 'domain'])
def test_meco_and_its_baseline_count_the_same_tokens_for_the_same_rows(
    form, tiny_packed, compact_tokenizer, domain_packed, tokenizer
):
    # the tiny recipe's one-token prefix (kind compact) and the paper's URL form, each on the rows packed for it
    packed, tok, metadata = {
        'compact': (tiny_packed, compact_tokenizer, {'kind': 'compact', 'template': '{}'}),
        'domain': (domain_packed, tokenizer, {'kind': 'domain'}),
    }[form]
    meco = token_counts(packed, tok, metadata)
    baseline = token_counts(packed, tok, {'kind': 'none'})

    assert [total for total, _ in meco] == [total for total, _ in baseline]
    assert [attended for _, attended in baseline] == [total for total, _ in baseline]  # the baseline has no prefixes
    assert all(attended > total for total, attended in meco)  # the prefixes are attended, not counted


def train_counting_batches(run_dir, data, tokenizer_dir, yaml, *overrides):
    """Train ``yaml`` at the tiny test size in this process; the number of batches it ran."""
    import recorder
    from llmfoundry.command_utils import train_from_yaml

    recorder.register()
    clean_stale_shared_memory()
    records = run_dir / 'records.jsonl'
    train_from_yaml(
        str(REPO_ROOT / 'yamls' / yaml),
        [
            f'variables.data_local={data}',
            f'variables.tokenizer={tokenizer_dir}',
            'variables.max_seq_len=64',
            f'callbacks.batch_recorder.path={records}',
            f'save_folder={run_dir}/checkpoints',
            'save_interval=1000ba',
            'callbacks.hf_llama_checkpointer.save_interval=1000ba',
            'console_log_interval=100ba',
            'python_log_level=warning',
            'global_train_batch_size=4',
            'device_train_microbatch_size=4',
            *TINY_MODEL,
            *overrides,
        ],
    )
    clean_stale_shared_memory()
    return len(recorder.read_records(records))


@pytest.mark.slow
def test_meco_and_its_baseline_with_max_duration_in_tok_run_the_same_number_of_steps(
    tiny_packed, compact_tokenizer_dir, tmp_path
):
    (tmp_path / 'meco').mkdir()
    (tmp_path / 'baseline').mkdir()
    budget = 'max_duration=2400tok'
    meco = train_counting_batches(tmp_path / 'meco', tiny_packed, compact_tokenizer_dir, 'tiny-cpu.yaml', budget)
    baseline = train_counting_batches(
        tmp_path / 'baseline', tiny_packed, compact_tokenizer_dir, 'baseline-tiny-cpu.yaml', budget
    )

    assert meco == baseline
    assert meco >= 8  # a run long enough that counting prefixes (a third more tokens per batch) would have cut it
