"""`python recipes/url_search.py ...` (also installed as `meco-url-search`): see ``meco_callbacks.cli.url_search`` or run with ``--help``."""

import sys

from meco_callbacks.cli.url_search import main

if __name__ == '__main__':
    sys.exit(main())
