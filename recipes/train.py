"""`composer recipes/train.py YAML [key=value ...]` (also `meco-train`): see ``meco_callbacks.cli.train``."""

from meco_callbacks.cli.train import main

if __name__ == '__main__':
    main()
