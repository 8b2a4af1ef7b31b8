"""Convert raw corpora (JSON Lines, Parquet) into a MeCo document MDS with Spark, on one machine or a cluster.

A thin command line over ``meco_callbacks.corpus.documents.spark_conversion.convert_documents_on_spark``; run with ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from meco_callbacks.cli.documents import add_document_options, fields_and_policy

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

Inputs on the local filesystem (paths on a local[N] master, file:, mounts such as /dbfs/...) are cut into
convert/documents.py's units, and each Spark task reads and converts one unit itself, as a local worker does
(no record crosses from the JVM); inputs only Spark reaches are read by Spark and handed to the tasks. Each task
checks and tokenizes with the backend verified on the driver (--tokenizer-backend) and writes its own MDS part
under OUTPUT.spark-partial; the parts are joined in order and renamed to OUTPUT when all are done. A killed run starts over when run again. OUTPUT must be a path the driver and every
executor see (a local disk with local[N]; /dbfs/..., /Volumes/... or another shared mount on a cluster);
--remote s3://... then uploads the finished dataset through Streaming's uploader, each part's counts, the index
and meco_dataset.json last (a rerun uploads only what is missing).
Rows are convert/documents.py's, in its order for local inputs; Spark-read ones follow in Spark's partition order.

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
    parser.add_argument(
        '--remote',
        default=None,
        help='object storage to upload the finished dataset to (s3://, gs://, oci://, ...), index and info last',
    )
    add_document_options(parser)
    parser.add_argument(
        '--master', default=None, help="Spark master, e.g. 'local[8]' (default: spark-submit's, else local[*])"
    )
    parser.add_argument(
        '--partitions',
        type=int,
        default=None,
        help='ask Spark for at least this many tasks over the splittable inputs it reads (JSON Lines, Parquet)',
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
    from meco_callbacks.corpus.documents.spark_conversion import convert_documents_on_spark, require_java, spark_session
    from meco_callbacks.corpus.storage.errors import ConversionError

    try:
        require_java()  # before anything slow: a missing Java is the likeliest first failure
        fields, policy = fields_and_policy(args)
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
            remote=args.remote,
            started=started,
        )
    except (ValueError, OSError, ConversionError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(json.dumps(report.info, indent=2))
    return 0
