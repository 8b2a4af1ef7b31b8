"""Conditional generation: a continuation of a prompt, optionally behind a URL prefix that steers the model.

The prompt's tokens are laid out as a training document's (``prompts.prompt_ids``: BOS when the tokenizer adds
one, the prefix of the URL's training-time metadata, then the prompt). Flex attention keeps no KV cache, so a MeCo
model generates through the plain MPT that shares its weights (``MeCoMPTForCausalLM.to_mpt()``,
``attn_impl: torch``); an HF export (MPT or Llama) generates as it is.

With ``guidance`` γ (``guidance.guide``), a second stream holds the same text without the prefix (BOS, then the
prompt): at each step both streams' next-token logits are combined, the guided logits are picked from or sampled
(temperature and the model's other warpers apply to them), and the token joins both streams. Each stream keeps
its own KV cache when the model takes ``past_key_values``, and is recomputed whole at each step otherwise.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.conditional_loss import language_model
from meco_callbacks.evaluation.guidance import guide
from meco_callbacks.evaluation.prompts import DEFAULT_METADATA, prompt_ids
from meco_callbacks.model.mpt import MeCoMPTForCausalLM


def generation_model(model: torch.nn.Module) -> torch.nn.Module:
    """A causal LM that can ``generate`` with a KV cache: the plain MPT of a MeCo model, or the model itself."""
    lm = language_model(model)
    return lm.to_mpt().eval() if isinstance(lm, MeCoMPTForCausalLM) else lm.eval()


def takes_kv_cache(lm: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``past_key_values`` (HF causal LMs such as MPT and Llama do)."""
    return 'past_key_values' in inspect.signature(lm.forward).parameters


class NoUrlGuidance(LogitsProcessor):
    """Guides the URL stream's next-token logits by those of the same text without the prefix, kept step by step."""

    def __init__(
        self, lm: torch.nn.Module, no_url_ids: torch.Tensor, url_length: int, guidance: float, use_cache: bool
    ) -> None:
        self.lm = lm
        self.no_url_ids = no_url_ids
        self.url_length = url_length  # the URL stream's prompt length: what follows it is generated text
        self.guidance = guidance
        self.use_cache = use_cache
        self.past: Any = None
        self.cached = 0  # tokens of the no-URL stream the cache holds

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = torch.cat([self.no_url_ids, input_ids[:, self.url_length :]], dim=1)
        if self.use_cache:
            out = self.lm(input_ids=ids[:, self.cached :], past_key_values=self.past, use_cache=True)
            self.past, self.cached = out.past_key_values, ids.shape[1]
        else:
            out = self.lm(input_ids=ids, use_cache=False)
        return guide(out.logits[:, -1].to(scores.dtype), scores, self.guidance)


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
    guidance: float | None = None,
    use_cache: bool | None = None,
) -> str:
    """The continuation of ``prompt`` (without the prompt), behind ``url``'s prefix (``URL: <domain>\\n\\n``) if given.

    ``guidance`` γ steers by ``url`` with context guidance (module docstring); ``use_cache`` defaults to whether
    the model takes a KV cache.
    """
    if guidance is not None and url is None:
        raise ValueError('guidance needs a url: it weighs the prompt behind a URL against the same prompt without one.')
    lm = generation_model(model)
    device = next(lm.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, prompt, url, metadata)], device=device)
    cache = takes_kv_cache(lm) if use_cache is None else use_cache
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {'do_sample': do_sample}
    if do_sample:
        kwargs['temperature'] = temperature
    if guidance is not None:
        no_url = torch.tensor([prompt_ids(tokenizer, prompt, None, metadata)], device=device)
        kwargs['logits_processor'] = LogitsProcessorList([NoUrlGuidance(lm, no_url, ids.shape[1], guidance, cache)])
    with torch.no_grad():
        out = lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=cache,
            **kwargs,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
