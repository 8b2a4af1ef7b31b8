"""Stage 1 of corpus conversion: raw records -> document MDS, one row per document, tokenized once.

Each document becomes ``input_ids`` (uint32, no BOS/EOS), ``length``, ``url`` and the carried metadata columns
(``formats.DOCUMENT_COLUMNS``). Bad records are skipped with a counted reason (``document_checks``), so that after
every run documents read = written + skipped; the counts, the tokenizer's fingerprint and the backend that
tokenized go into the dataset's info file.

This module drives a conversion: it finds the inputs and cuts them into units (``sources``), records the plan
that makes the run resumable (``conversion_plan``), chooses the tokenizer backend on a sample of the input,
converts the pending units in worker processes (``unit_conversion`` over ``workers.ProcessMap``, largest unit
first) and merges them (``document_merge``). Units never depend on the number of workers or jobs, so every
worker count and job split gives the same bytes, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.documents.conversion_plan import (
    partial_dir,
    plan_conversion,
    record_plan,
    recorded_plan,
)
from meco_callbacks.corpus.documents.document_checks import ConversionStats, DocumentChecker, DocumentPolicy
from meco_callbacks.corpus.documents.document_merge import (
    claim_document_output,
    merge_document_parts,
    publish_documents,
)
from meco_callbacks.corpus.documents.sources import DEFAULT_UNIT_BYTES, FieldMapping, Unit, find_sources, plan_units
from meco_callbacks.corpus.documents.text_sample import sample_texts
from meco_callbacks.corpus.documents.tokenization import TokenizerBackend, build_tokenizer_backend
from meco_callbacks.corpus.documents.unit_conversion import UnitContext, convert_unit, describe_unit
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.corpus.storage.remote import Remote, check_remote
from meco_callbacks.corpus.storage.workers import ProcessMap, WorkerDied
from meco_callbacks.tokenizer.loading import load_tokenizer

log = logging.getLogger(__name__)

SAMPLE_BYTES = 1 << 18  # of input text verifying the tiktoken backend, from up to SAMPLE_UNITS spread units
SAMPLE_UNITS = 16
SAMPLE_TEXT_CHARS = 1 << 12


@dataclass
class ConversionReport:
    """What a conversion run did: the dataset info once complete (None for an unmerged job part) and this run's work.

    ``converted`` counts only the units this run converted, ``reused`` those a previous run had finished;
    ``wall_seconds`` runs from when the run started (the command's start when it says so), so
    ``tokens_per_second`` is this run's own rate.
    """

    output: Path
    info: dict[str, Any] | None
    units_converted: int
    tokenizer_backend: str
    stage_seconds: dict[str, float]
    wall_seconds: float
    convert_seconds: float = 0.0
    units_reused: int = 0
    converted: ConversionStats = field(default_factory=ConversionStats)
    reused: ConversionStats = field(default_factory=ConversionStats)

    @property
    def tokens_per_second(self) -> float:
        """Tokens this run wrote over its whole wall time."""
        return self.converted.tokens_written / max(self.wall_seconds, 1e-9)


def convert_documents(
    inputs: Sequence[str],
    output: str | Path,
    tokenizer: Any,
    *,
    fields: FieldMapping = FieldMapping(),
    policy: DocumentPolicy = DocumentPolicy(),
    tokenizer_backend: str = 'auto',
    num_workers: int = 1,
    job_index: int = 0,
    num_jobs: int = 1,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    overwrite: bool = False,
    progress: bool = True,
    started: float | None = None,
    remote: str | None = None,
) -> ConversionReport:
    """Convert ``inputs`` (files, globs, dataset directories) into a document MDS at ``output``.

    ``tokenizer`` is a Hugging Face fast tokenizer or its name/path. With ``num_jobs`` > 1 this converts only
    the units of part ``job_index`` and leaves the merge (``merge_document_parts``) for when all parts are
    done; otherwise it merges and returns the dataset info. Rerunning an interrupted conversion with the
    same arguments resumes it; rerunning a finished one changes nothing. ``started`` is the
    ``time.perf_counter()`` reading when the run began (a command passes its own start, so that loading the
    libraries counts); by default, the call. With ``remote`` (an object-storage URL, or a directory standing for
    one), each unit is uploaded there as soon as it is finished and the merge uploads index.json and
    meco_dataset.json last; ``output`` stays the local side, which keeps what a rerun resumes from.
    """
    start = time.perf_counter() if started is None else started
    if num_workers < 1 or num_jobs < 1 or not 0 <= job_index < num_jobs:
        raise ValueError(
            f'need num_workers >= 1 and 0 <= job_index < num_jobs, got {num_workers}, {job_index}, {num_jobs}'
        )
    if remote is not None:
        check_remote(remote)
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # parallelism comes from worker processes
    tok = load_tokenizer(tokenizer, require_fast=True) if isinstance(tokenizer, (str, Path)) else tokenizer
    output = Path(output)
    discovery = find_sources(inputs, fields, require_url=policy.missing_url == 'skip')
    units = plan_units(discovery.sources, unit_bytes)
    plan = plan_conversion(
        discovery.sources, discovery.unreadable, units, fields, policy, tok, tokenizer_backend, unit_bytes
    )
    finished = claim_document_output(output, plan['id'], overwrite)
    if finished is not None:
        reused = ConversionStats.from_dict(finished['stats'])
        log.info('%s already holds this conversion (%d documents); nothing to do.', output, reused.documents_written)
        if remote is not None:
            publish_documents(output, remote)
        return ConversionReport(
            output,
            finished,
            0,
            finished['tokenizer_backend'],
            {},
            time.perf_counter() - start,
            units_reused=finished['conversion']['units'],
            reused=reused,
        )
    partial = partial_dir(output)
    recorded = recorded_plan(partial, plan['id'], overwrite)
    checker = DocumentChecker(policy, plan['tokenizer']['vocab_size'], special_token_ids(tok))
    requested = recorded['tokenizer_backend'] if recorded else tokenizer_backend
    backend = verified_backend(units, fields, policy, tok, requested, num_workers)
    if recorded is None:
        record_plan(partial, dict(plan, tokenizer_backend=backend.name, tokenizer_backend_reason=backend.reason))
    context = UnitContext(fields, checker, backend, partial, len(units), Remote(remote, partial) if remote else None)
    mine = [unit for unit in units if unit.index % num_jobs == job_index]
    store = context.store()
    store.clean(context.unit_dir(unit).name for unit in mine)  # attempts of this job's units: their writers are gone
    finished = store.finished(context.unit_dir(unit).name for unit in mine)
    done = [unit for unit in mine if context.unit_dir(unit).name in finished]
    pending = [unit for unit in mine if context.unit_dir(unit).name not in finished]
    reused = ConversionStats()
    for unit in done:
        reused.add(ConversionStats.from_dict(finished[context.unit_dir(unit).name]))
    log.info(
        'Converting %d inputs: %d units%s, %d already done; %d workers; tokenizer backend %s.',
        len(discovery.sources),
        len(mine),
        f' (part {job_index} of {num_jobs})' if num_jobs > 1 else '',
        len(done),
        num_workers,
        backend.name,
    )
    converting = time.perf_counter()
    stage_seconds, converted = _run_units(pending, context, num_workers, progress)
    report = ConversionReport(
        output,
        None,
        len(pending),
        backend.name,
        stage_seconds,
        0.0,
        time.perf_counter() - converting,
        units_reused=len(done),
        converted=converted,
        reused=reused,
    )
    if num_jobs > 1:
        log.info(
            'Part %d of %d is done. When every part is, merge them: python convert/merge.py --output %s%s',
            job_index,
            num_jobs,
            output,
            f' --remote {remote}' if remote else '',
        )
    else:
        report.info = merge_document_parts(output, overwrite=overwrite, remote=remote)
    report.wall_seconds = time.perf_counter() - start
    _log_summary(report)
    return report


def verified_backend(
    units: Sequence[Unit],
    fields: FieldMapping,
    policy: DocumentPolicy,
    tokenizer: Any,
    requested: str,
    num_threads: int,
    extra_sample: Sequence[str] = (),
) -> TokenizerBackend:
    """The tokenizer backend, verified on a sample of the units' texts (and ``extra_sample``, read elsewhere)."""
    sample = sample_texts(
        units,
        fields,
        SAMPLE_BYTES,
        max_units=SAMPLE_UNITS,
        text_chars=SAMPLE_TEXT_CHARS,
        max_document_chars=policy.max_document_chars,
    )
    return build_tokenizer_backend(tokenizer, requested, [*sample, *extra_sample], num_threads=num_threads)


def _run_units(
    units: list[Unit], context: UnitContext, num_workers: int, progress: bool
) -> tuple[dict[str, float], ConversionStats]:
    """Convert ``units`` in this process or in worker processes; CPU seconds per stage and the counts, summed."""
    from tqdm import tqdm

    seconds = {'read': 0.0, 'tokenize': 0.0, 'write': 0.0}
    stats = ConversionStats()
    if not units:
        return seconds, stats
    units = sorted(units, key=lambda unit: -unit.size)  # largest first, so no worker is left with a big one at the end
    counts = {'documents': 0, 'tokens': 0}
    began = time.perf_counter()

    def advance(size: int, documents: int, tokens: int) -> None:
        counts['documents'] += documents
        counts['tokens'] += tokens
        elapsed = max(time.perf_counter() - began, 1e-9)
        bar.set_postfix_str(
            f'{counts["documents"] / elapsed:,.0f} docs/s, {counts["tokens"] / elapsed:,.0f} tokens/s', refresh=False
        )
        bar.update(size)

    convert = functools.partial(convert_unit, context)
    with ProcessMap(  # workers are forked here, before the progress bar's thread exists
        convert, units, num_workers, on_progress=advance, describe=lambda unit: f'converting {describe_unit(unit)}'
    ) as results:
        bar = tqdm(
            total=sum(unit.size for unit in units),
            unit='B',
            unit_scale=True,
            desc='documents',
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            for result in results:
                stats.add(result.stats)
                for stage, spent in result.seconds.items():
                    seconds[stage] += spent
        except WorkerDied as died:
            raise ConversionError(
                f'{died}. The {died.completed} units finished in this run are kept in {context.partial}: '
                'run the same command again to resume.'
            ) from None
        finally:
            bar.close()
    return seconds, stats


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids that document text must never produce: every special token, except an unknown-token id of its own."""
    ids = set(tokenizer.all_special_ids)
    boundaries = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in boundaries:
        ids.discard(tokenizer.unk_token_id)
    return sorted(ids)


def _log_summary(report: ConversionReport) -> None:
    """Log the dataset's counts (when merged) and this run's own work, rate and reuse."""
    if report.info is not None:
        stats = report.info['stats']
        log.info(
            'Wrote %d documents (%d tokens) of %d read; skipped %s; %d URLs with spaces encoded; %d unreadable and '
            '%d empty input files. Tokenizer backend: %s.',
            stats['documents_written'],
            stats['tokens_written'],
            stats['documents_read'],
            stats['skipped'] or 'none',
            stats['urls_spaces_encoded'],
            len(stats['files_unreadable']),
            len(stats['inputs_empty']),
            report.info['tokenizer_backend'],
        )
        for path, problem in stats['files_unreadable'].items():
            log.warning('Unreadable input %s: %s', path, problem)
    busy = sum(report.stage_seconds.values())
    shares = ', '.join(f'{stage} {100 * spent / busy:.0f}%' for stage, spent in report.stage_seconds.items())
    log.info(
        'This run converted %d units (%d documents, %d tokens) in %.1fs wall from its start (%.1fs converting units, '
        'the rest starting, planning, verifying and merging): %.0f tokens/s%s. Reused %d units converted earlier '
        '(%d documents, %d tokens).',
        report.units_converted,
        report.converted.documents_written,
        report.converted.tokens_written,
        report.wall_seconds,
        report.convert_seconds,
        report.tokens_per_second,
        f'; CPU time by stage: {shares}' if busy > 0 else '',
        report.units_reused,
        report.reused.documents_written,
        report.reused.tokens_written,
    )
