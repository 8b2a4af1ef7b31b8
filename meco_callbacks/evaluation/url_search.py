"""URL search: rank candidate URLs for a task by how well the model does on its dev examples behind each URL.

The paper picked its steering URLs by hand; this scores every candidate on the task's dev examples
(llm-foundry's language-modeling format: ``{"context": ..., "continuation": ...}`` per JSON line) by the
mean per-token loss of the continuations, or by the share of examples whose continuation the model
predicts exactly token by token under greedy decoding (accuracy, llm-foundry's ``InContextLearningLMAccuracy``).

Each example is laid out as a training document (``prompts.prompt_head``): BOS when the tokenizer adds one, the
prefix of the candidate's training-time metadata, the context, the continuation. An example longer than the
model's context is cut from the left of its context, keeping BOS, the prefix and the whole continuation, as
llm-foundry's ICL evaluation trims; a longer prefix leaves less of the context. Each candidate's score counts
the examples it cut (logged). An example whose prefix and continuation alone do not fit is an error naming it.

With ``guidance`` γ (``guidance.guide``), each continuation token is scored by the log-softmax of the guided logits:
the example behind the candidate's prefix, and the same (cut) text with BOS but no prefix, combined. γ = 1 gives
the plain scores exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.conditional_loss import language_model
from meco_callbacks.evaluation.guidance import guide
from meco_callbacks.evaluation.prompts import DEFAULT_METADATA, prompt_head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UrlScore:
    """One candidate's result: mean continuation loss, exact-match accuracy, and how many contexts were cut."""

    url: str
    loss: float
    accuracy: float
    truncated: int = 0


def read_dev_examples(path: str | Path) -> list[dict[str, str]]:
    """Dev examples from a JSON Lines file of ``{"context", "continuation"}`` objects, checked."""
    examples = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        example = json.loads(line)
        if not isinstance(example.get('context'), str) or not isinstance(example.get('continuation'), str):
            raise ValueError(
                f'{path} line {n}: each dev example needs string "context" and "continuation" '
                '(llm-foundry language_modeling format).'
            )
        examples.append(example)
    if not examples:
        raise ValueError(f'{path} holds no dev examples.')
    return examples


def read_candidate_urls(path: str | Path) -> list[str]:
    """Candidate URLs, one per line; blank lines and ``#`` comments are ignored, duplicates refused."""
    urls = [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith('#')]
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    if duplicates:
        raise ValueError(f'{path} lists {duplicates} more than once; list each candidate URL once.')
    if not urls:
        raise ValueError(f'{path} lists no candidate URLs (one per line).')
    return urls


def context_length(lm: torch.nn.Module) -> int | None:
    """The longest input the model takes (MPT's ``max_seq_len``, else the HF config's position count); None if unset."""
    config = getattr(lm, 'config', None)
    for name in ('max_seq_len', 'max_position_embeddings', 'n_positions'):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def fit_example(head: list[int], context: list[int], continuation: list[int], window: int | None, n: int) -> list[int]:
    """``head + context + continuation``, its context cut from the left to ``window`` tokens (dev example ``n``)."""
    excess = len(head) + len(context) + len(continuation) - window if window else 0
    if excess <= 0:
        return head + context + continuation
    if excess > len(context) - (0 if head else 1):
        raise ValueError(
            f'dev example {n}: its prefix ({len(head)} tokens) and continuation ({len(continuation)} tokens) do not '
            f"fit the model's {window}-token context with any of its context before them; shorten it or drop it."
        )
    return head + context[excess:] + continuation


def continuation_logits(lm: torch.nn.Module, ids: list[int], continuation: int) -> torch.Tensor:
    """The fp32 logits that predict the last ``continuation`` tokens of ``ids``, from one forward pass."""
    device = next(lm.parameters()).device
    start = len(ids) - continuation
    return lm(input_ids=torch.tensor([ids], device=device)).logits[0, start - 1 : -1].float()


def score_url(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    url: str,
    metadata: MetadataConfig = DEFAULT_METADATA,
    guidance: float | None = None,
) -> UrlScore:
    """The examples' mean continuation loss per token and exact-match accuracy behind ``url``'s prefix (guided by γ)."""
    lm = language_model(model)
    window = context_length(lm)
    head = prompt_head(tokenizer, url, metadata)
    no_url_head = prompt_head(tokenizer, None, metadata)
    loss_sum, tokens, correct, truncated = 0.0, 0, 0, 0
    for n, example in enumerate(examples, 1):
        context = tokenizer(example['context'], add_special_tokens=False)['input_ids']
        continuation = tokenizer(example['continuation'], add_special_tokens=False)['input_ids']
        fitted = fit_example(head, context, continuation, window, n)
        truncated += len(fitted) < len(head) + len(context) + len(continuation)
        with torch.no_grad():
            logits = continuation_logits(lm, fitted, len(continuation))
            if guidance is not None:
                no_url = no_url_head + fitted[len(head) :]
                if len(no_url) == len(continuation):
                    raise ValueError(
                        f'dev example {n}: without the URL prefix nothing precedes its continuation, so guidance '
                        'has no unconditioned prediction of its first token; give it a context.'
                    )
                logits = guide(continuation_logits(lm, no_url, len(continuation)), logits, guidance)
        target = torch.tensor(continuation, device=logits.device)
        loss_sum += float(F.cross_entropy(logits, target, reduction='sum'))
        tokens += len(continuation)
        correct += int(torch.equal(logits.argmax(-1), target))
    if truncated:
        log.info(
            "%s: %d of %d dev examples exceed the model's %d-token context; their contexts were cut from the left",
            url,
            truncated,
            len(examples),
            window,
        )
    return UrlScore(url, loss_sum / tokens, correct / len(examples), truncated)


def rank_urls(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    candidates: Sequence[str],
    by: str = 'loss',
    metadata: MetadataConfig = DEFAULT_METADATA,
    guidance: float | None = None,
) -> list[UrlScore]:
    """Candidates best first: by lower loss (``by='loss'``) or higher accuracy then lower loss (``by='accuracy'``).

    ``guidance`` γ scores every candidate with context guidance (module docstring).
    """
    if by not in ('loss', 'accuracy'):
        raise ValueError(f"rank_urls ranks by 'loss' or 'accuracy', not {by!r}.")
    lm = language_model(model)
    was_training = lm.training
    lm.eval()
    scores = [
        score_url(model, tokenizer, examples, url, metadata, guidance)
        for url in tqdm(candidates, desc='URL search', leave=False)
    ]
    lm.train(was_training)
    key = (lambda s: s.loss) if by == 'loss' else (lambda s: (-s.accuracy, s.loss))
    ranked = sorted(scores, key=key)
    log.info(
        'URL search over %d candidates: best %s (loss %.4f, accuracy %.3f)',
        len(ranked),
        ranked[0].url,
        ranked[0].loss,
        ranked[0].accuracy,
    )
    return ranked
