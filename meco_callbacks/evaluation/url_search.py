"""URL search: rank candidate URLs for a task by how well the model does on its dev examples behind each URL.

The paper picked its steering URLs by hand; this scores every candidate on the task's dev examples
(llm-foundry's language-modeling format: ``{"context": ..., "continuation": ...}`` per JSON line) by the
mean per-token loss of the continuations, or by the share of examples whose continuation the model
predicts exactly token by token under greedy decoding (accuracy, llm-foundry's ``InContextLearningLMAccuracy``).
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

from meco_callbacks.data.metadata import DEFAULT_TEMPLATE
from meco_callbacks.evaluation.conditional_loss import language_model
from meco_callbacks.evaluation.icl import url_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UrlScore:
    """One candidate's result: mean continuation loss and exact-match accuracy over the dev examples."""

    url: str
    loss: float
    accuracy: float


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


def score_url(
    model: torch.nn.Module, tokenizer: Any, examples: Sequence[dict[str, str]], prefix: str
) -> tuple[float, float]:
    """(mean continuation loss per token, exact-match accuracy) of the examples with ``prefix`` before each context."""
    lm = language_model(model)
    device = next(lm.parameters()).device
    loss_sum, tokens, correct = 0.0, 0, 0
    for example in examples:
        context = tokenizer(prefix + example['context'], add_special_tokens=False)['input_ids']
        continuation = tokenizer(example['continuation'], add_special_tokens=False)['input_ids']
        ids = torch.tensor([context + continuation], device=device)
        with torch.no_grad():
            logits = lm(input_ids=ids).logits[0, len(context) - 1 : -1].float()
        target = ids[0, len(context) :]
        loss_sum += float(F.cross_entropy(logits, target, reduction='sum'))
        tokens += len(continuation)
        correct += int(torch.equal(logits.argmax(-1), target))
    return loss_sum / tokens, correct / len(examples)


def rank_urls(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    candidates: Sequence[str],
    by: str = 'loss',
    template: str = DEFAULT_TEMPLATE,
) -> list[UrlScore]:
    """Candidates best first: by lower loss (``by='loss'``) or higher accuracy then lower loss (``by='accuracy'``)."""
    if by not in ('loss', 'accuracy'):
        raise ValueError(f"rank_urls ranks by 'loss' or 'accuracy', not {by!r}.")
    lm = language_model(model)
    was_training = lm.training
    lm.eval()
    scores = [
        UrlScore(url, *score_url(model, tokenizer, examples, url_prefix(url, template)))
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
