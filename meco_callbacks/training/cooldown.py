"""The ``meco_cooldown`` callback: the last part of training on plain documents, inside one run.

The phase of a batch is a function of the step alone: a batch is conditioned (prefixes injected) while the
run's time, in ``max_duration``'s unit, is before the boundary, and plain from the boundary on. The callback
sets it on the train loader's injector before every batch, in the main process, where injection happens;
so prefetched batches cannot leak a phase, and a resumed run (whose step comes from the checkpoint and
whose data position comes from Streaming) sees exactly the batches of an uninterrupted one. The data stream
itself continues where it is, so no sample is repeated or skipped; model, optimizer and LR schedule are
untouched (the schedule simply continues, as in the paper).

    callbacks:
      meco_cooldown:
        cooldown: 0.1          # the last 10% of max_duration; or
        # boundary: 36000ba    # an absolute time in max_duration's unit (ba, tok or sp)
        # cooldown_streams:    # optional: cool down on other packed data, from its beginning
        #   hq: {local: /data/cooldown-packed}

With ``cooldown_streams`` the loader draws from those streams from the boundary on; the train dataset's
saved position then records both datasets, so resuming on either side of the boundary stays exact.

The boundary is saved in the checkpoint. Resuming with a ``cooldown``, ``boundary`` or ``max_duration`` that
places it elsewhere stops the run with both boundaries in the message; set ``allow_boundary_change: true`` to
move it on purpose (e.g. to lengthen a run). A checkpoint already in cooldown never accepts a boundary that
lies ahead of it, override or not: prefixes would come back.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

from meco_callbacks.config_checks import check_bool, check_mapping, check_number, check_str, refuse
from meco_callbacks.data.dataloader import MeCoDataLoader, build_cooldown_loader
from meco_callbacks.training.algorithm import find_meco_loader

log = logging.getLogger(__name__)

_COMPARABLE_UNITS = (TimeUnit.BATCH, TimeUnit.TOKEN, TimeUnit.SAMPLE)


def cooldown_boundary(max_duration: Time, cooldown: float | None = None, boundary: str | None = None) -> Time:
    """The time at which cooldown starts, in ``max_duration``'s unit; a clear error for anything ambiguous."""
    if max_duration.unit not in _COMPARABLE_UNITS:
        raise ValueError(
            f'meco_cooldown needs max_duration in batches, tokens or samples (ba, tok, sp) to place '
            f'the boundary on an exact batch; got {max_duration}.'
        )
    if boundary is not None:
        if cooldown is not None:
            raise ValueError('meco_cooldown takes either cooldown (a fraction) or boundary (a time), not both.')
        point = Time.from_timestring(str(boundary))
        if point.unit != max_duration.unit:
            raise ValueError(
                f'meco_cooldown boundary {boundary} is in {point.unit.value} but max_duration '
                f'{max_duration} is in {max_duration.unit.value}: give it in the same unit.'
            )
        if not 0 < point.value < max_duration.value:
            raise ValueError(f'meco_cooldown boundary {boundary} must lie inside the run (0, {max_duration}).')
        return point
    fraction = 0.1 if cooldown is None else float(cooldown)
    if not 0 < fraction < 1:
        raise ValueError(
            f'meco_cooldown cooldown must be a fraction in (0, 1) of max_duration; got {cooldown}. '
            'To train without cooldown, leave the callback out.'
        )
    value = round(max_duration.value * (1 - fraction))
    if not 0 < value < max_duration.value:
        raise ValueError(f'cooldown {fraction} of max_duration {max_duration} leaves no batch on one side.')
    return Time(value, max_duration.unit)


class MeCoCooldown(Callback):
    """Switch the MeCo train loader from conditioned to plain batches at an exact, resumable boundary.

    YAML keys: ``cooldown`` (fraction of ``max_duration``, default 0.1) or ``boundary`` (a time in
    ``max_duration``'s unit); ``cooldown_streams`` (optional streams to cool down on); ``allow_boundary_change``
    (default false: a resumed run whose boundary differs from the checkpoint's stops with both values; true
    accepts the new boundary, as long as it does not turn prefixes back on).
    """

    def __init__(
        self,
        cooldown: float | None = None,
        boundary: str | None = None,
        cooldown_streams: Mapping[str, Any] | None = None,
        allow_boundary_change: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ValueError(
                f'unknown meco_cooldown key(s) {sorted(unknown)}; it takes {list(COOLDOWN_KEYS)} '
                '(see the MeCoCooldown docstring).'
            )
        if cooldown is not None and boundary is not None:
            raise ValueError('meco_cooldown takes either cooldown (a fraction) or boundary (a time), not both.')
        if cooldown is not None:
            check_number('meco_cooldown.cooldown', cooldown, 'a fraction in (0, 1) of max_duration, e.g. 0.1')
            if not 0 < cooldown < 1:
                raise refuse('meco_cooldown.cooldown', cooldown, 'a fraction in (0, 1) of max_duration, e.g. 0.1')
        if boundary is not None:
            check_str('meco_cooldown.boundary', boundary)
            try:
                Time.from_timestring(boundary)
            except ValueError:
                raise refuse('meco_cooldown.boundary', boundary, "a time such as '36000ba' or '150000000tok'") from None
        check_mapping('meco_cooldown.cooldown_streams', cooldown_streams, optional=True)
        for name, stream in (cooldown_streams or {}).items():
            check_mapping(f'meco_cooldown.cooldown_streams.{name}', stream)
        check_bool('meco_cooldown.allow_boundary_change', allow_boundary_change)
        self.cooldown = cooldown
        self.boundary_spec = boundary
        self.cooldown_streams = dict(cooldown_streams) if cooldown_streams else None
        self.allow_boundary_change = bool(allow_boundary_change)
        self.boundary: Time | None = None
        self.switched_at_batch: int | None = None
        self._loaded_switch: int | None = None
        self._loaded_boundary: str | None = None

    def in_cooldown(self, state: State) -> bool:
        """Whether the batch about to be drawn belongs to the cooldown phase."""
        assert self.boundary is not None
        return state.timestamp.get(self.boundary.unit).value >= self.boundary.value

    def fit_start(self, state: State, logger: Logger) -> None:
        loader = find_meco_loader(state, 'the meco_cooldown callback')
        if not loader.metadata.enabled or not loader.metadata.active:
            raise ValueError(
                'meco_cooldown switches metadata off, but the train loader never turns it on '
                f'(metadata kind {loader.metadata.kind!r}, enabled {loader.metadata.enabled}): '
                'remove the callback for a baseline run, or enable metadata.'
            )
        assert state.max_duration is not None
        self.boundary = cooldown_boundary(state.max_duration, self.cooldown, self.boundary_spec)
        now = state.timestamp.get(self.boundary.unit).value
        if self._loaded_switch is not None and now < self.boundary.value:
            raise ValueError(
                f'the checkpoint was already in cooldown (since batch {self._loaded_switch}) but the '
                f'configured boundary {self.boundary} lies ahead: prefixes would come back. Use the '
                'cooldown/boundary and max_duration the run started with.'
            )
        self._check_boundary_unchanged()
        self.switched_at_batch = self._loaded_switch
        if self.cooldown_streams and loader.cooldown_loader is None:
            self._attach_cooldown_streams(state, loader)
        logger.log_hyperparameters({'meco/cooldown_boundary': str(self.boundary)})
        log.info(
            'meco_cooldown: conditioning until %s, plain documents from then to %s', self.boundary, state.max_duration
        )
        self._set_phase(state, logger)

    def batch_end(self, state: State, logger: Logger) -> None:
        self._set_phase(state, logger)

    def _set_phase(self, state: State, logger: Logger) -> None:
        """Decide the next batch's phase (Composer has already counted the batches done so far)."""
        loader = find_meco_loader(state, 'the meco_cooldown callback')
        cooling = self.in_cooldown(state)
        loader.injector.enabled = not cooling
        if cooling and self.switched_at_batch is None:
            self.switched_at_batch = int(state.timestamp.batch)
            if loader.cooldown_loader is not None:
                loader.dataset.cooldown_start_sample = int(state.timestamp.sample_in_epoch)
            log.info(
                'meco_cooldown: switched to plain documents at batch %d (%s)', self.switched_at_batch, self.boundary
            )
            logger.log_metrics({'meco/cooldown_start_batch': self.switched_at_batch})

    def _attach_cooldown_streams(self, state: State, loader: MeCoDataLoader) -> None:
        """Build the cooldown loader, restore its position from a checkpoint, and check both datasets suffice."""
        assert self.boundary is not None and state.max_duration is not None
        cooldown = build_cooldown_loader(loader, self.cooldown_streams or {})
        main_dataset, cooldown_dataset = loader.dataset, cooldown.dataset
        total = self._as_samples(state.max_duration, loader)
        after = total - self._as_samples(self.boundary, loader)
        if total > main_dataset.epoch_size or after > cooldown_dataset.epoch_size:
            raise ValueError(
                f'with cooldown_streams the run must fit in one epoch of each dataset: it needs '
                f'{total - after} + {after} samples, the train data has {main_dataset.epoch_size} and the '
                f'cooldown streams {cooldown_dataset.epoch_size}. Shorten max_duration or add data.'
            )
        pending = main_dataset.pending_cooldown_state
        if pending is not None:
            main_dataset.cooldown_start_sample = int(pending['start_sample'])
            cooldown_dataset.load_state_dict(pending['state'])
        main_dataset.cooldown_dataset = cooldown_dataset
        loader.cooldown_loader = cooldown
        log.info(
            'meco_cooldown: cooling down on streams %s (%d samples)',
            sorted(self.cooldown_streams or {}),
            cooldown_dataset.epoch_size,
        )

    @staticmethod
    def _as_samples(time: Time, loader: MeCoDataLoader) -> int:
        """A time in batches, tokens or samples as a number of samples across all ranks."""
        if time.unit == TimeUnit.BATCH:
            return time.value * int(loader.batch_size) * dist.get_world_size()
        if time.unit == TimeUnit.TOKEN:
            return time.value // loader.injector.max_seq_len
        return time.value

    def _check_boundary_unchanged(self) -> None:
        """Refuse a boundary other than the checkpoint's, unless ``allow_boundary_change`` is set."""
        assert self.boundary is not None
        saved = self._loaded_boundary
        if saved is None or Time.from_timestring(saved) == self.boundary:
            return
        if not self.allow_boundary_change:
            raise ValueError(
                f'the checkpoint was trained towards a cooldown boundary at {saved}, but this run places it at '
                f'{self.boundary} (from cooldown/boundary and max_duration). Resume with the settings the run '
                'started with, or set callbacks.meco_cooldown.allow_boundary_change: true to move it on purpose.'
            )
        log.warning(
            'meco_cooldown: boundary moved from %s (checkpoint) to %s (allow_boundary_change)', saved, self.boundary
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            'boundary': None if self.boundary is None else str(self.boundary),
            'switched_at_batch': self.switched_at_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded_switch = state.get('switched_at_batch')
        self._loaded_boundary = state.get('boundary')


COOLDOWN_KEYS = tuple(
    name
    for name, parameter in inspect.signature(MeCoCooldown.__init__).parameters.items()
    if parameter.kind is parameter.POSITIONAL_OR_KEYWORD and name != 'self'
)
