"""Pack a document MDS (convert/documents.py, or the MeCo authors' release) into training rows.

A thin command line over ``meco_callbacks.corpus.packing.pack_documents``; run with ``--help`` for the row layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = """\
Pack a document MDS into a packed MDS whose rows hold exactly --max-seq-len document tokens.

Row layout: documents are laid end to end in dataset order, each written as

    [BOS] document-tokens EOS

EOS always ends a document. BOS starts one only when the tokenizer itself adds a BOS to encoded text
(Llama-3's <|begin_of_text|> does; GPT-2-style tokenizers do not), so packed rows look like what the
tokenizer produces. The stream is cut every --max-seq-len tokens: a document longer than the rest of a
row continues in the next row(s), where its segment is marked as continued. Each row stores
input_ids, segment_lengths (summing to --max-seq-len), continued (1 when its first segment continues a
document), urls (one per segment) and metadata (the extra columns, one dict per segment). A continued
segment repeats its document's URL and metadata, so the loader can give it its prefix again. The last
partial row is dropped and counted. Empty documents, and documents whose length column disagrees with
their input_ids, are counted skips; a token id outside the tokenizer's vocabulary is an error.

The MeCo URL prefix is not written here: the training loader inserts it, so one packed dataset serves the
baseline, MeCo and every metadata ablation. The stats (rows, tokens, documents, segments, continued
segments, tokens dropped, skips by reason) go to meco_dataset.json beside index.json.
"""

EPILOG = """\
examples:
  python convert/pack.py data/dclm-docs data/dclm-packed-8k --max-seq-len 8192 --num-workers 8
  python convert/pack.py meco-release/ data/meco-packed --max-seq-len 8192 \\
      --tokenizer meta-llama/Meta-Llama-3-8B     # release data carries no tokenizer record
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: documents in, packed rows out."""
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('documents', help='document MDS directory (with index.json)')
    parser.add_argument('out', help='packed MDS directory to create (written beside it, then renamed)')
    parser.add_argument('--max-seq-len', type=int, required=True, help='tokens per row, e.g. 8192')
    parser.add_argument(
        '--tokenizer',
        default=None,
        help='tokenizer path or hub name; required when the documents have no meco_dataset.json '
        '(e.g. the MeCo release), else checked against the recorded fingerprint',
    )
    parser.add_argument(
        '--num-workers',
        type=int,
        default=1,
        help='processes that read documents and write rows; the output is byte-identical for any number (default 1)',
    )
    parser.add_argument(
        '--metadata-columns',
        default=None,
        help='comma-separated extra columns to carry per segment (default: all extra columns; '
        'an empty string carries none)',
    )
    parser.add_argument('--compression', default=None, help='shard compression, e.g. zstd (default: none)')
    parser.add_argument('--overwrite', action='store_true', help='replace an output directory holding another dataset')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Pack, print the stats as JSON; exit 2 with the reason on bad input."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from meco_callbacks.corpus.packing import pack_documents

    columns = None if args.metadata_columns is None else [c for c in args.metadata_columns.split(',') if c]
    try:
        stats = pack_documents(
            args.documents,
            args.out,
            args.max_seq_len,
            tokenizer=args.tokenizer,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            metadata_columns=columns,
            compression=args.compression,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2))
    return 0
