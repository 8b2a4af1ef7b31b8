"""`python recipes/export.py ...` (also installed as `meco-export`): see ``meco_callbacks.cli.export`` or run with ``--help``."""

import sys

from meco_callbacks.cli.export import main

if __name__ == '__main__':
    sys.exit(main())
