"""Loading a tokenizer by local directory or hub name, with an error that says what is wrong when there is none.

``AutoTokenizer.from_pretrained`` takes any string it cannot find on disk for a hub name, so a mistyped local
path fails with ``HFValidationError: Repo id must be in the form 'repo_name'...``, which names neither the path nor
the fix. Every MeCo command that takes a tokenizer (conversion, packing, training, evaluation) loads it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')
EXPECTED = (
    'a tokenizer directory holds tokenizer.json (a fast tokenizer) or tokenizer_config.json with its vocabulary '
    'files, as save_pretrained or meco-train-tokenizer writes them'
)


class TokenizerNotFound(FileNotFoundError):
    """No tokenizer is where the name or path points; the message says what was expected there."""


def check_tokenizer_location(name_or_path: str | os.PathLike[str]) -> None:
    """Refuse a local path that holds no tokenizer, before any library takes it for a hub name; hub names pass.

    For loaders that call ``from_pretrained`` themselves (llm-foundry's ``build_tokenizer``).
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        raise TokenizerNotFound(f'tokenizer {name!r} is a file, not a directory; {EXPECTED}')
    if path.is_dir():
        if not any((path / file).is_file() for file in TOKENIZER_FILES):
            present = sorted(entry.name for entry in path.iterdir())[:8]
            raise TokenizerNotFound(f'tokenizer directory {path} holds no tokenizer (it has {present}); {EXPECTED}')
        return
    if not _could_be_hub_name(name):
        raise TokenizerNotFound(
            f'tokenizer directory {path.absolute()} does not exist; {EXPECTED} '
            '(or name a Hugging Face hub tokenizer, e.g. meta-llama/Meta-Llama-3-8B)'
        )


def load_tokenizer(name_or_path: str | os.PathLike[str], *, require_fast: bool = False, **kwargs: Any) -> Any:
    """The Hugging Face tokenizer at a local directory or hub name; TokenizerNotFound says why there is none.

    ``kwargs`` go to ``AutoTokenizer.from_pretrained``. ``require_fast`` refuses a slow (Python) tokenizer with
    the way to make a fast one (conversion tokenizes with the Rust tokenizer or an equivalent tiktoken encoding).
    """
    from transformers import AutoTokenizer

    name = os.fspath(name_or_path)
    check_tokenizer_location(name)
    local = Path(name).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name, **kwargs)
    except OSError as error:
        if local.is_dir():
            raise
        raise TokenizerNotFound(
            f'tokenizer {name!r} is not a local directory (there is no {local.absolute()}) and could not be loaded '
            f'from the Hugging Face hub ({error}); {EXPECTED}'
        ) from error
    if require_fast and not getattr(tokenizer, 'is_fast', False):
        raise ValueError(
            f'{name!r} loads as a slow (Python) tokenizer; conversion needs a fast one. '
            'Save it with a tokenizer.json (e.g. PreTrainedTokenizerFast.save_pretrained) and pass that.'
        )
    return tokenizer


def _could_be_hub_name(name: str) -> bool:
    """Whether ``name`` has the form of a hub repository id (``name`` or ``owner/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True
