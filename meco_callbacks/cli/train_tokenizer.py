"""Train a byte-level BPE tokenizer on your own corpus, for users without the model hub.

A thin command line over ``meco_callbacks.tokenizer.training.train_tokenizer_on_corpus``; run with ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from meco_callbacks.data.metadata import DEFAULT_TEMPLATE

DESCRIPTION = """\
Train a byte-level BPE tokenizer (GPT-2 style: byte-level tokens, the GPT-2 splitting regex, <|endoftext|> as
EOS) on a corpus and save it as a Hugging Face tokenizer directory, for --tokenizer of the other commands.

Inputs are read as convert/documents.py reads them (JSON Lines, .gz/.zst, JSON arrays, Parquet, Hugging Face
save_to_disk directories, MDS with text), through the same readers, taking --text-field. At most
--max-megabytes of text is read, an even share from every part of the corpus (not just its first files).

A corpus too small or too repetitive for --vocab-size gives fewer tokens: the command says so (a warning, and
"shortfall" in the JSON summary printed at the end, beside vocab_size_requested and vocab_size). Use the
tokenizer's real size for the model (llm-foundry takes len(tokenizer)).

MeCo prefixes: --prefix-kind KIND (repeatable; the loader's metadata kinds: domain, url, registered_domain,
hash, column:<name>, constant:<text>) trains on each sampled document behind its prefix, --template with the
metadata of KIND from the record's URL (--url-field), so that frequent prefixes become few tokens. The summary's
"prefixes" gives, per kind, the mean prefix tokens over the sample and what the 10 most frequent sites' prefixes
cost. The GPT-2 splitting regex still cuts a prefix at spaces and punctuation: URL: news.example.com\n\n is at
best 8 tokens (URL : news . example . com \n\n); for one token per site use the compact kind.

--metadata-tokens N adds N special tokens <|meta_0|> ... <|meta_{N-1}|> (counted in --vocab-size, never produced
from text), the reserved tokens of metadata kind compact (meco-pack --reserve-prefix compact): 256 is a good
size (192 frequent sites get a token each, the rest share 64 hash buckets).
"""

EPILOG = """\
example:
  python convert/train_tokenizer.py 'docs/*.jsonl' --vocab-size 8192 --output tokenizers/docs-8k
  python convert/documents.py 'docs/*.jsonl' --output data/docs --tokenizer tokenizers/docs-8k
  # for MeCo: learn the prefixes of kind domain, and reserve 256 tokens for kind compact
  python convert/train_tokenizer.py 'docs/*.jsonl' --vocab-size 8192 --output tokenizers/docs-8k-meco \\
      --prefix-kind domain --metadata-tokens 256
"""


def _unescape(text: str) -> str:
    """A template typed on a command line: ``URL: {}\\n\\n`` becomes ``URL: {}`` and two newlines (as meco-pack)."""
    return text.encode('latin-1', 'backslashreplace').decode('unicode_escape')


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
    parser.add_argument(
        '--prefix-kind',
        action='append',
        default=[],
        metavar='KIND',
        help='learn the MeCo prefixes of this metadata kind (repeatable): each document is trained on behind '
        'template.format(metadata)',
    )
    parser.add_argument(
        '--template',
        default=DEFAULT_TEMPLATE,
        type=_unescape,
        help='prefix template with one {} for --prefix-kind (backslash escapes read; default: %(default)r)',
    )
    parser.add_argument('--url-field', default='url', help='field holding the URL, dotted for nesting (default url)')
    parser.add_argument(
        '--metadata-tokens',
        type=int,
        default=0,
        metavar='N',
        help='add N reserved special tokens <|meta_K|> for metadata kind compact (default 0; 256 recommended)',
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
    if args.metadata_tokens < 0:
        print(f'error: --metadata-tokens must be 0 or more, got {args.metadata_tokens}', file=sys.stderr)
        return 2
    if args.vocab_size <= 257 + args.metadata_tokens:
        print(
            f'error: --vocab-size must exceed the 256 byte tokens, EOS and the {args.metadata_tokens} metadata tokens,'
            f' got {args.vocab_size}',
            file=sys.stderr,
        )
        return 2
    try:
        summary = train_tokenizer_on_corpus(
            args.inputs,
            output,
            args.vocab_size,
            text_field=args.text_field,
            max_bytes=max(1, int(args.max_megabytes * (1 << 20))),
            metadata_tokens=args.metadata_tokens,
            prefix_kinds=args.prefix_kind,
            template=args.template,
            url_field=args.url_field,
        )
    except (ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
