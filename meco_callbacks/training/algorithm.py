"""The ``metadata_conditioning`` algorithm: the model side of MeCo, acting on Composer events.

At ``FIT_START`` it checks that the run can do what the loader promises (a MeCo train loader; a model that
masks attention by ``sequence_id`` when the loader emits document ids, and not otherwise; one that applies
``prefix_mask`` when the loader's ``metadata.attention`` is ``summary``) and fails with
the fix in the message instead of training something else silently. After every batch leaves the loader
it logs the phase and how many tokens were metadata or were pushed off their row by prefixes. The running
totals (``meco/*_total``, this rank's batches) are kept in the checkpoint, so a resumed run continues them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from meco_callbacks.config_checks import check_bool
from meco_callbacks.data.dataloader import MeCoDataLoader
from meco_callbacks.model.mpt import applies_summary_attention

log = logging.getLogger(__name__)


def find_meco_loader(state: State, role: str) -> MeCoDataLoader:
    """The run's MeCo train loader, or a clear error naming what it is instead."""
    loader = state.train_dataloader
    if not isinstance(loader, MeCoDataLoader):
        raise ValueError(
            f'{role} needs the MeCo train loader (train_loader.name: meco), but the train loader is '
            f'{type(loader).__name__}. Convert the corpus with convert/pack.py and use name: meco.'
        )
    return loader


def model_uses_sequence_id(model: Any) -> bool | None:
    """Whether the wrapped model masks attention by ``sequence_id``; None when it has no such switch."""
    for module in model.modules():
        if hasattr(module, 'attn_uses_sequence_id'):
            return bool(module.attn_uses_sequence_id)
    return None


class MetadataConditioning(Algorithm):
    """Validate the MeCo setup at fit start and log per-batch MeCo metrics (``meco/*``)."""

    def __init__(self, check_document_masking: bool = True, **unknown: Any) -> None:
        if unknown:
            raise ValueError(
                f'unknown metadata_conditioning key(s) {sorted(unknown)}; it takes check_document_masking.'
            )
        self.check_document_masking = check_bool('metadata_conditioning.check_document_masking', check_document_masking)
        self.metadata_tokens_total = 0
        self.dropped_tokens_total = 0
        self._clock: tuple[float, int] | None = None  # (wall time, Composer's token count) at the last batch end

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.FIT_START, Event.AFTER_DATALOADER, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        loader = find_meco_loader(state, 'the metadata_conditioning algorithm')
        if event == Event.FIT_START:
            self._check_model(state, loader)
            self._clock = None
            return
        if event == Event.BATCH_END:
            self._log_document_speed(state, logger)
            return
        injector = loader.injector
        last = injector.stats.last
        if not last:
            return
        tokens = max(last['tokens'], 1)
        self.metadata_tokens_total += last['metadata_tokens']
        self.dropped_tokens_total += last['dropped_tokens']
        logger.log_metrics(
            {
                'meco/phase_conditioning': int(injector.enabled),
                'meco/metadata_token_fraction': last['metadata_tokens'] / tokens,
                'meco/dropped_token_fraction': last['dropped_tokens'] / tokens,
                'meco/padding_fraction': last['padding_tokens'] / tokens,
                'meco/metadata_tokens_total': self.metadata_tokens_total,
                'meco/dropped_tokens_total': self.dropped_tokens_total,
            }
        )

    def _log_document_speed(self, state: State, logger: Logger) -> None:
        """``meco/document_tokens_per_sec``: document tokens (all ranks) over the wall time since the last batch.

        Composer's ``time/token`` counts document tokens for the meco loader (``DocumentTokens``), prefixes left
        out, so this is the speed monitor's ``throughput/tokens_per_sec`` per batch, not over its window; the
        prefixes' share is ``meco/metadata_token_fraction``.
        """
        now, tokens = time.perf_counter(), int(state.timestamp.token)
        if self._clock is not None:
            seconds, before = now - self._clock[0], self._clock[1]
            if seconds > 0 and tokens >= before:
                logger.log_metrics({'meco/document_tokens_per_sec': (tokens - before) / seconds})
        self._clock = (now, tokens)

    def state_dict(self) -> dict[str, Any]:
        """Composer's algorithm state plus the running totals, so that a resumed run continues them."""
        return {
            **super().state_dict(),
            'metadata_tokens_total': self.metadata_tokens_total,
            'dropped_tokens_total': self.dropped_tokens_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the running totals (a checkpoint from before they were saved restarts them at zero)."""
        self.metadata_tokens_total = int(state.get('metadata_tokens_total', 0))
        self.dropped_tokens_total = int(state.get('dropped_tokens_total', 0))

    def _check_model(self, state: State, loader: MeCoDataLoader) -> None:
        if getattr(loader.injector, 'summary_attention', False) and not applies_summary_attention(state.model):
            raise ValueError(
                'train_loader.dataset.metadata.attention: summary needs a model that hides prefix tokens by the '
                "batch's prefix_mask: name: meco_mpt_causal_lm with attn_config.attn_impl: flex or torch. This model "
                'would ignore it and train with full attention to the prefix.'
            )
        if not self.check_document_masking:
            return
        uses = model_uses_sequence_id(state.model)
        wants = loader.injector.document_masking
        if wants and uses is None:
            raise ValueError(
                f'document masking is on (dataset.document_masking: true) but {type(state.model).__name__} '
                'cannot mask attention by sequence_id. Use an MPT model (name: meco_mpt_causal_lm) or set '
                'document_masking: false in the train_loader dataset block.'
            )
        if wants and not uses:
            raise ValueError(
                'document masking is on in the train loader but the model ignores sequence_id: set '
                'model.attn_config.attn_uses_sequence_id: true (or dataset.document_masking: false).'
            )
        if uses and not wants:
            raise ValueError(
                'the model masks attention by sequence_id (attn_uses_sequence_id: true) but the train '
                'loader emits none: set dataset.document_masking: true in the train_loader.'
            )
        log.info(
            'metadata_conditioning: document masking %s, metadata kind %s, prefixes %s',
            'on' if wants else 'off',
            loader.metadata.kind,
            'on' if loader.injector.enabled else 'off',
        )
