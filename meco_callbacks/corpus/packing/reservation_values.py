"""What a prefix reservation reads from the documents themselves at packing: quantile bin edges and the compact vocabulary.

Both take one pass over the planned ranges before any row is packed, and both are recorded in the set's
``meco_dataset.json`` under ``reserve_prefix``, where the loader and the inference tools read them back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meco_callbacks.data.prefix import PrefixReservation
from meco_callbacks.data.quality_bins import packing_bins


def with_document_values(
    reservation: PrefixReservation | None,
    info: dict[str, Any],
    ranges: list[Any],
    tokenizer: Any,
    bins: str | None,
    compact_buckets: int | None,
    tokenizer_entry: dict[str, Any],
) -> PrefixReservation | None:
    """The reservation with what its kinds read from the documents (bin edges, the compact vocabulary), in ``info``."""
    from meco_callbacks.data.compact import packing_vocabulary

    kinds = reservation.kinds if reservation else ()
    bin_edges = packing_bins(kinds, bins, ranges)
    vocabulary, stats = packing_vocabulary(
        kinds, ranges, tokenizer, bool(reservation and reservation.strip_www), compact_buckets
    )
    if bin_edges or vocabulary is not None:
        reservation = replace(
            reservation, **({'bins': bin_edges} if bin_edges else {}), **({'compact': vocabulary} if vocabulary else {})
        )
        info['reserve_prefix'] = reservation.to_info(tokenizer_entry['fingerprint'])
    if vocabulary is not None:
        info['reserve_prefix']['compact_stats'] = stats
    return reservation
