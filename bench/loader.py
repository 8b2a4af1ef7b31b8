"""Batches/s of the MeCo loader (prefixes on, injection included) against llm-foundry's text loader.

Both read the same packed rows (packed with prefix room for domains, as the README packs; llm-foundry's copy as
a ``tokens`` MDS of each row's document tokens) and yield [batch, max_seq_len]; MeCo also tokenizes prefixes
(cached), injects them into the room, and builds labels, sequence ids, positions and padding.
Rounds alternate between the two loaders and the best of each counts. Last line: the ratio (goal >= 0.9).   python bench/loader.py [--documents N] [--batches N] [--num-workers N] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inputs import build_packed, scratch_dir, write_token_rows  # noqa: E402


def batches_per_second(spec, iterator, batches: int) -> float:
    """Draw ``batches`` batches from ``iterator`` through the DataSpec's transforms."""
    start = time.perf_counter()
    for _ in range(batches):
        spec.batch_transforms(next(iterator))
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--documents', type=int, default=6000, help='synthetic documents to convert')
    parser.add_argument('--max-seq-len', type=int, default=2048)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--batches', type=int, default=150, help='timed batches per loader and round')
    parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds; the best of each loader counts')
    parser.add_argument('--num-workers', type=int, default=0, help='dataloader workers for both loaders')
    parser.add_argument('--smoke', action='store_true', help='the tiniest run that exercises the code (tests)')
    args = parser.parse_args()
    if args.smoke:
        args.documents, args.max_seq_len, args.batches, args.rounds = 60, 256, 4, 1

    from llmfoundry.data.dataloader import build_dataloader
    from transformers import AutoTokenizer

    work = scratch_dir()
    tokenizer_dir, packed = build_packed(work, args.documents, args.max_seq_len, reserve_prefix=['domain'])
    tokens = write_token_rows(packed, work / 'tokens')
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    common = {'drop_last': True, 'num_workers': args.num_workers}
    if args.num_workers == 0:
        common['prefetch_factor'] = None
        common['persistent_workers'] = False
    meco = build_dataloader(
        {'name': 'meco', **common, 'dataset': {'local': str(packed), 'shuffle': True, 'max_seq_len': args.max_seq_len}},
        tokenizer,
        args.batch_size,
    )
    text = build_dataloader(
        {'name': 'text', **common, 'dataset': {'local': str(tokens), 'shuffle': True, 'max_seq_len': args.max_seq_len}},
        tokenizer,
        args.batch_size,
    )
    rows = meco.dataloader.dataset.num_samples
    if rows < (args.rounds * args.batches + 2) * args.batch_size:
        sys.exit(f'only {rows} rows: raise --documents or lower --batches')
    iterators = {'meco': iter(meco.dataloader), 'text': iter(text.dataloader)}
    for spec, name in ((meco, 'meco'), (text, 'text')):  # warm-up
        batches_per_second(spec, iterators[name], 2)
    ours = anchor = 0.0
    for _ in range(args.rounds):  # interleaved, best of each: the machine is shared and noisy
        ours = max(ours, batches_per_second(meco, iterators['meco'], args.batches))
        anchor = max(anchor, batches_per_second(text, iterators['text'], args.batches))
    print(
        f'meco loader (prefixes on):   {ours:8.1f} batches/s  ({ours * args.batch_size * args.max_seq_len:,.0f} tokens/s)'
    )
    print(f'llm-foundry text loader:     {anchor:8.1f} batches/s')
    print(f'meco/llm-foundry batches/s ratio: {ours / anchor:.2f}')


if __name__ == '__main__':
    main()
