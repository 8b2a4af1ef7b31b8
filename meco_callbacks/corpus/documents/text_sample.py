"""A sample of a corpus's text, spread evenly over its units: for verifying a tokenizer backend, or training one.

A sample taken from the front of a corpus sees only its first files (often one site or one crawl); this one
takes each chosen unit's share of the budget from its beginning, and a unit with less text than its share leaves
the rest to the units after it. Only texts that conversion would accept are taken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from meco_callbacks.corpus.documents.document_checks import DocumentPolicy, text_problem
from meco_callbacks.corpus.documents.readers import MISSING, Record, UnitReader
from meco_callbacks.corpus.documents.sources import FieldMapping, Unit, UnreadableFile


def sample_texts(
    units: Sequence[Unit],
    fields: FieldMapping,
    max_bytes: int,
    *,
    max_units: int | None = None,
    text_chars: int | None = None,
    max_document_chars: int = DocumentPolicy.max_document_chars,
) -> list[str]:
    """About ``max_bytes`` (UTF-8) of acceptable texts, in corpus order, an even share from each chosen unit.

    ``max_units`` takes that many evenly spaced units (all by default); ``text_chars`` cuts each text to its first
    characters. A damaged file gives the texts before the damage (conversion counts it).
    """
    return [
        text
        for text, _, _ in sample_records(
            units, fields, max_bytes, max_units=max_units, text_chars=text_chars, max_document_chars=max_document_chars
        )
    ]


def sample_records(
    units: Sequence[Unit],
    fields: FieldMapping,
    max_bytes: int,
    *,
    max_units: int | None = None,
    text_chars: int | None = None,
    max_document_chars: int = DocumentPolicy.max_document_chars,
) -> list[tuple[str, str, dict[str, Any]]]:
    """``sample_texts`` with each text's URL ('' when it has none) and metadata fields: (text, url, metadata)."""
    chosen = list(units[:: max(1, math.ceil(len(units) / max_units))] if max_units else units)
    texts: list[tuple[str, str, dict[str, Any]]] = []
    taken = 0
    for position, unit in enumerate(chosen):
        share = (max_bytes - taken) // (len(chosen) - position)
        if share <= 0:
            break
        from_unit = 0
        try:
            for item in UnitReader(unit, fields):
                if not isinstance(item, Record) or text_problem(item.text, max_document_chars) is not None:
                    continue
                url = item.url if isinstance(item.url, str) else ''
                columns = {name: v for name, v in item.metadata.items() if v is not MISSING}  # absent: no value
                texts.append((item.text[:text_chars], url, columns))
                from_unit += len(texts[-1][0].encode('utf-8'))
                if from_unit >= share:
                    break
        except UnreadableFile:
            pass
        taken += from_unit
    return texts
