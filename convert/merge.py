"""`python convert/merge.py ...` (also installed as `meco-merge`): see ``meco_callbacks.cli.merge`` or run with ``--help``."""

import sys

from meco_callbacks.cli.merge import main

if __name__ == '__main__':
    sys.exit(main())
