"""Inference prompts laid out as training lays out a document: BOS, the metadata prefix, then the text.

Training puts a document's BOS first (when the tokenizer adds one), then its prefix, tokenized on its own by the
loader's ``PrefixTokens`` from the ``MetadataConfig`` metadata of the document's URL, then the document's tokens.
Generation and URL search build prompts through the same pieces, so the model sees at inference the tokens it was
conditioned on: a full URL becomes the training-time metadata (its domain, for kind ``domain``), and the prefix's
trailing "\\n\\n" is not merged into the prompt's first word as tokenizing the joined text would.
"""

from __future__ import annotations

from typing import Any

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import PrefixTokens
from meco_callbacks.tokenizer.fingerprint import adds_bos_token

DEFAULT_METADATA = MetadataConfig()
"""MeCo's default setting (the URL's domain in ``URL: {}\\n\\n``), for models whose train YAML is not at hand."""


def prompt_head(tokenizer: Any, url: str | None, metadata: MetadataConfig = DEFAULT_METADATA) -> list[int]:
    """BOS when the tokenizer adds one, then the prefix training puts before a document from ``url`` (none if None)."""
    head = [tokenizer.bos_token_id] if adds_bos_token(tokenizer) else []
    if url is None:
        return head
    if metadata.position != 'prefix':
        raise ValueError(
            f'this model was trained with its metadata after each document (metadata.position: {metadata.position}), '
            'so a URL before a prompt is a layout it never saw; run it without --url (or score suffixes yourself).'
        )
    refuse_summary_attention(metadata)
    return head + PrefixTokens(tokenizer, metadata)(metadata.metadata_for_prompt(url)).tolist()


def prompt_ids(tokenizer: Any, text: str, url: str | None, metadata: MetadataConfig = DEFAULT_METADATA) -> list[int]:
    """The token ids of ``text`` behind ``url``'s prefix, laid out as a training document (see the module docstring)."""
    return prompt_head(tokenizer, url, metadata) + tokenizer(text, add_special_tokens=False)['input_ids']


def refuse_summary_attention(metadata: MetadataConfig) -> None:
    """Refuse a URL prompt for a model trained with ``metadata.attention: summary``: a plain causal LM (generation,
    URL search, the harness, ICL) would let the prompt see every prefix token, which training never did."""
    if metadata.attention == 'summary':
        raise ValueError(
            'this model was trained with metadata.attention: summary (document tokens saw a prefix only through its '
            'last token); prompts with a URL through a plain causal LM would show the prompt every prefix token, a '
            'layout it never saw. Run it without a URL, or score with recipes/evaluate.py loss, which applies the mask.'
        )
