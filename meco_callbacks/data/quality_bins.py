"""Fine-grained quality metadata: a numeric column becomes a bin label such as ``7/20``.

"Beyond URLs" (Fan, Hashemi, Karimireddy, Jaggi, arXiv 2511.21613) finds that coarse quality scores do not
speed up pre-training and fine-grained ones do. The kind ``bins:<column>`` reads a numeric metadata column
(carried with ``convert/documents.py --metadata-fields``) and puts its bin, ``k/N`` (bin ``k`` of ``N``, 1 the
lowest), in the template, e.g. ``Quality: 7/20\\n\\n``. The edges are given (``metadata.bins``) or are the
``N``-quantiles of the column over the whole document set, computed once at packing (``meco-pack --bins
quantiles:N``) and recorded with the reservation in ``meco_dataset.json`` for the loader to read.

A missing, non-numeric or non-finite value is an error naming the document, at packing and at loading, never a
skip: the loader drops no document, and a silent default label would train the model on a wrong quality.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BINS_KIND = 'bins:'


def bins_column(kind: str) -> str | None:
    """The column a ``bins:<column>`` kind reads, None for any other kind."""
    return kind[len(BINS_KIND) :] if kind.startswith(BINS_KIND) else None


def check_edges(edges: Sequence[float], setting: str) -> tuple[float, ...]:
    """Edges as a tuple of finite floats in non-decreasing order, or a clear error naming ``setting``."""
    try:
        values = tuple(float(e) for e in edges)
    except (TypeError, ValueError):
        raise ValueError(f'{setting} must be a list of numbers (bin edges); got {edges!r}.') from None
    if not values or not all(math.isfinite(v) for v in values) or list(values) != sorted(values):
        raise ValueError(f'{setting} must be a non-empty list of finite numbers in increasing order; got {edges!r}.')
    return values


def numeric_value(columns: Mapping[str, Any] | None, column: str, url: str) -> float:
    """A document's value in ``column`` as a finite float, or an error naming the document and the value."""
    raw = (columns or {}).get(column)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f'document {url!r} has no finite number in metadata column {column!r} (got {raw!r}) for metadata kind '
            f'bins:{column}: every document needs one. Fix or filter the column before convert/documents.py, or '
            'use another metadata kind.'
        )
    return value


def bin_label(value: float, edges: Sequence[float]) -> str:
    """``k/N``: the 1-based bin of ``value`` among ``len(edges) + 1`` bins (a value on an edge goes up)."""
    return f'{bisect.bisect_right(edges, value) + 1}/{len(edges) + 1}'


def quantile_edges(values: Sequence[float], quantiles: int) -> tuple[float, ...]:
    """The ``quantiles - 1`` inner edges that split ``values`` into ``quantiles`` bins of about equal size."""
    if not values:
        raise ValueError('cannot compute quantile bin edges of a column with no values.')
    points = np.arange(1, quantiles) / quantiles
    return tuple(float(e) for e in np.quantile(np.asarray(values, dtype=np.float64), points))


def parse_bins_spec(spec: str) -> tuple[int | None, tuple[float, ...] | None]:
    """``quantiles:N`` -> (N, None); ``E1,E2,...`` -> (None, edges): the packer's ``--bins`` setting."""
    if spec.startswith('quantiles:'):
        try:
            quantiles = int(spec[len('quantiles:') :])
        except ValueError:
            quantiles = 0
        if quantiles < 2:
            raise ValueError(f'--bins {spec!r}: quantiles:N needs a whole number N of at least 2, e.g. quantiles:20.')
        return quantiles, None
    return None, check_edges([e for e in spec.split(',') if e.strip()], f'--bins {spec!r}')


def column_values(ranges: Sequence[Any], column: str) -> list[float]:
    """Every document's value in ``column`` over the planned document ranges (one read of the set)."""
    from meco_callbacks.corpus.packing.document_set import read_range

    values = []
    for task in ranges:
        chunk = read_range(task)
        values += [numeric_value(columns, column, url) for url, columns in zip(chunk.urls, chunk.metadata)]
    return values


def packing_bins(
    kinds: Sequence[str], spec: str | None, ranges: Sequence[Any]
) -> tuple[tuple[str, tuple[float, ...], int | None], ...]:
    """The bins recorded with a reservation: (column, edges, quantiles) for each ``bins:`` kind reserved."""
    columns = [c for c in (bins_column(k) for k in kinds) if c]
    if not columns:
        if spec is not None:
            raise ValueError(f'--bins {spec!r} is given but no --reserve-prefix kind is bins:<column>.')
        return ()
    if spec is None:
        raise ValueError(
            f'--reserve-prefix bins:{columns[0]} needs the bin edges: --bins quantiles:N (computed here from the '
            'column) or --bins E1,E2,... (the same edges as the YAML metadata.bins).'
        )
    quantiles, edges = parse_bins_spec(spec)
    return tuple(
        (column, edges if quantiles is None else quantile_edges(column_values(ranges, column), quantiles), quantiles)
        for column in columns
    )
