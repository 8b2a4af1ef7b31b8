"""`composer train.py yamls/meco-1b.yaml [key=value ...]`: the same as recipes/train.py, from the repository root."""

from meco_callbacks.cli.train import main

if __name__ == '__main__':
    main()
