"""``composer -n N tests/train_recorded.py YAML [overrides]``: recipes/train.py with the batch recorder registered."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recorder import register  # noqa: E402

from meco_callbacks.cli.train import main  # noqa: E402

if __name__ == '__main__':
    register()
    main()
