"""The two on-disk MDS formats MeCo uses, and the metadata file written beside each dataset.

Document MDS (stage 1, the MeCo authors' released format plus extra columns), one row per document:
    input_ids   ndarray:uint32   the document's tokens, no BOS/EOS (``int32`` arrays are read too)
    length      int              len(input_ids)   (``uint32`` is read too)
    url         str              the full source URL
    <extra>     str              any carried metadata column (topic, quality, ...)

Packed MDS (stage 2), one row per training sequence of ``max_seq_len`` slots:
    input_ids        ndarray:uint32  the row's document tokens; each document is written as [BOS] doc EOS
                                     (BOS only when the tokenizer itself adds one, e.g. Llama-3)
    segment_lengths  ndarray:uint32  the document tokens of each of the row's segments
    prefix_room      ndarray:uint32  slots reserved before each segment for its prefix (sets packed with
                                     --reserve-prefix; absent in sets packed without room)
    continued        int             1 when the first segment continues a document from the previous row
    urls             json            list[str], one URL per segment
    metadata         json            list[dict[str, str]], one dict of extra columns per segment

Without room, a row holds exactly ``max_seq_len`` document tokens. With room, segment lengths plus rooms are
at most ``max_seq_len``; the rest of the row is padding, and ``meco_dataset.json`` records the reservation
(kinds, template, tokenizer fingerprint) that the loader checks.

Only the first segment of a row can be a continuation and only the last can be cut short: a document
longer than a row spans several rows. ``DATASET_INFO_FILE`` (JSON) sits beside ``index.json`` and
records what the dataset is: its format, the tokenizer's name and fingerprint, and the conversion stats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENT_FORMAT = 'meco-documents-v1'
PACKED_FORMAT = 'meco-packed-v1'
DATASET_INFO_FILE = 'meco_dataset.json'

DOCUMENT_COLUMNS = {'input_ids': 'ndarray:uint32', 'length': 'int', 'url': 'str'}
PACKED_COLUMNS = {
    'input_ids': 'ndarray:uint32',
    'segment_lengths': 'ndarray:uint32',
    'continued': 'int',
    'urls': 'json',
    'metadata': 'json',
}
RESERVED_PACKED_COLUMNS = {**PACKED_COLUMNS, 'prefix_room': 'ndarray:uint32'}


def write_dataset_info(directory: str | Path, info: dict[str, Any]) -> Path:
    """Write the dataset's info file (format, tokenizer fingerprint, stats) next to its index."""
    path = Path(directory) / DATASET_INFO_FILE
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
    tmp.replace(path)
    return path


def read_dataset_info(directory: str | Path) -> dict[str, Any] | None:
    """The dataset's info, or None when the directory holds none (e.g. a dataset made elsewhere)."""
    path = Path(directory) / DATASET_INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
