"""`python convert/documents.py ...` (also installed as `meco-convert`): see ``meco_callbacks.cli.documents`` or run with ``--help``."""

import sys

from meco_callbacks.cli.documents import main

if __name__ == '__main__':
    sys.exit(main())
