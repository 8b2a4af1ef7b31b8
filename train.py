"""`composer train.py yamls/meco-1b.yaml [key=value ...]`: hands over to recipes/train.py."""

from recipes.train import main

if __name__ == '__main__':
    main()
