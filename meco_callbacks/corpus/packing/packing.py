"""Corpus conversion stage 2: a document MDS becomes a packed MDS of training rows of ``max_seq_len`` slots.

Each document is written as ``[BOS] doc EOS`` (BOS only when the tokenizer itself adds one, EOS always). Each
row records its segments' lengths, URLs and metadata, so the loader can insert a prefix before every segment
and rebuild ``sequence_id`` at load time (``formats.py`` describes the columns). Two layouts:

- with room (``reserve_prefix``, or ``strategy='bfd'``): each segment gets the slots its longest prefix among
  the reserved kinds needs, so the loader drops no document token (``reserved_rows``, ``row_planning``);
- without room (the first layout): rows of exactly ``max_seq_len`` document tokens (``stream_rows``).

Both run the same plan of document ranges, in worker processes or in this one, one part per range
(``pack_parts``: resumable, shareable among machines with ``part``); the output is byte-identical for any number
of workers, any split into parts and any interruption. Parts are joined in plan order into one index. Either
side may be on object storage (``remote``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from streaming.base.util import bytes_to_int

from meco_callbacks.corpus.packing.document_set import (
    IN_OTHER_SPLIT,
    DocumentRange,
    SpecialTokens,
    Split,
    open_document_dataset,
    plan_ranges,
)
from meco_callbacks.corpus.packing.heldout import gather_held_out
from meco_callbacks.corpus.packing.pack_parts import (
    MEASURES,
    PartSelection,
    claim_join,
    join_parts,
    pack_parts,
    packing_id,
    packing_store,
    prepare_staging,
    reclaim_join,
)
from meco_callbacks.corpus.packing.reservation_values import with_document_values
from meco_callbacks.corpus.packing.reserved_rows import remember_tokenizer
from meco_callbacks.corpus.packing.row_planning import STRATEGIES
from meco_callbacks.corpus.packing.shard_cache import CacheLimit
from meco_callbacks.corpus.storage.output import existing_output, existing_remote_output, replace_output
from meco_callbacks.corpus.storage.remote import Remote
from meco_callbacks.data.metadata import DEFAULT_TEMPLATE
from meco_callbacks.data.prefix import PrefixReservation
from meco_callbacks.formats import (
    DATASET_INFO_FILE,
    DOCUMENT_FORMAT,
    PACKED_FORMAT,
    read_dataset_info,
    write_dataset_info,
)
from meco_callbacks.tokenizer.fingerprint import tokenizer_info
from meco_callbacks.tokenizer.loading import load_tokenizer

logger = logging.getLogger(__name__)


# What makes two packed datasets the same dataset (label -> path in meco_dataset.json): source, settings, tokenizer.
PACKED_IDENTITY = {
    'max_seq_len': 'max_seq_len',
    'tokenizer fingerprint': 'tokenizer.fingerprint',
    'source path': 'source.path',
    'metadata columns': 'source.metadata_columns',
    'compression': 'compression',
    'strategy': 'strategy',
    'prefix room': 'reserve_prefix',
}


def pack_documents(
    documents_dir: str | Path,
    out_dir: str | Path,
    max_seq_len: int,
    tokenizer: Any = None,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    metadata_columns: Sequence[str] | None = None,
    compression: str | None = None,
    documents_per_task: int | None = None,
    reserve_prefix: Sequence[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    strategy: str = 'stream',
    holdout: float = 0.0,
    documents_remote: str | None = None,
    remote: str | None = None,
    part: PartSelection | str | None = None,
    bins: str | None = None,
    compact_buckets: int | None = None,
    cache_limit: int | str | None = None,
) -> dict[str, Any]:
    """Pack a document MDS into rows of ``max_seq_len`` slots in ``out_dir``; returns the stats.

    ``reserve_prefix`` names the metadata kinds (as in the loader's ``metadata.kind``) whose prefixes, built
    with ``template``, get room before every segment; the loader then drops no document token. ``strategy``
    is ``stream`` (documents in order, cut at row ends) or ``bfd`` (best-fit-decreasing within each window:
    ``documents_per_task`` documents, or about 32 MB of document shards by default). Without a reservation and
    with ``stream``, rows hold exactly ``max_seq_len`` document tokens (the first layout). ``tokenizer`` (a path, hub name or loaded tokenizer) is
    required when the documents carry no info file and must match the recorded fingerprint when they do.
    ``out_dir`` is written in a temporary sibling and renamed when complete; one that holds a different
    dataset is refused unless ``overwrite``. The output does not depend on ``num_workers``. With ``holdout``
    (a fraction), documents are split by a hash of their URL into ``out_dir/train`` and ``out_dir/heldout``
    (about that fraction), and the stats of each are returned under ``train`` and ``heldout``.
    ``documents_remote`` and ``remote`` (object-storage URLs, or directories standing for them) put either side on
    object storage in Streaming's ``(local, remote)`` convention: ``documents_dir`` is then the local cache the
    shards are downloaded into, and ``out_dir`` the local scratch parts are written in before their upload.
    ``part`` (``'I/N'``) packs only the I-th of N blocks of windows and reuses finished parts; until every part is
    finished the result is ``{'part': 'I/N', 'joined': False}``, and the run that finishes the last one joins. ``bins``
    (``quantiles:N`` or ``E1,E2,...``) gives the edges of reserved ``bins:<column>`` kinds (``quality_bins``).
    ``cache_limit`` (bytes, or ``'20GB'``) bounds the local cache of a ``documents_remote`` set: shards are evicted
    once no later window reads them (``shard_cache``), and the peak use is logged.
    ``compact_buckets``: the hash buckets of a reserved ``compact`` kind (``data/compact.py``, default there).
    """
    if max_seq_len < 1:
        raise ValueError(f'max_seq_len must be at least 1, got {max_seq_len}.')
    if num_workers < 1:
        raise ValueError(f'num_workers must be at least 1, got {num_workers}.')
    if documents_per_task is not None and documents_per_task < 1:
        raise ValueError(f'documents_per_task must be at least 1, got {documents_per_task}.')
    if strategy not in STRATEGIES:
        raise ValueError(f'packing strategy {strategy!r} is not known; use one of {", ".join(STRATEGIES)}.')
    reservation = PrefixReservation(tuple(dict.fromkeys(reserve_prefix)), template) if reserve_prefix else None
    documents = Path(documents_dir).resolve()
    out = Path(out_dir).resolve()
    source = Remote(documents_remote, documents) if documents_remote else None
    if cache_limit is not None and source is None:
        raise ValueError('cache_limit (--cache-limit) bounds the cache of documents read from object storage only.')
    cache = CacheLimit(documents, bytes_to_int(cache_limit)) if cache_limit is not None else None
    if source is not None:
        source.fetch(DATASET_INFO_FILE)
    selection = PartSelection.parse(part) if isinstance(part, str) else part
    doc_info = read_dataset_info(documents)
    if doc_info is not None and doc_info.get('format') != DOCUMENT_FORMAT:
        raise ValueError(
            f'{documents} holds a {doc_info.get("format")!r} dataset, not documents '
            f'({DOCUMENT_FORMAT!r}); the packer reads the output of convert/documents.py.'
        )
    dataset = open_document_dataset(documents, metadata_columns, source)
    tokenizer_entry, loaded = resolve_tokenizer(documents, doc_info, tokenizer, need_tokenizer=reservation is not None)
    special = SpecialTokens(
        eos=int(tokenizer_entry['eos_token_id']),
        bos=int(tokenizer_entry['bos_token_id']) if tokenizer_entry['adds_bos'] else None,
    )
    info: dict[str, Any] = {
        'format': PACKED_FORMAT,
        'max_seq_len': max_seq_len,
        'tokenizer': tokenizer_entry,
        'source': {
            'path': documents_remote or str(documents),
            'format': doc_info.get('format') if doc_info else None,
            'documents': dataset.num_documents,
            'metadata_columns': list(dataset.metadata_columns),
        },
        'compression': compression,
        'strategy': strategy,
        'reserve_prefix': reservation.to_info(tokenizer_entry['fingerprint']) if reservation else None,
    }
    if reservation is not None and loaded is not None:
        remember_tokenizer(loaded, tokenizer_entry['fingerprint'])
    ranges = plan_ranges(dataset, documents_per_task, special, tokenizer_entry.get('vocab_size'))
    reservation = with_document_values(reservation, info, ranges, loaded, bins, compact_buckets, tokenizer_entry)
    if not holdout:
        stats = _pack_split(ranges, documents, out, info, num_workers, progress, overwrite, remote, selection, cache)
        if cache is not None:
            cache.log()
        return stats
    if not 0 < holdout < 1:
        raise ValueError(f'holdout must be a fraction in (0, 1), e.g. 0.01; got {holdout}.')
    split_info = {'holdout': holdout, 'by': 'sha256 of the URL'}
    gathered = out / 'heldout.documents'  # the held-out documents, set aside by the training parts
    train = _pack_split(
        [replace(task, split=Split(holdout, held_out=False)) for task in ranges],
        documents,
        out / 'train',
        {**info, 'split': {'name': 'train', **split_info}},
        num_workers,
        progress,
        overwrite,
        remote and f'{remote.rstrip("/")}/train',
        selection,
        cache,
        held_out_documents=gathered,
    )
    if 'joined' in train:
        return {'train': train, 'heldout': train}
    held = open_document_dataset(gathered, list(dataset.metadata_columns))
    heldout = _pack_split(
        plan_ranges(held, None, special, tokenizer_entry.get('vocab_size')),  # windows of the usual size
        gathered,
        out / 'heldout',
        {**info, 'split': {'name': 'heldout', **split_info}},
        num_workers,
        progress,
        overwrite,
        remote and f'{remote.rstrip("/")}/heldout',
        None,
        other_side=train['documents_read'] - train['documents_in_other_split'],
    )
    shutil.rmtree(gathered)
    if cache is not None:
        cache.log()
    return {'train': train, 'heldout': heldout}


def _pack_split(
    ranges: list[DocumentRange],
    documents: Path,
    out: Path,
    info: dict[str, Any],
    num_workers: int,
    progress: bool,
    overwrite: bool,
    remote: str | None,
    selection: PartSelection | None,
    cache: CacheLimit | None = None,
    held_out_documents: Path | None = None,
    other_side: int = 0,
) -> dict[str, Any]:
    """Pack the parts of ``selection`` (all when None) into ``out`` (or ``remote``) and join them once all are done.

    Parts are kept in a staging directory beside ``out`` until joined (``pack_parts``); the joined dataset is
    renamed to ``out``, or uploaded to ``remote`` (index.json, then meco_dataset.json, last) with the staging
    directory removed. Returns the stats, or a summary of this run's part while others are missing.
    """
    staging = out.with_name(out.name + '.packing')
    target = Remote(remote, staging) if remote else None
    _check_output(out, documents, info, overwrite, target)
    max_seq_len, strategy = info['max_seq_len'], info['strategy']
    reservation = PrefixReservation.from_info(info['reserve_prefix']) if info['reserve_prefix'] else None
    started = time.perf_counter()
    reclaim_join(staging)
    prepare_staging(staging, len(ranges))
    packing = packing_id(info, (documents / 'index.json').read_bytes(), ranges)
    store = packing_store(staging, packing, target)
    stats = pack_parts(ranges, store, packing, info, num_workers, progress, selection, cache)
    if stats is None:
        return {'part': str(selection), 'joined': False}
    other = stats['skipped'].pop(IN_OTHER_SPLIT, 0)
    if 'split' in info:  # the held-out set is packed from the held-out documents alone: the rest are counted here
        stats['documents_in_other_split'] = other + other_side
        stats['documents_read'] += other_side
    if stats['rows'] == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(
            f'{documents} holds {stats["document_tokens"] + stats["special_tokens"]} tokens (BOS/EOS included) '
            f'for {out.name}, fewer than one row of max_seq_len={max_seq_len}: nothing to train on. Use a '
            'smaller --max-seq-len or more documents.'
        )
    joining = claim_join(staging)
    if joining is None:
        logger.info('Another job finished the last part at the same time and is joining the parts into %s.', out)
        return {'part': str(selection), 'joined': False}
    join_parts(joining)
    if held_out_documents is not None:
        gather_held_out(joining, held_out_documents, info['tokenizer'], target and Remote(target.url, joining))
    write_dataset_info(joining, {**info, 'stats': stats})
    if target is not None:
        published = Remote(remote, joining)
        published.upload('index.json')
        published.upload(DATASET_INFO_FILE)
        shutil.rmtree(joining)
    else:
        (joining / MEASURES).unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_output(out, joining)
    seconds = time.perf_counter() - started
    logger.info(
        'Packed %d documents (%d skipped: %s) into %d rows of %d slots in %s with %d worker(s), strategy %s, '
        'room for %s: %.0f documents/s, %.0f document tokens/s; padding %.2f%%, room %.2f%%, %d tokens dropped.',
        stats['documents_packed'],
        sum(stats['skipped'].values()),
        stats['skipped'],
        stats['rows'],
        max_seq_len,
        remote or out,
        num_workers,
        strategy,
        ', '.join(reservation.kinds) if reservation else 'no prefix',
        stats['documents_read'] / seconds,
        (stats['document_tokens'] + stats['special_tokens']) / seconds,
        100 * stats.get('padding_tokens', 0) / stats['tokens'],
        100 * stats.get('reserved_tokens', 0) / stats['tokens'],
        stats['tokens_dropped'],
    )
    return stats


def resolve_tokenizer(
    documents_dir: Path, doc_info: dict[str, Any] | None, tokenizer: Any, need_tokenizer: bool = False
) -> tuple[dict[str, Any], Any]:
    """The tokenizer entry to pack with and record, and the tokenizer itself when given or ``need_tokenizer``.

    The entry is the documents' own record, checked against ``tokenizer`` if given; reserving prefix room
    needs the tokenizer itself, loaded by the recorded name when none is given.
    """
    recorded = doc_info.get('tokenizer') if doc_info else None
    if tokenizer is None and need_tokenizer and recorded is not None:
        tokenizer = recorded.get('name')
        if not tokenizer:
            raise ValueError(f'{documents_dir} records no tokenizer name: pass --tokenizer to reserve prefix room.')
    if tokenizer is None:
        if recorded is None:
            raise ValueError(
                f"{documents_dir} has no tokenizer record (no meco_dataset.json, e.g. the MeCo authors' "
                f'released data): pass --tokenizer with the tokenizer that produced its input_ids '
                f'(for the MeCo release: meta-llama/Meta-Llama-3-8B) so its fingerprint is recorded.'
            )
        missing = {'fingerprint', 'eos_token_id', 'bos_token_id', 'adds_bos'} - recorded.keys()
        if missing:
            raise ValueError(
                f'the tokenizer record of {documents_dir} lacks {sorted(missing)}: pass --tokenizer '
                f'with the tokenizer that produced the documents.'
            )
        return recorded, None
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(str(tokenizer))
    given = tokenizer_info(tokenizer)
    if recorded is not None and recorded.get('fingerprint') != given['fingerprint']:
        raise ValueError(
            f'tokenizer {given["name"]!r} (fingerprint {given["fingerprint"]}) is not the one that '
            f'produced {documents_dir}: it was tokenized with {recorded.get("name")!r} (fingerprint '
            f'{recorded.get("fingerprint")}). Pass that tokenizer, or omit --tokenizer to use the record.'
        )
    if given['eos_token_id'] is None:
        raise ValueError(f'tokenizer {given["name"]!r} has no EOS token; the packer ends every document with one.')
    return ({**given, **recorded} if recorded is not None else given), tokenizer


def _check_output(out: Path, documents: Path, info: dict[str, Any], overwrite: bool, remote: Remote | None) -> None:
    """Refuse an output that is (or contains, or is inside) the input, or that holds a different dataset."""
    if remote is not None:
        existing_remote_output(remote, info, PACKED_IDENTITY, 'packed dataset', overwrite)
        return
    if out == documents or documents.is_relative_to(out) or out.is_relative_to(documents):
        raise ValueError(f'the output {out} overlaps the documents {documents}; choose a separate directory.')
    if existing_output(out, info, PACKED_IDENTITY, 'packed dataset', overwrite) is not None:
        logger.info('%s holds a packed dataset made with the same settings; rebuilding it.', out)
