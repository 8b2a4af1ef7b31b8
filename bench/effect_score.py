"""Scoring for the effect benchmark: fact recall by ranking candidates, and per-source document loss.

A trained run is read from its Llama export (``hf_llama_checkpointer``'s last ``huggingface/ba<N>``). Prefixes
are built as inference builds them (``MetadataConfig`` then ``PrefixTokens``, the loader's own tokens), so
every metadata kind is scored as it was trained.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

Prefix = Callable[[str], list[int]]
"""Prefix token ids for a site ([] for none)."""


def latest_export(run_dir: Path) -> Path:
    """The run's last Llama export (``huggingface/ba<N>`` with the largest N)."""
    exports = sorted((run_dir / 'huggingface').glob('ba*'), key=lambda p: int(p.name[2:]))
    if not exports:
        raise FileNotFoundError(f'{run_dir} has no huggingface/ba<N> export; did the run finish?')
    return exports[-1]


def prefix_builder(
    tokenizer: Any, metadata: dict | None, tags: dict | None = None, packed: Path | None = None
) -> Prefix:
    """Site -> prefix ids under a run's ``metadata`` block (None: no prefix), through the loader's PrefixTokens.

    A ``column:tagK`` kind reads the site's tag from ``tags`` (K -> site -> text), as the carried column held it;
    kind ``compact`` reads its vocabulary from the ``packed`` set, as the loader does.
    """
    from meco_callbacks.data.dataset import with_recorded_compact
    from meco_callbacks.data.metadata import MetadataConfig, normalize_metadata
    from meco_callbacks.data.prefix import PrefixTokens

    if metadata is None:
        return lambda site: []
    config = MetadataConfig.from_dict(metadata)
    if packed is not None:
        config = with_recorded_compact(config, [json.loads((packed / 'meco_dataset.json').read_text())])
    tokens = PrefixTokens(tokenizer, config)
    if config.kind.startswith('column:tag'):
        column = (tags or {})[int(config.kind[len('column:tag') :])]
        return lambda site: [int(i) for i in tokens(normalize_metadata(column[site], config.max_chars))]
    return lambda site: [int(i) for i in tokens(config.metadata_for_prompt(f'https://{site}/'))]


@torch.no_grad()
def _sequence_logprobs(model: Any, contexts: list[list[int]], targets: list[list[int]]) -> np.ndarray:
    """Sum of log p(target | context) for each pair, in one right-padded forward pass."""
    seqs = [c + t for c, t in zip(contexts, targets)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = np.zeros(len(seqs))
    for i, (c, t) in enumerate(zip(contexts, targets)):
        positions = torch.arange(len(c) - 1, len(c) + len(t) - 1)
        out[i] = float(logprobs[i, positions, torch.tensor(t)].sum())
    return out


def fact_recall(
    model: Any, tokenizer: Any, probes: Sequence[dict], prefix: Sequence[int], chunk: int = 16
) -> dict[str, float]:
    """Top-1 accuracy of the true value among all candidates after ``prefix + prompt``, overall and per attribute."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)['input_ids']  # noqa: E731
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(probes), chunk):
        group = probes[start : start + chunk]
        contexts, targets, spans = [], [], []
        for probe in group:
            context = list(prefix) + encode(probe['prompt'])
            spans.append((len(targets), len(probe['candidates'])))
            for candidate in probe['candidates']:
                contexts.append(context)
                targets.append(encode(' ' + candidate))
        scores = _sequence_logprobs(model, contexts, targets)
        for probe, (first, count) in zip(group, spans):
            best = probe['candidates'][int(np.argmax(scores[first : first + count]))]
            hits.setdefault(probe['attribute'], []).append(best == probe['answer'])
    result = {f'recall/{a}': float(np.mean(h)) for a, h in sorted(hits.items())}
    result['recall'] = float(np.mean([x for h in hits.values() for x in h]))
    return result


@torch.no_grad()
def document_loss(model: Any, tokenizer: Any, docs: Sequence[dict], prefix_of: Prefix, batch: int = 32) -> float:
    """Mean loss (nats) on each document's tokens after its first, behind ``prefix_of(site)`` (the same targets for any prefix)."""
    total, count = 0.0, 0
    for start in range(0, len(docs), batch):
        group = docs[start : start + batch]
        contexts, targets = [], []
        for doc in group:
            ids = tokenizer(doc['text'], add_special_tokens=False)['input_ids']
            contexts.append(prefix_of(doc['site']) + ids[:1])
            targets.append(ids[1:])
        scores = _sequence_logprobs(model, contexts, targets)
        total -= float(scores.sum())
        count += sum(map(len, targets))
    return total / count


def score_run(
    run_dir: Path,
    corpus_dir: Path,
    metadata: dict | None,
    wrong_site: str,
    tags: dict | None = None,
    packed: Path | None = None,
    docs_per_source: int = 128,
) -> dict[str, float]:
    """Recall (no URL, true URL, wrong URL) and per-source loss (useful/junk x no/true/wrong URL) of one run.

    For the baseline (``metadata`` None) only the no-URL figures exist, and for a run trained with
    ``attention: summary`` too (its export attends to the whole prefix, not as it was trained). The wrong URL for a useful document is
    ``wrong_site`` (a junk site); for a junk document it is the useful site.
    """
    from meco_callbacks.evaluation.trained_models import load_hf_model

    model, tokenizer = load_hf_model(latest_export(run_dir))
    probes = [json.loads(line) for line in (corpus_dir / 'facts.jsonl').read_text().splitlines()]
    info = json.loads((corpus_dir / 'corpus.json').read_text())
    useful_site = info['useful_site']
    prefix = prefix_builder(tokenizer, metadata, tags, packed)
    result = {f'none/{k}': v for k, v in fact_recall(model, tokenizer, probes, []).items()}
    docs = [json.loads(line) for line in (corpus_dir / 'corpus.jsonl').read_text().splitlines()]
    rng = random.Random(0)
    useful = [d for d in docs if d['site'] == useful_site]
    junk = [d for d in docs if d['site'] != useful_site]
    useful, junk = (rng.sample(d, min(docs_per_source, len(d))) for d in (useful, junk))
    result['loss/useful/none'] = document_loss(model, tokenizer, useful, lambda site: [])
    result['loss/junk/none'] = document_loss(model, tokenizer, junk, lambda site: [])
    if metadata is not None and metadata.get('attention', 'full') == 'full':  # a Llama export attends fully
        result['true/recall'] = fact_recall(model, tokenizer, probes, prefix(useful_site))['recall']
        result['wrong/recall'] = fact_recall(model, tokenizer, probes, prefix(wrong_site))['recall']
        result['loss/useful/true'] = document_loss(model, tokenizer, useful, prefix)
        result['loss/junk/true'] = document_loss(model, tokenizer, junk, prefix)
        result['loss/useful/wrong'] = document_loss(model, tokenizer, useful, lambda site: prefix(wrong_site))
        result['loss/junk/wrong'] = document_loss(model, tokenizer, junk, lambda site: prefix(useful_site))
    return result
