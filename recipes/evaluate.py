"""`python recipes/evaluate.py ...` (also installed as `meco-eval`): see ``meco_callbacks.cli.evaluate`` or run with ``--help``."""

import sys

from meco_callbacks.cli.evaluate import main

if __name__ == '__main__':
    sys.exit(main())
