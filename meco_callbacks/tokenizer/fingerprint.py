"""A tokenizer's identity for datasets: token ids are only meaningful with the tokenizer that made them.

The fingerprint hashes what decides the ids: the vocabulary (token -> id) and the special tokens. Two
tokenizers with the same fingerprint map text to the same ids; a dataset records it at conversion and
training refuses a tokenizer whose fingerprint differs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """``sha256:<16 hex>`` over the tokenizer's vocabulary and special tokens (order-independent)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = {
        'all_special_tokens': sorted(tokenizer.all_special_tokens),
        'bos_token': tokenizer.bos_token,
        'eos_token': tokenizer.eos_token,
    }
    payload = json.dumps({'vocab': vocab, 'special': special}, ensure_ascii=False, sort_keys=True)
    return 'sha256:' + hashlib.sha256(payload.encode('utf-8')).hexdigest()[:16]


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What a dataset records about its tokenizer: name, fingerprint, vocabulary size, BOS/EOS ids."""
    return {
        'name': getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__,
        'fingerprint': tokenizer_fingerprint(tokenizer),
        'vocab_size': len(tokenizer),
        'bos_token_id': tokenizer.bos_token_id,
        'eos_token_id': tokenizer.eos_token_id,
        'adds_bos': adds_bos_token(tokenizer),
    }


def adds_bos_token(tokenizer: Any) -> bool:
    """True when the tokenizer itself puts a BOS in front of encoded text (Llama-3 does, GPT-2 does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer('a', add_special_tokens=True)['input_ids']
    return len(ids) > 0 and ids[0] == bos
