"""Pack a document MDS (convert/documents.py, or the MeCo authors' release) into training rows.

A thin command line over ``meco_callbacks.corpus.packing.packing.pack_documents``; run with ``--help`` for the row layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.corpus.packing.row_planning import STRATEGIES
from meco_callbacks.corpus.storage.remote import is_remote
from meco_callbacks.data.metadata import DEFAULT_TEMPLATE

DESCRIPTION = """\
Pack a document MDS into training rows of --max-seq-len slots.

Each document is written as [BOS] document-tokens EOS. EOS always ends a document;
BOS starts one only when the tokenizer itself adds a BOS to encoded text (Llama-3's <|begin_of_text|>
does; GPT-2-style tokenizers do not). Each row stores input_ids, segment_lengths (summing to --max-seq-len)
in rows without room, or with prefix_room (their sum with segment_lengths at most --max-seq-len) in rows
with room, continued (1 when its first segment continues a document from the previous row), urls and
metadata (the extra columns, one dict per segment). The MeCo prefix ("URL: <domain>\\n\\n") is not written here: the training loader inserts it, so one
packed set serves the baseline, MeCo and its ablations.

Prefix room (--reserve-prefix KIND [KIND ...], recommended for MeCo): each segment gets as many slots as its
longest prefix among the named kinds takes with this tokenizer and --template, stored as prefix_room. The
loader fills the room with the prefix and drops no document token; the baseline and the cooldown read the
same rows with the room as padding (no loss, not attended), so MeCo and the baseline train on exactly the
same document tokens. A segment always has a document token after its room, a cut document leaves at least
two tokens to its continuation, and a continued segment gets its room (and its prefix) again. Without
--reserve-prefix rows hold exactly --max-seq-len document tokens and each injected prefix token pushes a
document token off its row (the same ones every pass).

Strategies: stream (documents in order, cut at row ends) or bfd (best-fit-decreasing, Ding et al. 2024:
documents placed whole, longest first, into the open row with the least room that holds them, within each
window (about 32 MB of document shards, or --window-documents documents); only documents longer than a row
are cut; leftovers are padding).
With room or bfd each window is packed on its own, so the last row of a window is padded. The output is
byte-identical for any --num-workers. Empty documents, and documents whose length column disagrees with
their input_ids, are counted skips; a token id outside the tokenizer's vocabulary is an error. The stats
(rows, tokens, documents, segments, continued and split documents, room, padding, skips by reason) go to
meco_dataset.json beside index.json, with the reservation the loader checks at start.

Object storage: DOCUMENTS and OUT may be URLs (s3://, gs://, oci://, azure://, ... as Streaming reads and writes
them). Document shards are downloaded one at a time as packing reaches them (into --cache-dir); each finished
part is uploaded at once, and index.json then meco_dataset.json last, so a reader never sees a partial set.

Parts and resuming: each window is packed into its own part (OUT/part.00000/ ...), renamed into place when
complete (on object storage: uploaded, its part.json last), so a rerun of an interrupted command packs only
the missing parts and never touches finished ones. --part I/N packs only the I-th of N blocks of windows, so N
machines can share the work; the run that finds every part finished joins them (writes index.json), or run the
command without --part afterwards to pack what is missing and join. The output is byte-identical for any
split, any --num-workers and any number of interruptions.
"""

EPILOG = """\
examples:
  python convert/pack.py data/dclm-docs data/dclm-packed-8k --max-seq-len 8192 --reserve-prefix domain \\
      --strategy bfd --num-workers 8
  python convert/pack.py data/dclm-docs data/dclm-packed-8k --max-seq-len 8192 --num-workers 8
  python convert/pack.py meco-release/ data/meco-packed --max-seq-len 8192 \\
      --tokenizer meta-llama/Meta-Llama-3-8B     # release data carries no tokenizer record
  # on 8 machines (I = 0..7), from and to object storage; the last part to finish joins
  python convert/pack.py s3://bucket/dclm-docs s3://bucket/dclm-packed-8k --max-seq-len 8192 \\
      --reserve-prefix domain --strategy bfd --num-workers 16 --part $I/8 --cache-dir /local/nvme/dclm-docs
"""


def _unescape(text: str) -> str:
    """A template typed on a command line: ``URL: {}\\n\\n`` becomes ``URL: {}`` and two newlines."""
    return text.encode('latin-1', 'backslashreplace').decode('unicode_escape')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: documents in, packed rows out."""
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('documents', help='document MDS directory (with index.json), or its URL (s3://..., gs://...)')
    parser.add_argument(
        'out',
        help='packed MDS directory to create (parts kept in OUT.packing until joined, then renamed), or a URL',
    )
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
        help='processes that read documents and write rows; the output is byte-identical for any number (default 1). '
        'Each window (about 32 MB of document shards, or a compressed shard) is one task, so workers help when there '
        'are several windows per worker (on 43M tokens at rows of 128, 2 workers packed 1.9-2.0x faster than 1)',
    )
    parser.add_argument(
        '--metadata-columns',
        default=None,
        help='comma-separated extra columns to carry per segment (default: all extra columns; '
        'an empty string carries none)',
    )
    parser.add_argument(
        '--reserve-prefix',
        nargs='+',
        metavar='KIND',
        default=None,
        help="metadata kinds to reserve prefix room for, as the loader's metadata.kind (domain, url, "
        'registered_domain, hash, compact, column:<name>, bins:<column>, constant:<text>); the room is the longest of their '
        'prefixes (a suffix, metadata.position: suffix, uses the same room)',
    )
    parser.add_argument(
        '--bins',
        default=None,
        metavar='SPEC',
        help="bin edges of a bins:<column> kind: quantiles:N (the column's N-quantiles over all documents, "
        'recorded in meco_dataset.json for metadata.quantiles: N) or E1,E2,... (as metadata.bins)',
    )
    parser.add_argument(
        '--compact-buckets',
        type=int,
        default=None,
        metavar='B',
        help='hash buckets of the compact kind (--reserve-prefix compact): the most frequent sites get one of the '
        "tokenizer's reserved special tokens each, the other sites share the last B of them by a hash of the site; "
        'recorded in meco_dataset.json (default: 64, or a quarter of the reserved tokens when fewer than 256)',
    )
    parser.add_argument(
        '--template',
        default=DEFAULT_TEMPLATE,
        type=_unescape,
        help='prefix template with one {} (backslash escapes such as \\n are read; default: %(default)r)',
    )
    parser.add_argument(
        '--strategy', choices=STRATEGIES, default='stream', help='stream (default) or bfd (best-fit-decreasing)'
    )
    parser.add_argument(
        '--window-documents',
        type=int,
        default=None,
        help='documents per unit of work; with room or bfd also the window packed on its own (default: as many as '
        'fill about 32 MB of the document shards, ~8M tokens)',
    )
    parser.add_argument(
        '--holdout',
        type=float,
        default=0.0,
        metavar='FRACTION',
        help='hold out about this fraction of documents (e.g. 0.01), chosen by a SHA-256 hash of their URL, in '
        'OUT/heldout and pack the rest in OUT/train; the same URL always lands on the same side',
    )
    parser.add_argument(
        '--part',
        default=None,
        metavar='I/N',
        help='pack only the I-th (from 0) of N contiguous blocks of windows, e.g. 3/8 on the fourth of 8 machines; '
        'finished parts are reused and the run that completes the set joins it (default: every part, then join)',
    )
    parser.add_argument(
        '--cache-dir',
        default=None,
        help='with DOCUMENTS on object storage: local directory its shards are downloaded under, kept for reruns '
        '(default: a temporary directory, removed at the end)',
    )
    parser.add_argument(
        '--cache-limit',
        default=None,
        help='with DOCUMENTS on object storage: most disk its local cache may use (e.g. 20GB); shards are evicted '
        'once no later window reads them, and the peak use is logged (default: no limit, every shard kept)',
    )
    parser.add_argument(
        '--local-dir',
        default=None,
        help='with OUT on object storage: local directory parts are written under before their upload, kept only '
        'until uploaded (default: a temporary directory)',
    )
    parser.add_argument('--compression', default=None, help='shard compression, e.g. zstd (default: none)')
    parser.add_argument('--overwrite', action='store_true', help='replace an output directory holding another dataset')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Pack, print the stats as JSON; exit 2 with the reason on bad input."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    columns = None if args.metadata_columns is None else [c for c in args.metadata_columns.split(',') if c]
    scratch = tempfile.TemporaryDirectory(prefix='meco-pack-')
    documents, documents_remote = _local_side(args.documents, args.cache_dir, Path(scratch.name) / 'documents')
    out, remote = _local_side(args.out, args.local_dir, Path(scratch.name) / 'out')
    try:
        stats = pack_documents(
            documents,
            out,
            args.max_seq_len,
            tokenizer=args.tokenizer,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            metadata_columns=columns,
            compression=args.compression,
            documents_per_task=args.window_documents,
            reserve_prefix=args.reserve_prefix,
            template=args.template,
            strategy=args.strategy,
            holdout=args.holdout,
            documents_remote=documents_remote,
            remote=remote,
            part=args.part,
            bins=args.bins,
            compact_buckets=args.compact_buckets,
            cache_limit=args.cache_limit,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    finally:
        scratch.cleanup()
    print(json.dumps(stats, indent=2))
    return 0


def _local_side(path: str, local: str | None, default: Path) -> tuple[str, str | None]:
    """A directory argument as Streaming's ``(local, remote)``: a URL gets ``local`` (or ``default``) as its local side."""
    if not is_remote(path):
        return path, None
    return str(Path(local or default) / Path(path.rstrip('/')).name), path
