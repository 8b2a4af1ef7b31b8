"""The ``meco`` dataloader, registered in llm-foundry: packed rows in, MeCo training batches out.

train_loader:
  name: meco
  dataset: {local: /data/packed, shuffle: true, max_seq_len: 8192,
            metadata: {kind: domain, template: "URL: {}\\n\\n", enabled: true, max_chars: 100,
                       drop_probability: 0.0, position: prefix, loss: false, attention: full},
            document_masking: true, document_start_target: true}
  drop_last: true
  num_workers: 8
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from composer.core import DataSpec
from torch.utils.data import DataLoader

from meco_callbacks.config_checks import check_bool, check_choice, check_int, check_mapping, check_number, check_str
from meco_callbacks.data.collator import PackedCollator, PrefixInjector
from meco_callbacks.data.dataset import (
    PREFIX_OVERFLOW,
    MeCoPackedDataset,
    build_packed_dataset,
    check_packed_datasets,
    documents_start_with_bos,
    with_recorded_bins,
    with_recorded_compact,
)
from meco_callbacks.data.metadata import MetadataConfig

log = logging.getLogger(__name__)


class MeCoDataLoader(DataLoader):
    """A torch DataLoader of packed batches that carries what the MeCo algorithm and callback act on.

    With ``cooldown_loader`` set (separate cooldown streams), iteration draws from this loader until the
    injector is switched off, then from the cooldown loader; batches the main loader's workers had
    prefetched past that point are discarded, and the main dataset's saved position is the boundary.
    """

    def __init__(
        self,
        dataset: MeCoPackedDataset,
        *,
        injector: PrefixInjector,
        metadata: MetadataConfig,
        dataset_config: Mapping[str, Any],
        loader_config: Mapping[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.injector = injector
        self.metadata = metadata
        self.dataset_config = dict(dataset_config)
        self.loader_config = dict(loader_config)
        self.cooldown_loader: DataLoader | None = None
        self.packed_infos: list[dict[str, Any]] = []  # the packed sets' meco_dataset.json records, as checked

    def __iter__(self) -> Iterator[Any]:
        if self.cooldown_loader is None:
            return super().__iter__()
        return self._iter_switching()

    def _iter_switching(self) -> Iterator[Any]:
        """Main batches while conditioning, then the cooldown loader's batches; the main workers stop at the switch."""
        main = None
        while self.injector.enabled:
            if main is None:
                main = super().__iter__()
            try:
                batch = next(main)
            except StopIteration:
                return
            yield batch
        # With persistent workers the DataLoader keeps its iterator (and so its workers) alive: stop them here.
        # What they prefetched past the boundary is never used.
        if main is not None and hasattr(main, '_shutdown_workers'):
            main._shutdown_workers()
        self._iterator = None
        del main
        yield from self.cooldown_loader


def build_meco_loader(
    tokenizer: Any,
    device_batch_size: int,
    dataset: Mapping[str, Any],
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = 2,
    persistent_workers: bool = True,
    timeout: int = 0,
) -> MeCoDataLoader:
    """Build the loader from the YAML's ``dataset`` block and loader keys (see the module docstring)."""
    if tokenizer is None:
        raise ValueError("the meco dataloader needs the run's tokenizer (set `tokenizer:` in the YAML).")
    if int(device_batch_size) != device_batch_size:
        raise ValueError(f'device_batch_size must be a whole number of rows, got {device_batch_size}.')
    check_loader_settings(
        dataset,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        persistent_workers=persistent_workers,
        timeout=timeout,
    )
    config = dict(dataset)
    metadata = MetadataConfig.from_dict(config.pop('metadata', None))
    document_masking = config.pop('document_masking', True)
    prefix_overflow = config.pop('prefix_overflow', 'error')
    document_start_target = config.pop('document_start_target', True)
    if not isinstance(document_start_target, bool):
        raise ValueError(f'document_start_target must be true or false; got {document_start_target!r}.')
    if 'max_seq_len' not in config:
        raise ValueError('the meco dataset block needs max_seq_len (the packed row length).')
    max_seq_len = int(config['max_seq_len'])
    infos = check_packed_datasets(config, tokenizer, max_seq_len, metadata, prefix_overflow)
    metadata = with_recorded_compact(with_recorded_bins(metadata, infos), infos)
    packed = build_packed_dataset(config, batch_size=int(device_batch_size))
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    injector = PrefixInjector(
        max_seq_len,
        enabled=metadata.enabled and metadata.active,
        document_masking=document_masking,
        pad_token_id=pad_token_id,
        position=metadata.position,
        metadata_loss=metadata.loss,
        document_start_target=document_start_target,
        summary_attention=metadata.attention == 'summary',
    )
    bos_id = tokenizer.bos_token_id if documents_start_with_bos(infos, tokenizer) else None
    collator = PackedCollator(tokenizer, metadata, max_seq_len, bos_id, seed=packed.shuffle_seed)
    workers = {'prefetch_factor': prefetch_factor, 'persistent_workers': persistent_workers} if num_workers else {}
    log.info(
        'meco loader: metadata %s as %s (%s, drop probability %g, loss %s, attention %s), document masking %s, '
        '%d workers',
        metadata.kind,
        metadata.position,
        'on' if injector.enabled else 'off',
        metadata.drop_probability,
        'on' if metadata.loss else 'off',
        metadata.attention,
        'on' if document_masking else 'off',
        num_workers,
    )
    loader_config = {
        'drop_last': drop_last,
        'num_workers': num_workers,
        'pin_memory': pin_memory,
        'prefetch_factor': prefetch_factor,
        'persistent_workers': persistent_workers,
        'timeout': timeout,
    }
    loader = MeCoDataLoader(
        packed,
        injector=injector,
        metadata=metadata,
        dataset_config=dict(dataset),
        loader_config=loader_config,
        batch_size=int(device_batch_size),
        collate_fn=collator,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        timeout=timeout,
        **workers,
    )
    loader.packed_infos = infos
    return loader


def check_loader_settings(dataset: Any, **loader: Any) -> None:
    """The types of the ``meco`` loader's keys and of the dataset keys it reads itself (``metadata`` is checked by
    ``MetadataConfig``), so that a wrong value names its key instead of failing deep inside or meaning something else.
    """
    check_mapping('the meco loader dataset block', dataset)
    where = 'meco loader dataset.'
    if 'max_seq_len' in dataset:
        check_int(where + 'max_seq_len', dataset['max_seq_len'], minimum=1)
    check_bool(where + 'document_masking', dataset.get('document_masking', True))
    check_choice(where + 'prefix_overflow', dataset.get('prefix_overflow', 'error'), PREFIX_OVERFLOW)
    for key in ('local', 'remote', 'split'):
        check_str(where + key, dataset.get(key), optional=True)
    check_bool(where + 'shuffle', dataset.get('shuffle', False))
    if 'shuffle_seed' in dataset:
        check_int(where + 'shuffle_seed', dataset['shuffle_seed'])
    streams = check_mapping(where + 'streams', dataset.get('streams'), optional=True)
    for name, stream in (streams or {}).items():
        check_mapping(f'{where}streams.{name}', stream)
    for key in ('drop_last', 'pin_memory', 'persistent_workers'):
        check_bool(f'meco loader {key}', loader[key])
    check_int('meco loader num_workers', loader['num_workers'], minimum=0)
    if loader['prefetch_factor'] is not None:
        check_int('meco loader prefetch_factor', loader['prefetch_factor'], minimum=1)
    check_number('meco loader timeout', loader['timeout'], 'a number of seconds (0: no timeout)')


def build_cooldown_loader(main: MeCoDataLoader, streams: Mapping[str, Any]) -> DataLoader:
    """A loader over ``streams`` with the main loader's settings and collator (prefixes stay off in cooldown)."""
    config = {
        k: v
        for k, v in main.dataset_config.items()
        if k
        not in (
            'streams',
            'local',
            'remote',
            'split',
            'metadata',
            'document_masking',
            'prefix_overflow',
            'document_start_target',
        )
    }
    config['streams'] = dict(streams)
    check_packed_datasets(config, main.collate_fn.tokenizer, int(config['max_seq_len']))
    dataset = build_packed_dataset(config, batch_size=int(main.batch_size))
    settings = main.loader_config
    workers = (
        {'prefetch_factor': settings['prefetch_factor'], 'persistent_workers': settings['persistent_workers']}
        if settings['num_workers']
        else {}
    )
    return DataLoader(
        dataset,
        batch_size=main.batch_size,
        collate_fn=main.collate_fn,
        drop_last=settings['drop_last'],
        num_workers=settings['num_workers'],
        pin_memory=settings['pin_memory'],
        timeout=settings['timeout'],
        **workers,
    )


def count_tokens(batch: Mapping[str, Any]) -> dict[str, int]:
    """Tokens in a model batch as ints (llm-foundry's counter returns tensors, which Composer re-wraps every batch
    with a warning): ``total`` attended tokens (``attention_mask.sum()``, prefixes included) and ``loss_generating``."""
    from llmfoundry.data.utils import get_tokens_per_batch_func

    return {name: int(value) for name, value in get_tokens_per_batch_func()(batch).items()}


class DocumentTokens:
    """The DataSpec's ``get_num_tokens_in_batch``: ``total`` is the batch's document tokens, prefixes not counted.

    Composer adds ``total`` to ``state.timestamp.token``, which every ``tok`` time reads (``max_duration``,
    ``t_warmup``, ``eval_interval``, ``save_interval``, the cooldown boundary) and the speed monitor's tokens/s.
    Counting ``attention_mask.sum()`` there, as llm-foundry does, counted MeCo's prefixes, so a budget in ``tok``
    gave MeCo fewer steps than its baseline on the same rows. The injector counts a batch's document tokens as it
    builds it (stored tokens kept in the row: BOS, text, EOS); Composer asks right after the batch transform, for
    the batch the injector returned. ``loss_generating`` stays llm-foundry's count (tokens with a label), and any
    other batch (one the injector did not build) falls back to llm-foundry's counts.
    """

    def __init__(self, injector: PrefixInjector) -> None:
        self.injector = injector

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, int]:
        counts = count_tokens(batch)
        ids = batch.get('input_ids') if isinstance(batch, Mapping) else None
        if ids is not None and ids is self.injector.last_input_ids and self.injector.stats.last:
            counts['total'] = int(self.injector.stats.last['document_tokens'])
        return counts


def meco_data_spec(loader: MeCoDataLoader) -> DataSpec:
    """Wrap a loader so Composer injects prefixes per batch in the main process and counts document tokens."""
    return DataSpec(
        dataloader=loader, batch_transforms=loader.injector, get_num_tokens_in_batch=DocumentTokens(loader.injector)
    )


def build_meco_dataloader(
    tokenizer: Any, device_batch_size: int, dataset: Mapping[str, Any], **loader_kwargs: Any
) -> DataSpec:
    """llm-foundry's ``dataloaders`` entry ``meco``: the loader wrapped in its DataSpec."""
    return meco_data_spec(build_meco_loader(tokenizer, device_batch_size, dataset, **loader_kwargs))
