"""Per-token language-model loss of a MeCo model on a packed dataset under chosen metadata settings.

The basic check that a model uses its metadata: the loss on held-out documents with their true URL prefix,
with no prefix and with a mismatched prefix, overall and per source domain. Batches come from the real
MeCo data path (``build_meco_loader``'s dataset, ``PackedCollator``, ``PrefixInjector``).

Fair comparison. Prefix injection pushes tail tokens off each row, and how many depends on the condition
(a longer URL pushes more). So the loss is always taken over one set of packed document tokens that is
the same in every condition: tokens that carry loss without any prefix (a new document's first token
does not, it has nothing of its own to be predicted from; nor does a row's first token) and that survive
injection in every condition
evaluated together. ``compare_conditions`` evaluates several conditions on the same rows and uses the
intersection. Conditions evaluated in separate calls are comparable when they share ``reserve_tokens``:
only each row's first ``max_seq_len - reserve_tokens`` packed tokens are scored, and a row whose prefixes
would push one of those off is a clear error (raise ``reserve_tokens``), never a silent change of the set.

Context guidance (``guidance`` γ, ``guidance.guide``): each condition with a prefix is scored by the log-softmax of
``no_url + γ · (url − no_url)``, where ``no_url`` are the logits that predict the same packed token in the row laid
out without prefixes (the no-URL condition's layout); conditions without a prefix are unchanged by it. Same document
tokens as without guidance; γ = 1 gives the unguided numbers exactly, γ = 0 the no-URL condition's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from streaming.base.util import clean_stale_shared_memory
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from meco_callbacks.data.collator import IGNORE_INDEX, PackedCollator, PrefixInjector
from meco_callbacks.data.dataloader import build_meco_loader
from meco_callbacks.data.dataset import documents_start_with_bos, with_recorded_bins, with_recorded_compact
from meco_callbacks.data.metadata import MetadataConfig, url_host
from meco_callbacks.evaluation.guidance import guide
from meco_callbacks.formats import read_dataset_info
from meco_callbacks.model.attention import summary_forbidden
from meco_callbacks.model.mpt import summary_attention

log = logging.getLogger(__name__)

MetadataSpec = Mapping[str, Any] | MetadataConfig | None
"""A metadata setting: a loader ``metadata`` block, a ``MetadataConfig``, or None for no prefix at all."""
Guide = tuple[Mapping[str, torch.Tensor], torch.Tensor, float]
"""Guidance of a batch's logits: the no-URL batch, for each slot the no-URL slot predicting the same token, γ."""

TRUE_URL: dict[str, Any] = {'kind': 'domain'}
NO_URL: dict[str, Any] = {'enabled': False}


def mismatched_url(domain: str) -> dict[str, Any]:
    """The metadata setting that puts one fixed ``domain`` before every document (a wrong or fabricated URL)."""
    return {'kind': f'constant:{domain}'}


def compact_conditions(metadata: MetadataConfig, wrong_urls: Sequence[str]) -> dict[str, MetadataConfig]:
    """The true-URL and wrong-URL conditions of a model trained with kind ``compact`` (its vocabulary resolved).

    A wrong URL's condition is a vocabulary of no site and one bucket, that URL's token: every document gets it.
    """
    token = {url: metadata.metadata_for_prompt(url) for url in wrong_urls}
    fixed = {
        url: {
            'site': metadata.compact['site'],
            'hash': metadata.compact['hash'],
            'buckets': 1,
            'sites': [],
            'tokens': [t],
            'token_ids': [metadata.compact_token_id(t)],
        }
        for url, t in token.items()
    }
    conditions = {'true_url': replace(metadata, enabled=True)}
    conditions.update({f'url={url}': replace(metadata, enabled=True, compact=fixed[url]) for url in wrong_urls})
    return conditions


def metadata_config(spec: MetadataSpec) -> MetadataConfig:
    """The ``MetadataConfig`` of a metadata setting; None means no prefix."""
    if spec is None:
        return MetadataConfig(enabled=False)
    if isinstance(spec, MetadataConfig):
        return spec
    return MetadataConfig.from_dict(spec)


def packed_max_seq_len(packed_dir: str | Path) -> int:
    """The row length a packed dataset was written with, read from its info file."""
    info = read_dataset_info(packed_dir)
    if info is None or 'max_seq_len' not in info:
        raise ValueError(
            f'{packed_dir} has no meco_dataset.json with max_seq_len: it is not a MeCo packed dataset. '
            'Build one with convert/documents.py then convert/pack.py.'
        )
    return int(info['max_seq_len'])


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside a Composer model (``.model``), or the model itself."""
    from composer.models import HuggingFaceModel

    return model.model if isinstance(model, HuggingFaceModel) else model


def _forward_token_losses(
    lm: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
    rows_per_forward: int = 1,
    positions_per_chunk: int = 1024,
    guided_by: Guide | None = None,
) -> torch.Tensor:
    """Per-slot loss ``[batch, seq]`` of predicting each label from the slot before; NaN where there is no label.

    The model sees ``rows_per_forward`` rows at a time and their logits are upcast to fp32 ``positions_per_chunk``
    slots at a time, so memory never holds ``[batch, seq, vocab]`` fp32 logits (33.6 GB at 8 x 8192 x 128,256).
    With ``guided_by`` each slot's logits are guided by the no-URL slot's that predict the same token (-1: none).
    """
    labels = batch['labels']
    losses = torch.full(labels.shape, float('nan'))
    for first in range(0, labels.shape[0], rows_per_forward):
        rows = slice(first, first + rows_per_forward)
        logits = _row_logits(lm, batch, rows, device)
        if guided_by is not None:
            no_url_batch, no_url_slot, guidance = guided_by
            no_url_logits = _row_logits(lm, no_url_batch, rows, device)
        targets = labels[rows, 1:].to(device)
        for start in range(0, targets.shape[1], positions_per_chunk):
            target = targets[:, start : start + positions_per_chunk]
            chunk = logits[:, start : start + target.shape[1]].float()
            if guided_by is not None:
                slot = no_url_slot[rows, start : start + target.shape[1]].to(device)
                index = slot.clamp(min=0)[..., None].expand(-1, -1, chunk.shape[-1])
                no_url = no_url_logits.gather(1, index).float()
                chunk = torch.where((slot >= 0)[..., None], guide(no_url, chunk, guidance), chunk)
            token_loss = F.cross_entropy(chunk.transpose(1, 2), target.clamp(min=0), reduction='none')
            token_loss = token_loss.masked_fill(target == IGNORE_INDEX, float('nan'))
            losses[rows, 1 + start : 1 + start + target.shape[1]] = token_loss.cpu()
        del logits
    return losses


def _row_logits(lm: torch.nn.Module, batch: Mapping[str, torch.Tensor], rows: slice, device: torch.device) -> Any:
    """The model's logits for ``rows`` of a model batch (its inputs only; labels stay out).

    MPT reads ``sequence_id`` and masks attention to each document itself; any other causal LM (a Llama export)
    would ignore it, so it gets the same document mask as a 4D attention mask instead. A batch's ``prefix_mask``
    (``metadata.attention: summary``) reaches a ``meco_mpt_causal_lm``'s own mask, or a Llama's 4D mask.
    """
    inputs = {k: v[rows].to(device) for k, v in batch.items() if k in ('input_ids', 'attention_mask', 'position_ids')}
    prefix_mask = batch['prefix_mask'][rows].to(device) if 'prefix_mask' in batch else None
    reads_sequence_id = _reads_sequence_id(lm)
    if 'sequence_id' in batch and reads_sequence_id:
        inputs['sequence_id'] = batch['sequence_id'][rows].to(device)
    elif not reads_sequence_id and ('sequence_id' in batch or prefix_mask is not None):
        ids = batch['sequence_id'][rows] if 'sequence_id' in batch else torch.zeros_like(batch['input_ids'][rows])
        inputs['attention_mask'] = document_attention_mask(
            ids.to(device), inputs.get('attention_mask'), lm.dtype, prefix_mask
        )
        prefix_mask = None  # in the 4D mask
    with summary_attention(lm, prefix_mask):
        return lm(**inputs).logits


def _reads_sequence_id(lm: torch.nn.Module) -> bool:
    """Whether the model's forward names ``sequence_id`` (MPT) rather than swallowing it in ``**kwargs``."""
    import inspect

    parameter = inspect.signature(lm.forward).parameters.get('sequence_id')
    return parameter is not None and parameter.kind is not inspect.Parameter.VAR_KEYWORD


def document_attention_mask(
    sequence_id: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    prefix_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive ``[batch, 1, seq, seq]`` mask: each slot sees earlier slots of its own document, never padding.

    With ``prefix_mask`` (summary attention), a prefix slot other than its prefix's last is also hidden from every
    slot that is not a prefix slot, as the MeCo model's own mask does in training.
    """
    seq = sequence_id.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=sequence_id.device).tril()
    allowed = causal & (sequence_id[:, :, None] == sequence_id[:, None, :])
    if prefix_mask is not None:
        allowed &= ~summary_forbidden(prefix_mask, sequence_id)
    if attention_mask is not None:
        allowed &= attention_mask[:, None, :].bool()
    allowed |= torch.eye(seq, dtype=torch.bool, device=sequence_id.device)  # a padding slot sees itself: no NaN
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequence_id.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _no_url_slots(sources: np.ndarray, no_url_sources: np.ndarray, no_url_labels: np.ndarray) -> torch.Tensor:
    """For each slot ``t`` of a batch, the slot of the no-URL layout whose logits predict the token at ``t + 1``.

    ``[batch, seq - 1]``; -1 where slot ``t + 1`` holds no document token, or that token carries no loss without a
    prefix (a document's first token: the slot before it belongs to another document).
    """
    n, length = sources.shape
    slot_of = np.full((n, length), -1)
    rows, slots = np.nonzero(no_url_sources >= 0)
    slot_of[rows, no_url_sources[rows, slots]] = slots
    target = sources[:, 1:]
    no_url_slot = np.where(target >= 0, slot_of[np.arange(n)[:, None], target.clip(min=0)], -1)
    trained = np.take_along_axis(no_url_labels, no_url_slot.clip(min=0), 1) != IGNORE_INDEX
    return torch.from_numpy(np.where((no_url_slot >= 1) & trained, no_url_slot - 1, -1))


@contextmanager
def _packed_rows(
    tokenizer: Any,
    packed_dir: str | Path,
    max_seq_len: int,
    device_batch_size: int,
    document_masking: bool,
    max_batches: int | None = None,
) -> Iterator[DataLoader]:
    """Batches (lists) of raw packed rows from the MeCo loader's checked dataset.

    All rows in stored order, or with ``max_batches`` fewer than that, rows spread evenly over the whole set:
    packed rows keep corpus order, so the first rows would all come from the first documents (often one site).
    """
    clean_stale_shared_memory()
    loader = build_meco_loader(
        tokenizer,
        device_batch_size,
        {
            'local': str(packed_dir),
            'shuffle': False,
            'max_seq_len': max_seq_len,
            'metadata': NO_URL,
            'document_masking': document_masking,
        },
        drop_last=False,
    )
    rows: Any = loader.dataset
    wanted = None if max_batches is None else max_batches * device_batch_size
    if wanted is not None and wanted < len(rows):
        rows = Subset(rows, np.linspace(0, len(rows) - 1, wanted).round().astype(int).tolist())
    try:
        yield DataLoader(rows, batch_size=device_batch_size, collate_fn=list, num_workers=0)
    finally:
        del loader
        clean_stale_shared_memory()


class _Accumulator:
    """Loss sums and token counts, overall and per source domain."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.tokens = 0
        self.sources: dict[str, list[float]] = {}

    def add(self, losses: np.ndarray, domains: np.ndarray) -> None:
        self.loss += float(losses.sum())
        self.tokens += int(losses.size)
        for domain in np.unique(domains):
            chosen = losses[domains == domain]
            entry = self.sources.setdefault(str(domain), [0.0, 0])
            entry[0] += float(chosen.sum())
            entry[1] += int(chosen.size)

    def result(self, rows: int, per_source: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            'loss': self.loss / self.tokens if self.tokens else math.nan,
            'tokens': self.tokens,
            'rows': rows,
        }
        if per_source:
            out['per_source'] = {d: {'loss': s / n, 'tokens': n} for d, (s, n) in sorted(self.sources.items())}
        return out


def compare_conditions(
    model: torch.nn.Module,
    tokenizer: Any,
    packed_dir: str | Path,
    conditions: Mapping[str, MetadataSpec],
    device_batch_size: int = 8,
    max_batches: int | None = None,
    per_source: bool = False,
    reserve_tokens: int = 0,
    document_masking: bool = True,
    guidance: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Mean per-token loss of each named metadata condition over the same document tokens (see the module docstring).

    ``guidance`` γ scores the conditions with a prefix under context guidance (module docstring). Returns ``{name: {'loss', 'tokens', 'rows'[, 'per_source': {domain: {'loss', 'tokens'}}]}}``; domains are the
    hosts of the documents' URLs.
    """
    if not conditions:
        raise ValueError('compare_conditions needs at least one condition, e.g. {"true_url": {"kind": "domain"}}.')
    max_seq_len = packed_max_seq_len(packed_dir)
    if not 0 <= reserve_tokens < max_seq_len:
        raise ValueError(
            f'reserve_tokens must be in [0, {max_seq_len}) for rows of {max_seq_len} tokens; got {reserve_tokens}.'
        )
    info = read_dataset_info(packed_dir) or {}
    configs = {
        name: with_recorded_compact(with_recorded_bins(metadata_config(spec), [info]), [info])
        for name, spec in conditions.items()
    }
    bos_id = tokenizer.bos_token_id if documents_start_with_bos([info], tokenizer) else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collators = {name: PackedCollator(tokenizer, cfg, max_seq_len, bos_id) for name, cfg in configs.items()}
    injectors = {
        name: PrefixInjector(
            max_seq_len,
            enabled=cfg.enabled and cfg.active,
            document_masking=document_masking,
            pad_token_id=pad_id,
            summary_attention=cfg.attention == 'summary',
        )
        for name, cfg in configs.items()
    }
    plain = PrefixInjector(max_seq_len, enabled=False, document_masking=document_masking, pad_token_id=pad_id)
    lm = language_model(model)
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    totals = {name: _Accumulator() for name in conditions}
    rows = 0
    with (
        _packed_rows(tokenizer, packed_dir, max_seq_len, device_batch_size, document_masking, max_batches) as batches,
        torch.no_grad(),
    ):
        for samples in tqdm(batches, desc='conditional loss', leave=False):
            losses, scored = _score_batch(
                lm, samples, collators, injectors, plain, max_seq_len, reserve_tokens, device, rows, guidance
            )
            domains = np.full((len(samples), max_seq_len), '', dtype=object)
            for r, sample in enumerate(samples):
                hosts = np.array([url_host(u) for u in sample['urls']], dtype=object)
                row = np.repeat(hosts, np.asarray(sample['segment_lengths'], dtype=np.int64))
                domains[r, : len(row)] = row
            for name, loss in losses.items():
                totals[name].add(loss[scored], domains[scored])
            rows += len(samples)
    lm.train(was_training)
    results = {name: acc.result(rows, per_source) for name, acc in totals.items()}
    log.info(
        'conditional loss over %d rows: %s',
        rows,
        ', '.join(f'{name} {r["loss"]:.4f} ({r["tokens"]} tokens)' for name, r in results.items()),
    )
    return results


def _score_batch(
    lm: torch.nn.Module,
    samples: list[dict[str, Any]],
    collators: Mapping[str, PackedCollator],
    injectors: Mapping[str, PrefixInjector],
    plain: PrefixInjector,
    max_seq_len: int,
    reserve_tokens: int,
    device: torch.device,
    first_row: int,
    guidance: float | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each condition's loss per packed token ``[batch, max_seq_len]`` and the mask of tokens scored in all of them."""
    window = np.arange(max_seq_len) < max_seq_len - reserve_tokens
    packed_plain = next(iter(collators.values()))(samples)
    plain_batch, plain_sources = plain.inject(packed_plain)
    plain_labels = plain_batch['labels'].numpy()
    scored = (plain_labels != IGNORE_INDEX) & window
    scored[:, 0] = False  # a row's first token (a continued document's) has nothing in the row to be predicted from
    by_packed: dict[str, np.ndarray] = {}
    for name, collator in collators.items():
        packed = collator(samples)
        batch, positions = injectors[name].inject(packed)
        rows_idx = np.arange(len(packed))[:, None].repeat(max_seq_len, 1)
        is_doc = positions >= 0
        guided_by = None
        if guidance is not None and injectors[name].enabled:
            guided_by = (plain_batch, _no_url_slots(positions, plain_sources, plain_labels), guidance)
        slot_loss = _forward_token_losses(lm, batch, device, guided_by=guided_by).numpy()
        loss = np.full((len(packed), max_seq_len), np.nan)  # indexed by stored-row position
        loss[rows_idx[is_doc], positions[is_doc]] = slot_loss[is_doc]
        lost = scored & np.isnan(loss)
        if reserve_tokens and lost.any():
            r = int(np.argwhere(lost)[0][0])
            prefix_tokens = sum(len(seg.prefix) for seg in packed.segments[r]) if injectors[name].enabled else 0
            raise ValueError(
                f'condition {name!r}: the prefixes of row {first_row + r} take {prefix_tokens} tokens, '
                f'more than reserve_tokens={reserve_tokens}, so scored document tokens fell off the row. '
                'Raise reserve_tokens (the same value for every condition you compare).'
            )
        by_packed[name] = loss
    for loss in by_packed.values():
        scored &= ~np.isnan(loss)
    return by_packed, scored


def conditional_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    packed_dir: str | Path,
    metadata: MetadataSpec,
    device_batch_size: int = 8,
    max_batches: int | None = None,
    per_source: bool = False,
    reserve_tokens: int | None = None,
    document_masking: bool = True,
    guidance: float | None = None,
) -> dict[str, Any]:
    """Mean per-token loss under one metadata setting, over each row's first ``max_seq_len - reserve_tokens`` tokens.

    ``reserve_tokens`` defaults to a quarter of the row; pass the same value to every call you compare (or use
    ``compare_conditions``); ``guidance`` γ as there. Returns ``{'loss', 'tokens', 'rows'[, 'per_source']}``.
    """
    if reserve_tokens is None:
        reserve_tokens = packed_max_seq_len(packed_dir) // 4
    return compare_conditions(
        model,
        tokenizer,
        packed_dir,
        {'condition': metadata},
        device_batch_size,
        max_batches,
        per_source,
        reserve_tokens,
        document_masking,
        guidance,
    )['condition']
