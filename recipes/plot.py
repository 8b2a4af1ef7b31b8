"""`python recipes/plot.py RUN [RUN ...] --output loss.png` (also installed as `meco-plot`): see ``meco_callbacks.cli.plot`` or run with ``--help``."""

import sys

from meco_callbacks.cli.plot import main

if __name__ == '__main__':
    sys.exit(main())
