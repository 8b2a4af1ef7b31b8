"""Conditional generation: a continuation of a prompt, optionally behind a URL prefix that steers the model.

The prompt's tokens are laid out as a training document's (``prompts.prompt_ids``: BOS when the tokenizer adds
one, the prefix of the URL's training-time metadata, then the prompt). Flex attention keeps no KV cache, so a MeCo
model generates through the plain MPT that shares its weights (``MeCoMPTForCausalLM.to_mpt()``,
``attn_impl: torch``); an HF export is plain MPT already.
"""

from __future__ import annotations

from typing import Any

import torch

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.conditional_loss import language_model
from meco_callbacks.evaluation.prompts import DEFAULT_METADATA, prompt_ids
from meco_callbacks.model.mpt import MeCoMPTForCausalLM


def generation_model(model: torch.nn.Module) -> torch.nn.Module:
    """A causal LM that can ``generate`` with a KV cache: the plain MPT of a MeCo model, or the model itself."""
    lm = language_model(model)
    return lm.to_mpt().eval() if isinstance(lm, MeCoMPTForCausalLM) else lm.eval()


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    url: str | None = None,
    max_new_tokens: int = 64,
    metadata: MetadataConfig = DEFAULT_METADATA,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> str:
    """The continuation of ``prompt`` (without the prompt), behind ``url``'s prefix (``URL: <domain>\\n\\n``) if given."""
    lm = generation_model(model)
    device = next(lm.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, prompt, url, metadata)], device=device)
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {'do_sample': do_sample}
    if do_sample:
        kwargs['temperature'] = temperature
    with torch.no_grad():
        out = lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            **kwargs,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
