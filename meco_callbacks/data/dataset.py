"""The packed MeCo dataset: a StreamingDataset whose rows are training sequences, checked against its tokenizer.

One stored row is one training sequence, so Streaming's sample-exact resumption is batch-exact here.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from streaming import Stream, StreamingDataset

from meco_callbacks.data.compact import COMPACT_KIND
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import PrefixReservation, PrefixTokens
from meco_callbacks.formats import DATASET_INFO_FILE, PACKED_FORMAT
from meco_callbacks.tokenizer.fingerprint import adds_bos_token, tokenizer_fingerprint

log = logging.getLogger(__name__)

PREFIX_OVERFLOW = ('error', 'drop')
STREAMING_KEYS = frozenset(inspect.signature(StreamingDataset.__init__).parameters) - {'self'}


class MeCoPackedDataset(StreamingDataset):
    """Packed rows as dicts: ``input_ids`` (int64), ``segment_lengths``, ``continued``, ``urls``, ``metadata``,
    ``prefix_room`` (None in sets packed without room), ``epoch`` (the epoch being iterated, 0 outside one).

    With separate cooldown streams the run's epoch position covers two datasets: samples before
    ``cooldown_start_sample`` come from this one, the rest from ``cooldown_dataset``. Composer saves and
    restores only the train loader's dataset, so this dataset's state carries both positions.
    """

    def __init__(self, max_seq_len: int, **streaming_kwargs: Any) -> None:
        super().__init__(**streaming_kwargs)
        self.max_seq_len = max_seq_len
        self.cooldown_dataset: MeCoPackedDataset | None = None
        self.cooldown_start_sample: int | None = None
        self.pending_cooldown_state: dict[str, Any] | None = None
        self.epoch = 0

    def _resume_incr_epoch(self) -> tuple[int, int]:
        """Streaming's start of an epoch in this worker; remembers the epoch for the samples it yields.

        The epoch Streaming resumes or starts (not its shared next-epoch counter, which another worker may not
        have advanced yet), so metadata dropping (``metadata.drop_probability``) sees the same epoch after a resume.
        """
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self.epoch = epoch
        return epoch, sample_in_epoch

    def state_dict(self, num_samples: int, from_beginning: bool) -> dict[str, Any]:
        start = self.cooldown_start_sample
        if start is None or self.cooldown_dataset is None:
            return super().state_dict(num_samples, from_beginning)
        state = super().state_dict(start, from_beginning)
        state['meco_cooldown'] = {
            'start_sample': start,
            'state': self.cooldown_dataset.state_dict(num_samples - start, from_beginning),
        }
        return state

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        obj = dict(obj)
        self.pending_cooldown_state = obj.pop('meco_cooldown', None)
        super().load_state_dict(obj)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = super().__getitem__(idx)
        missing = [c for c in ('input_ids', 'segment_lengths', 'continued', 'urls', 'metadata') if c not in sample]
        if missing:
            raise ValueError(
                f'sample {idx} lacks column(s) {missing}: this is not a MeCo packed dataset. '
                'Build one with convert/documents.py then convert/pack.py.'
            )
        return {
            'input_ids': np.asarray(sample['input_ids'], dtype=np.int64),
            'segment_lengths': np.asarray(sample['segment_lengths'], dtype=np.int64),
            'continued': int(sample['continued']),
            'urls': sample['urls'],
            'metadata': sample['metadata'],
            'prefix_room': sample.get('prefix_room'),
            'epoch': self.epoch,
        }


def build_packed_dataset(
    config: Mapping[str, Any], batch_size: int, replication: int | None = None
) -> MeCoPackedDataset:
    """Build the dataset from the loader's ``dataset`` block (llm-foundry's streaming keys plus ``max_seq_len``)."""
    config = dict(config)
    unknown = sorted(set(config) - STREAMING_KEYS - {'max_seq_len'})
    if unknown:
        raise ValueError(
            f'unknown key(s) {unknown} in the MeCo dataset config; it takes max_seq_len, metadata, '
            f"document_masking and StreamingDataset's keys: {sorted(STREAMING_KEYS)}."
        )
    streams = config.pop('streams', None)
    if isinstance(streams, Mapping):
        streams = [Stream(**dict(stream)) for stream in streams.values()]
    return MeCoPackedDataset(streams=streams, batch_size=batch_size, replication=replication, **config)


def stream_locations(config: Mapping[str, Any]) -> list[tuple[str | None, str | None]]:
    """The (remote, local) directories of every stream in a dataset block, ``split`` applied."""
    split = config.get('split')
    streams = config.get('streams')
    entries: Sequence[Mapping[str, Any]] = list(streams.values()) if isinstance(streams, Mapping) else [config]
    out = []
    for entry in entries:
        remote, local = entry.get('remote'), entry.get('local')
        entry_split = entry.get('split', split)
        if entry_split:
            remote = os.path.join(remote, entry_split) if remote else None
            local = os.path.join(local, entry_split) if local else None
        out.append((remote, local))
    return out


def read_packed_info(remote: str | None, local: str | None) -> dict[str, Any] | None:
    """A packed dataset's info file, from its local copy or fetched from its remote; None if neither has one."""
    for directory in (local, remote):
        if directory and '://' not in directory and os.path.isfile(os.path.join(directory, DATASET_INFO_FILE)):
            with open(os.path.join(directory, DATASET_INFO_FILE)) as f:
                return json.load(f)
    if remote and '://' in remote:
        from streaming.base.storage import download_file

        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, DATASET_INFO_FILE)
            try:
                download_file(f'{remote.rstrip("/")}/{DATASET_INFO_FILE}', target, 60)
            except Exception as err:  # the storage backends raise their own types
                log.warning('could not fetch %s from %s (%s)', DATASET_INFO_FILE, remote, err)
                return None
            with open(target) as f:
                return json.load(f)
    return None


def check_packed_datasets(
    config: Mapping[str, Any],
    tokenizer: Any,
    max_seq_len: int,
    metadata: MetadataConfig | None = None,
    prefix_overflow: str = 'error',
) -> list[dict[str, Any]]:
    """Refuse datasets packed for another tokenizer, row length or prefix; return the infos that were found.

    With ``metadata`` (prefixes to be injected), a set packed with room for other kinds is refused unless
    ``prefix_overflow`` is ``drop``, and a set packed without room gets a warning with the expected loss.
    """
    if prefix_overflow not in PREFIX_OVERFLOW:
        raise ValueError(f'prefix_overflow must be one of {", ".join(PREFIX_OVERFLOW)}; got {prefix_overflow!r}.')
    want = tokenizer_fingerprint(tokenizer)
    infos = []
    for remote, local in stream_locations(config):
        where = local or remote
        info = read_packed_info(remote, local)
        if info is None:
            log.warning('%s has no %s: cannot verify its tokenizer or row length', where, DATASET_INFO_FILE)
            continue
        if info.get('format') != PACKED_FORMAT:
            raise ValueError(
                f'{where} holds a {info.get("format")!r} dataset, not {PACKED_FORMAT!r}: '
                'pack document datasets with convert/pack.py before training.'
            )
        if int(info.get('max_seq_len', max_seq_len)) != max_seq_len:
            raise ValueError(
                f'{where} was packed with max_seq_len {info["max_seq_len"]} but training uses '
                f'{max_seq_len}: repack with convert/pack.py --max-seq-len {max_seq_len} or change '
                'max_seq_len.'
            )
        have = (info.get('tokenizer') or {}).get('fingerprint')
        if have and have != want:
            raise ValueError(
                f'{where} was tokenized with {info["tokenizer"].get("name")!r} (fingerprint {have}) '
                f'but training uses {getattr(tokenizer, "name_or_path", "?")!r} (fingerprint {want}): '
                "token ids would mean different text. Train with the dataset's tokenizer or "
                're-convert the corpus with yours.'
            )
        if metadata is not None and metadata.active and metadata.enabled:
            _check_prefix_room(where, info, tokenizer, metadata, max_seq_len, prefix_overflow)
        infos.append(info)
    return infos


def documents_start_with_bos(infos: Sequence[Mapping[str, Any]], tokenizer: Any) -> bool:
    """Whether packed documents start with BOS, from the sets' records (the tokenizer's own setting if none).

    The training tokenizer must agree: a record saying otherwise means the set was packed with another
    tokenizer configuration, and the loader would mask or keep the wrong first token.
    """
    adds = adds_bos_token(tokenizer)
    for info in infos:
        recorded = (info.get('tokenizer') or {}).get('adds_bos')
        if recorded is not None and bool(recorded) != adds:
            raise ValueError(
                f'the packed set was written with documents {"starting" if recorded else "not starting"} with BOS, '
                f'but the training tokenizer {getattr(tokenizer, "name_or_path", "?")!r} '
                f'{"adds" if adds else "does not add"} one: train with the tokenizer configuration the set was '
                'packed with, or repack it with this one.'
            )
    return adds


def with_recorded_bins(metadata: MetadataConfig, infos: Sequence[Mapping[str, Any]]) -> MetadataConfig:
    """``metadata`` with the bin edges its packed sets recorded, for a ``bins:`` kind set as ``quantiles: N``."""
    if not metadata.kind.startswith('bins:') or metadata.bins is not None:
        return metadata
    resolved = {
        PrefixReservation.from_info(info['reserve_prefix']).with_recorded_bins(metadata).bins
        for info in infos
        if info.get('reserve_prefix') and metadata.kind in info['reserve_prefix']['kinds']
    }
    resolved.discard(None)
    if len(resolved) != 1:
        raise ValueError(
            f'metadata.kind {metadata.kind!r} with metadata.quantiles {metadata.quantiles} reads its bin edges from '
            f'the packed set, but {"no set records them" if not resolved else "the streams record different ones"}'
            f': pack with meco-pack --reserve-prefix {metadata.kind} --bins quantiles:{metadata.quantiles}, or '
            'give the edges as metadata.bins.'
        )
    return replace(metadata, bins=resolved.pop())


def with_recorded_compact(metadata: MetadataConfig, infos: Sequence[Mapping[str, Any]]) -> MetadataConfig:
    """``metadata`` with the compact vocabulary its packed sets recorded, for kind ``compact`` given without one."""
    if metadata.kind != COMPACT_KIND or metadata.compact is not None:
        return metadata
    resolved = [
        PrefixReservation.from_info(info['reserve_prefix']).with_recorded_compact(metadata).compact
        for info in infos
        if info.get('reserve_prefix') and COMPACT_KIND in info['reserve_prefix']['kinds']
    ]
    if not resolved or any(vocabulary != resolved[0] for vocabulary in resolved):
        raise ValueError(
            'metadata.kind compact reads its vocabulary (sites and reserved tokens) from the packed set, but '
            f'{"no set records one" if not resolved else "the streams record different ones"}: pack with meco-pack '
            '--reserve-prefix compact (one packing for all streams), or give the recorded vocabulary as '
            'metadata.compact.'
        )
    return replace(metadata, compact=resolved[0])


def _check_prefix_room(
    where: str, info: Mapping[str, Any], tokenizer: Any, metadata: MetadataConfig, max_seq_len: int, overflow: str
) -> None:
    """Refuse (or, with ``drop``, warn about) prefixes that do not fit the room a set reserved."""
    record = info.get('reserve_prefix')
    if record:
        reservation = PrefixReservation.from_info(record)
        if reservation.covers(metadata):
            return
        message = (
            f'{where} was packed with prefix room for kind(s) {", ".join(reservation.kinds)} (template '
            f'{reservation.template!r}, max_chars {reservation.max_chars}, strip_www {reservation.strip_www}), '
            f'but training uses kind {metadata.kind!r} (template {metadata.template!r}, max_chars '
            f'{metadata.max_chars}, strip_www {metadata.strip_www}), whose prefixes may not fit'
        )
        if metadata.kind == COMPACT_KIND and metadata.kind in reservation.kinds:
            message += " (metadata.compact differs from the vocabulary the set recorded: leave it out to use the set's)"
        if metadata.kind.startswith('bins:') and metadata.kind in reservation.kinds:
            message += (
                f' (the set records bins {[(c, list(e), q) for c, e, q in reservation.bins]} as (column, edges, '
                f'quantiles); training asks for edges {metadata.bins} and quantiles {metadata.quantiles})'
            )
        if overflow != 'drop':
            raise ValueError(
                f'{message}. Repack with convert/pack.py --reserve-prefix {metadata.kind} (several kinds can be '
                'named), or set train_loader.dataset.prefix_overflow: drop to accept document tokens dropped.'
            )
        log.warning('%s: document tokens pushed off a row are dropped (prefix_overflow: drop).', message)
        return
    if metadata.kind == COMPACT_KIND:
        with_recorded_compact(metadata, [info])  # a set packed without room records no vocabulary: say how to fix
    stats = info.get('stats') or {}
    rows, segments = stats.get('rows'), stats.get('segments')
    if rows and segments:
        typical = len(PrefixTokens(tokenizer, metadata).for_document('https://www.example.com/'))
        fraction = segments / rows * typical / max_seq_len
        log.warning(
            '%s was packed without prefix room: every prefix token pushes a document token off its row, the same '
            'tokens every pass (about %.1f%% of document tokens here, from %.1f segments per row and ~%d-token '
            'prefixes). Repack with convert/pack.py --reserve-prefix %s to train on every token.',
            where,
            100 * fraction,
            segments / rows,
            typical,
            metadata.kind,
        )
