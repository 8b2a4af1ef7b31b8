"""Packing with prefix room against the first packing: tokens dropped, padding, documents split, speed.

For two document-length distributions (log-normal like DCLM's, and short documents of ~35 tokens) at rows of
2048 and 8192, it packs the same document MDS three ways and replays the MeCo loader's injection (kind
domain) over every row to count the document tokens it drops:
  (a) the first packing: rows full of document tokens, no room (each prefix token drops a document token)
  (b) stream packing with room reserved for the domain prefix (--reserve-prefix domain)
  (c) best-fit-decreasing with room (--reserve-prefix domain --strategy bfd)
Last line: packing tokens/s of (c) over (a) on the DCLM-like set at 8192 (best of 3 each; goal >= 0.5).
    python bench/pack.py [--tokens N] [--short-tokens N] [--smoke]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inputs import scratch_dir  # noqa: E402

VOCAB = 4096


def document_set(out: Path, lengths: np.ndarray, tokenizer, seed: int) -> Path:
    """A document MDS of random token ids with the given lengths and URLs from 3,000 made-up domains."""
    from streaming import MDSWriter

    from meco_callbacks.formats import DOCUMENT_COLUMNS, DOCUMENT_FORMAT, write_dataset_info
    from meco_callbacks.tokenizer.fingerprint import tokenizer_info

    rng = np.random.default_rng(seed)
    words = ['news', 'blog', 'wiki', 'docs', 'forum', 'shop', 'recipes', 'science', 'sport', 'travel', 'health']
    domains = [
        f'{"www." if k % 3 == 0 else ""}{words[k % 11]}{k}.{words[(k // 11) % 11]}-site.{["com", "org", "co.uk"][k % 3]}'
        for k in range(3000)
    ]
    tokens = rng.integers(1, len(tokenizer), int(lengths.sum()), dtype=np.uint32)  # 0 is <|endoftext|>
    ends = np.cumsum(lengths)
    with MDSWriter(out=str(out), columns=DOCUMENT_COLUMNS, size_limit=1 << 26) as writer:
        for i, (end, length) in enumerate(zip(ends.tolist(), lengths.tolist())):
            url = f'https://{domains[int(rng.integers(len(domains)))]}/page/{i}'
            writer.write({'input_ids': tokens[end - length : end], 'length': length, 'url': url})
    write_dataset_info(out, {'format': DOCUMENT_FORMAT, 'tokenizer': tokenizer_info(tokenizer)})
    return out


def dropped_by_injection(packed: Path, tokenizer, max_seq_len: int) -> int:
    """Document tokens the MeCo loader's injection (kind domain) drops over every row of ``packed``."""
    from streaming import LocalDataset

    from meco_callbacks.data.collator import PackedCollator, PrefixInjector
    from meco_callbacks.data.metadata import MetadataConfig

    dataset = LocalDataset(str(packed))
    collator = PackedCollator(tokenizer, MetadataConfig(kind='domain'), max_seq_len, None)
    injector = PrefixInjector(max_seq_len, enabled=True, document_masking=True, pad_token_id=0)
    for start in range(0, len(dataset), 64):
        samples = [dataset[i] for i in range(start, min(start + 64, len(dataset)))]
        injector(collator([{**s, 'prefix_room': s.get('prefix_room')} for s in samples]))
    return injector.stats.dropped_tokens


def pack(documents: Path, out: Path, max_seq_len: int, how: str) -> tuple[dict, float]:
    from meco_callbacks.corpus.packing.packing import pack_documents

    options = {'a': {}, 'b': {'reserve_prefix': ['domain']}, 'c': {'reserve_prefix': ['domain'], 'strategy': 'bfd'}}
    start = time.perf_counter()
    stats = pack_documents(documents, out, max_seq_len, progress=False, overwrite=True, **options[how])
    return stats, time.perf_counter() - start


def main() -> None:
    logging.getLogger('meco_callbacks').setLevel(logging.ERROR)  # the packer logs a summary per run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tokens', type=int, default=24_000_000, help='tokens of the DCLM-like set')
    parser.add_argument('--short-tokens', type=int, default=3_000_000, help='tokens of the short-document set')
    parser.add_argument('--smoke', action='store_true', help='the tiniest run that exercises the code (tests)')
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.short_tokens = 200_000, 20_000

    from transformers import AutoTokenizer

    from meco_callbacks.tokenizer.training import train_bpe_tokenizer

    work = scratch_dir()
    text = [f'URL: {w}{k}.example-site.com\n\nwords of page {k} about {w}' for k in range(300) for w in ('news', 'a')]
    tokenizer = AutoTokenizer.from_pretrained(str(train_bpe_tokenizer(text, work / 'tokenizer', vocab_size=VOCAB)))
    rng = np.random.default_rng(0)
    # DCLM-baseline documents: log-normal, median ~550 tokens, mean ~1,200 (sigma 1.25), at least 8 tokens.
    web = np.maximum(rng.lognormal(np.log(550), 1.25, args.tokens // 1200), 8).astype(np.int64)
    short = np.maximum(rng.normal(35, 10, args.short_tokens // 35), 5).astype(np.int64)
    sets = {
        f'DCLM-like (log-normal, mean {web.mean():.0f})': document_set(work / 'web', web, tokenizer, 1),
        f'short documents (mean {short.mean():.0f})': document_set(work / 'short', short, tokenizer, 2),
    }
    print(
        f'{"set":<34} {"row":>5} {"packing":<16} {"dropped":>8} {"room":>7} {"padding":>8} {"split docs":>10} {"tokens/s":>10}'
    )
    speeds: dict[str, float] = {}
    for name, documents in sets.items():
        for max_seq_len in (2048, 8192):
            for how, label in (('a', '(a) no room'), ('b', '(b) room'), ('c', '(c) bfd + room')):
                out = work / f'packed-{how}'
                rounds = 3 if name.startswith('DCLM') and max_seq_len == 8192 else 1
                best = None
                for _ in range(rounds):
                    stats, seconds = pack(documents, out, max_seq_len, how)
                    best = seconds if best is None else min(best, seconds)
                stream = stats['document_tokens'] + stats['special_tokens']
                speed = stream / best
                if rounds == 3:
                    speeds[how] = speed
                dropped = dropped_by_injection(out, tokenizer, max_seq_len) + stats['tokens_dropped']
                split = stats.get('documents_split', stats['continued_segments'])
                print(
                    f'{name:<34} {max_seq_len:>5} {label:<16} {100 * dropped / stream:>7.2f}% '
                    f'{100 * stats.get("reserved_tokens", 0) / stats["tokens"]:>6.2f}% '
                    f'{100 * stats.get("padding_tokens", 0) / stats["tokens"]:>7.2f}% {split:>10} {speed:>10.3g}'
                )
    print('dropped: document tokens the loader drops (kind domain) + tokens left out at packing, over all tokens;')
    print('room: slots reserved for prefixes (padding in the baseline and the cooldown); padding: slots MeCo leaves')
    print('unused; split docs: documents cut across rows; tokens/s: document tokens (with BOS/EOS), one worker.')
    print(f'packing tokens/s (c)/(a), DCLM-like at 8192: {speeds["c"] / speeds["a"]:.2f}')


if __name__ == '__main__':
    main()
