"""`python convert/train_tokenizer.py ...` (also installed as `meco-train-tokenizer`): see ``meco_callbacks.cli.train_tokenizer`` or run with ``--help``."""

import sys

from meco_callbacks.cli.train_tokenizer import main

if __name__ == '__main__':
    sys.exit(main())
