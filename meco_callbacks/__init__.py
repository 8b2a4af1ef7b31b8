"""MeCo on the MosaicML stack: metadata conditioning then cooldown for LLM pre-training.

Importing this package is cheap and side-effect free: llm-foundry finds MeCo's components through the
``llmfoundry_*`` entry points declared in pyproject.toml and imports each module only when it is used.
"""

__version__ = '0.1.0'
