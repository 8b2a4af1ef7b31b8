"""`python convert/pack.py ...` (also installed as `meco-pack`): see ``meco_callbacks.cli.pack`` or run with ``--help``."""

import sys

from meco_callbacks.cli.pack import main

if __name__ == '__main__':
    sys.exit(main())
