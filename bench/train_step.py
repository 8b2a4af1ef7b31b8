"""Training tokens/s of the tiny recipe with MeCo against the same run without it.

Ours: yamls/tiny-cpu.yaml as it is (meco loader with prefixes, metadata_conditioning, meco_cooldown,
document-masked flex attention). Anchor: the same model and rows through llm-foundry's text loader, no MeCo
algorithm or callback, attention not masked by document. Both run in this process through llm-foundry's
trainer; the clock runs from the end of batch ``--warmup`` to the end of the run.
Last line: the ratio (goal >= 0.98).   python bench/train_step.py [--batches N] [--max-seq-len N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from composer.core import Callback, State  # noqa: E402
from composer.loggers import Logger  # noqa: E402
from inputs import build_packed, scratch_dir, write_token_rows  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class StepClock(Callback):
    """Times the batches after the warm-up; the last run's numbers stay on the class for the caller."""

    warmup = 5
    last: tuple[int, float] = (0, 0.0)

    def __init__(self) -> None:
        self.start: float | None = None
        self.timed = 0

    def batch_end(self, state: State, logger: Logger) -> None:
        now = time.perf_counter()
        if int(state.timestamp.batch) == StepClock.warmup:
            self.start = now
        elif self.start is not None:
            self.timed += 1
            StepClock.last = (self.timed, now - self.start)


def plain_recipe(out: Path) -> Path:
    """yamls/tiny-cpu.yaml without the MeCo algorithm and cooldown callback (overrides cannot delete keys)."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(REPO / 'yamls' / 'tiny-cpu.yaml')
    del config['algorithms']
    del config['callbacks']['meco_cooldown']
    OmegaConf.save(config, out)
    return out


def tokens_per_second(yaml: Path, overrides: list[str], tokens_per_batch: int) -> float:
    """Train ``yaml`` with ``overrides`` and return steady-state tokens/s."""
    from llmfoundry.command_utils import train_from_yaml

    train_from_yaml(
        str(yaml), [*overrides, 'callbacks.bench_clock={}', 'python_log_level=warning', 'console_log_interval=1000ba']
    )
    batches, seconds = StepClock.last
    return batches * tokens_per_batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--documents', type=int, default=3000)
    parser.add_argument('--max-seq-len', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--batches', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=5)
    args = parser.parse_args()

    from llmfoundry import registry

    registry.callbacks.register('bench_clock', func=StepClock)
    StepClock.warmup = args.warmup
    work = scratch_dir()
    tokenizer_dir, packed = build_packed(work, args.documents, args.max_seq_len)
    tokens = write_token_rows(packed, work / 'tokens')
    common = [
        f'variables.tokenizer={tokenizer_dir}',
        f'variables.max_seq_len={args.max_seq_len}',
        f'max_duration={args.batches}ba',
        f'global_train_batch_size={args.batch_size}',
        f'device_train_microbatch_size={args.batch_size}',
        f'variables.save_folder={work / "run"}',
    ]
    per_batch = args.batch_size * args.max_seq_len
    ours = tokens_per_second(REPO / 'yamls' / 'tiny-cpu.yaml', [*common, f'variables.data_local={packed}'], per_batch)
    anchor = tokens_per_second(
        plain_recipe(work / 'plain.yaml'),
        [
            *common,
            f'variables.data_local={tokens}',
            'train_loader.name=text',
            'train_loader.num_workers=1',
            'model.attn_config.attn_uses_sequence_id=false',
        ],
        per_batch,
    )
    print(f'with MeCo:    {ours:10,.0f} tokens/s')
    print(f'without MeCo: {anchor:10,.0f} tokens/s')
    print(f'meco/plain training tokens/s ratio: {ours / anchor:.3f}')


if __name__ == '__main__':
    main()
