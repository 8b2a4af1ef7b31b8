"""Train a byte-level BPE tokenizer on your own corpus, for users without the model hub.

A thin command line over ``meco_callbacks.tokenizer.training.train_tokenizer_on_corpus``; run with ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
Train a byte-level BPE tokenizer (GPT-2 style: byte-level tokens, the GPT-2 splitting regex, <|endoftext|> as
EOS) on a corpus and save it as a Hugging Face tokenizer directory, for --tokenizer of the other commands.

Inputs are read as convert/documents.py reads them (JSON Lines, .gz/.zst, JSON arrays, Parquet, Hugging Face
save_to_disk directories, MDS with text), through the same readers, taking --text-field. At most
--max-megabytes of text is read, an even share from every part of the corpus (not just its first files).

A corpus too small or too repetitive for --vocab-size gives fewer tokens: the command says so (a warning, and
"shortfall" in the JSON summary printed at the end, beside vocab_size_requested and vocab_size). Use the
tokenizer's real size for the model (llm-foundry takes len(tokenizer)).
"""

EPILOG = """\
example:
  python convert/train_tokenizer.py 'docs/*.jsonl' --vocab-size 8192 --output tokenizers/docs-8k
  python convert/documents.py 'docs/*.jsonl' --output data/docs --tokenizer tokenizers/docs-8k
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: inputs, vocabulary size, output directory, text field and sample size."""
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('inputs', nargs='+', help='files, globs (quote them) or dataset directories')
    parser.add_argument('--vocab-size', type=int, required=True, help='tokens wanted, the 256 bytes and EOS included')
    parser.add_argument('--output', required=True, help='directory to save the tokenizer in')
    parser.add_argument(
        '--text-field', default='text', help='field holding the text, dotted for nesting (default text)'
    )
    parser.add_argument(
        '--max-megabytes',
        type=float,
        default=64,
        help='text to train on at most, in MB (default 64: about a minute or two on a few cores)',
    )
    parser.add_argument('--overwrite', action='store_true', help='replace a tokenizer already at --output')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, then print the summary as JSON; exit 2 with the reason when the inputs or the output are refused."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from meco_callbacks.tokenizer.training import train_tokenizer_on_corpus

    output = Path(args.output)
    if (output / 'tokenizer.json').exists() and not args.overwrite:
        print(f'error: {output} already holds a tokenizer; pass --overwrite to replace it', file=sys.stderr)
        return 2
    if args.vocab_size <= 257:
        print(f'error: --vocab-size must exceed the 256 byte tokens and EOS, got {args.vocab_size}', file=sys.stderr)
        return 2
    try:
        summary = train_tokenizer_on_corpus(
            args.inputs,
            output,
            args.vocab_size,
            text_field=args.text_field,
            max_bytes=max(1, int(args.max_megabytes * (1 << 20))),
        )
    except (ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
