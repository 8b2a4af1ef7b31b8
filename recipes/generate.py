"""`python recipes/generate.py ...` (also installed as `meco-generate`): see ``meco_callbacks.cli.generate`` or run with ``--help``."""

import sys

from meco_callbacks.cli.generate import main

if __name__ == '__main__':
    sys.exit(main())
