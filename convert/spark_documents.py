"""`python convert/spark_documents.py ...` (also installed as `meco-spark-convert`): see ``meco_callbacks.cli.spark_documents`` or run with ``--help``."""

import sys

from meco_callbacks.cli.spark_documents import main

if __name__ == '__main__':
    sys.exit(main())
