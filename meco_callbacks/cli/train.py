"""Train with llm-foundry's trainer; MeCo's components are found through llm-foundry's entry points.

Usage:  composer recipes/train.py YAML [key=value ...]
        (or, from the repository root, the same as: composer train.py YAML [key=value ...])

Overrides are OmegaConf dotted keys merged over the YAML, exactly as llm-foundry's scripts/train/train.py
takes them, e.g. ``max_duration=100ba train_loader.dataset.local=/data/packed variables.cooldown=0.2``.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> None:
    """Parse ``YAML [overrides]`` and hand over to llm-foundry's ``train_from_yaml``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    from llmfoundry.command_utils import train_from_yaml

    # llm-foundry sets levels only for its own and Composer's loggers; MeCo's (phase switch, checks) are INFO.
    logging.getLogger('meco_callbacks').setLevel(logging.INFO)
    train_from_yaml(argv[0], argv[1:])
