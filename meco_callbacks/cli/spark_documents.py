"""Convert raw corpora (JSON Lines, Parquet) into a MeCo document MDS with Spark, on one machine or a cluster.

A thin command line over ``meco_callbacks.corpus.spark_conversion.convert_documents_on_spark``; run with ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

DESCRIPTION = """\
Tokenize a corpus once into a document MDS with Spark: the dataset convert/documents.py writes (one row per
document: input_ids uint32 without BOS/EOS, length, url, --metadata-fields), the same skip reasons and counts
(documents read = written + skipped, in meco_dataset.json with the tokenizer's fingerprint and backend).

Spark reads the inputs, so they may be local paths or anything its Hadoop client reaches (s3a://, gs://,
abfss://, dbfs:/):
  .jsonl .ndjson                     plain JSON Lines, split into tasks line-wise
  .json, .gz, .zst (e.g. .jsonl.zst)  read whole per task (a .json file may hold one array)
  .parquet                           Parquet, split by row groups
Hugging Face save_to_disk and MDS directories: use convert/documents.py.

Each Spark task checks and tokenizes its partition with the backend verified on the driver (--tokenizer-backend)
and writes its own MDS part under OUTPUT.spark-partial; the parts are joined in partition order and renamed to
OUTPUT when all are done. A killed run starts over when run again. OUTPUT must be a path the driver and every
executor see (a local disk with local[N]; /dbfs/..., /Volumes/... or another shared mount on a cluster).
Rows are the same as convert/documents.py's as a set; their order is Spark's partition order.

Needs a Java runtime (8, 11 or 17): apt-get install openjdk-17-jre-headless.
"""

EPILOG = """\
examples:
  # one machine, 16 cores
  python convert/spark_documents.py 'data/raw/*.jsonl' --output data/docs --tokenizer gpt2 --master 'local[16]'
  # a cluster: DCLM-baseline shards in S3, the dataset on a shared mount
  spark-submit --master yarn convert/spark_documents.py 's3a://bucket/dclm/global-shard_01_of_10/*/*.jsonl.zst' \\
      --output /dbfs/meco/dclm-docs --tokenizer meta-llama/Meta-Llama-3-8B
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: convert/documents.py's output, tokenizer, field and policy options, plus Spark's."""
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('inputs', nargs='+', help='files or globs (quote them) that Spark can read')
    parser.add_argument('--output', required=True, help='document MDS directory to create (seen by every executor)')
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
    parser.add_argument(
        '--master', default=None, help="Spark master, e.g. 'local[8]' (default: spark-submit's, else local[*])"
    )
    parser.add_argument(
        '--partitions',
        type=int,
        default=None,
        help='ask Spark for at least this many tasks over splittable inputs (plain JSON Lines, Parquet row groups)',
    )
    parser.add_argument(
        '--overwrite', action='store_true', help='replace a different dataset at --output once the new one is complete'
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert and print the dataset info as JSON; exit 2 with the reason when Java, the input or the output is refused."""
    started = time.perf_counter()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from meco_callbacks.corpus.document_checks import DocumentPolicy
    from meco_callbacks.corpus.errors import ConversionError
    from meco_callbacks.corpus.sources import FieldMapping
    from meco_callbacks.corpus.spark_conversion import convert_documents_on_spark, require_java, spark_session

    try:
        require_java()  # before anything slow: a missing Java is the likeliest first failure
        fields = FieldMapping(
            args.text_field, args.url_field, tuple(name for name in args.metadata_fields.split(',') if name)
        )
        policy = DocumentPolicy(
            args.missing_url, args.placeholder_url, args.max_url_chars, args.max_document_chars, args.url_spaces
        )
        if args.partitions is not None and args.partitions < 1:
            raise ValueError(f'--partitions must be at least 1, got {args.partitions}')
        report = convert_documents_on_spark(
            args.inputs,
            args.output,
            args.tokenizer,
            spark=spark_session(args.master),
            fields=fields,
            policy=policy,
            tokenizer_backend=args.tokenizer_backend,
            partitions=args.partitions,
            overwrite=args.overwrite,
            started=started,
        )
    except (ValueError, OSError, ConversionError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(json.dumps(report.info, indent=2))
    return 0
