"""Convert raw corpora (JSON Lines, Parquet, Hugging Face datasets, MDS) into a MeCo document MDS.

A thin command line over ``meco_callbacks.corpus.documents.conversion.convert_documents``; run with ``--help`` for details.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

DESCRIPTION = """\
Tokenize a corpus once into a document MDS: one row per document with input_ids (uint32, no BOS/EOS),
length, url and any --metadata-fields, the format the MeCo authors released (convert/pack.py packs it).

Inputs (any number of files, globs and directories, converted in the order given, globs sorted):
  .jsonl .json .ndjson (optionally .gz or .zst)   JSON Lines; a .json file holding one array also works
  .parquet                                        Parquet
  a save_to_disk directory (state.json)           Hugging Face datasets (one split)
  an MDS directory (index.json)                   text + URL columns, or the MeCo release format
                                                  (input_ids uint32/int32, url, length): tokens kept as is

Bad records are skipped and counted by reason (documents read = written + skipped): malformed JSON,
invalid UTF-8, no text, non-string or empty text, text over --max-document-chars, a missing/empty/non-string
URL (or kept with --placeholder-url under --missing-url placeholder), a URL with line breaks, tabs or other
whitespace, control characters or over --max-url-chars. Spaces in a URL are written as %20 and counted
(--url-spaces skip drops such documents instead). Files that cannot be read are counted per file. The counts,
the tokenizer's fingerprint and the backend used go to meco_dataset.json beside index.json.

Tokenization: document text always stays text (a literal <|endoftext|> never becomes the EOS id).
--tokenizer-backend auto runs tiktoken when it reproduces the Hugging Face ids exactly, checked on built-in
hard strings and a sample of this input, else the Hugging Face tokenizer (the reason is logged and recorded).

Work is cut into units of at most --unit-mb of input (1/64 of a small input, at least 1 MB; a compressed
or JSON-array file is one unit). Each unit is written under OUTPUT.partial and renamed when done, so an
interrupted run resumes when run again with the same arguments, and any --num-workers or job split gives
byte-identical output. OUTPUT.partial is renamed to OUTPUT at the end.

Object storage: with --remote s3://bucket/path (or gs://, oci://, azure://, ... as Streaming writes them), each
unit is uploaded as soon as it is finished, and index.json then meco_dataset.json last, so a reader never sees a
partial set. --output stays the local side: it keeps the finished units a rerun resumes from.
"""

EPILOG = """\
examples:
  # DCLM-baseline shards: text and url at the top level
  python convert/documents.py 'dclm-baseline/global-shard_01_of_10/**/*.jsonl.zst' --output data/dclm-docs \\
      --tokenizer meta-llama/Meta-Llama-3-8B --num-workers 16
  # FineWeb Parquet, two extra columns carried along
  python convert/documents.py 'fineweb/data/CC-MAIN-2024-10/*.parquet' --output data/fineweb-docs \\
      --tokenizer meta-llama/Meta-Llama-3-8B --metadata-fields dump,language_score
  # Dolma-style JSON Lines with the URL nested under metadata
  python convert/documents.py 'dolma/c4-*.json.gz' --output data/dolma-c4-docs --tokenizer gpt2 \\
      --url-field metadata.url --metadata-fields source
  # many machines: each runs its part, then one merges
  python convert/documents.py 'c4/*.json.gz' --output data/c4-docs --tokenizer gpt2 --job-index $I --num-jobs 8
  python convert/merge.py --output data/c4-docs
  # upload to object storage as units finish (data/dclm-docs keeps what a rerun resumes from)
  python convert/documents.py 'dclm-baseline/**/*.jsonl.zst' --output data/dclm-docs --remote s3://bucket/dclm-docs \\
      --tokenizer meta-llama/Meta-Llama-3-8B --num-workers 16
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: inputs, where to write, the tokenizer, field names, policies and parallelism."""
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('inputs', nargs='+', help='files, globs (quote them) or dataset directories')
    parser.add_argument('--output', required=True, help='document MDS directory to create (a local directory)')
    parser.add_argument(
        '--remote',
        default=None,
        help='object storage to upload the dataset to as it is written, e.g. s3://bucket/dclm-docs',
    )
    add_document_options(parser)
    parser.add_argument('--num-workers', type=int, default=1, help='worker processes (default 1)')
    parser.add_argument('--job-index', type=int, default=0, help="this machine's part, 0 .. --num-jobs - 1")
    parser.add_argument(
        '--num-jobs',
        type=int,
        default=1,
        help='split the units over this many jobs; merge with convert/merge.py when all are done',
    )
    parser.add_argument(
        '--unit-mb',
        type=float,
        default=64,
        help='largest unit of work in input megabytes; also the resume granularity (default 64)',
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace a different dataset at --output (once the new one is complete) and discard '
        'a different conversion in progress',
    )
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def add_document_options(parser: argparse.ArgumentParser) -> None:
    """The tokenizer, field and policy options, shared by convert/documents.py and convert/spark_documents.py."""
    parser.add_argument('--tokenizer', required=True, help='Hugging Face tokenizer: a local directory or a hub name')
    parser.add_argument(
        '--text-field', default='text', help='field holding the text, dotted for nesting (default text)'
    )
    parser.add_argument('--url-field', default='url', help='field holding the URL, e.g. metadata.url (default url)')
    parser.add_argument(
        '--metadata-fields',
        default='',
        help='comma-separated extra fields to carry as string columns, named by their last part',
    )
    parser.add_argument(
        '--missing-url',
        choices=('skip', 'placeholder'),
        default='skip',
        help='a document whose URL is missing, null, empty or not a string is skipped (default) '
        'or kept with --placeholder-url',
    )
    parser.add_argument(
        '--placeholder-url', default='', help="URL stored for such documents (default '': they get no metadata prefix)"
    )
    parser.add_argument(
        '--url-spaces',
        choices=('encode', 'skip'),
        default='encode',
        help="a URL's spaces are written as %%20, counted as urls_spaces_encoded (default), or the document is skipped",
    )
    parser.add_argument('--max-url-chars', type=int, default=2000, help='longer URLs are skipped (default 2000)')
    parser.add_argument(
        '--max-document-chars', type=int, default=16_000_000, help='longer texts are skipped (default 16,000,000)'
    )
    parser.add_argument(
        '--tokenizer-backend',
        choices=('auto', 'hf', 'tiktoken'),
        default='auto',
        help='auto: verified tiktoken, else Hugging Face (default); tiktoken: fail unless verified',
    )


def fields_and_policy(args: argparse.Namespace) -> tuple[Any, Any]:
    """The ``FieldMapping`` and ``DocumentPolicy`` the options of ``add_document_options`` ask for."""
    from meco_callbacks.corpus.documents.document_checks import DocumentPolicy
    from meco_callbacks.corpus.documents.sources import FieldMapping

    fields = FieldMapping(
        args.text_field, args.url_field, tuple(name for name in args.metadata_fields.split(',') if name)
    )
    policy = DocumentPolicy(
        args.missing_url, args.placeholder_url, args.max_url_chars, args.max_document_chars, args.url_spaces
    )
    return fields, policy


def main(argv: list[str] | None = None) -> int:
    """Convert and print the dataset info as JSON; exit 2 with the reason when the input or output is refused."""
    started = time.perf_counter()  # the run's figures count loading the libraries below
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from meco_callbacks.corpus.documents.conversion import convert_documents
    from meco_callbacks.corpus.storage.errors import ConversionError
    from meco_callbacks.corpus.storage.remote import is_remote

    if is_remote(args.output):
        print(
            f'error: --output {args.output} is object storage; write locally and upload with --remote, e.g. '
            f'--output data/docs --remote {args.output} (the local directory keeps what a rerun resumes from)',
            file=sys.stderr,
        )
        return 2
    try:
        fields, policy = fields_and_policy(args)
        report = convert_documents(
            args.inputs,
            args.output,
            args.tokenizer,
            fields=fields,
            policy=policy,
            tokenizer_backend=args.tokenizer_backend,
            num_workers=args.num_workers,
            job_index=args.job_index,
            num_jobs=args.num_jobs,
            unit_bytes=max(1, int(args.unit_mb * (1 << 20))),
            overwrite=args.overwrite,
            progress=not args.no_progress,
            started=started,
            remote=args.remote,
        )
    except (ValueError, OSError, ConversionError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f'interrupted: finished units are kept in {args.output}.partial; run the same command again to resume',
            file=sys.stderr,
        )
        return 130
    print(
        json.dumps(
            report.info
            if report.info is not None
            else {'part': args.job_index, 'of': args.num_jobs, 'units_converted': report.units_converted},
            indent=2,
        )
    )
    return 0
