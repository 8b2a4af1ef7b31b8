"""``meco_metadata.json``: the metadata setting an exported model was trained with, written beside its config.json.

A transformers (or vLLM) directory says nothing about how a model's documents were laid out in training, so every
export (``hf_llama_checkpointer``, ``meco-export``) writes this file, which transformers and vLLM ignore, and every
inference tool that takes ``--hf`` reads it to lay prompts out as training did. Format ``meco-metadata-v1``:

    {"format": "meco-metadata-v1",
     "metadata": {...},        # every field of MetadataConfig (dataclasses.asdict), bin edges resolved
     "packed_sets": [{...}],   # what the loader read from each packed set's meco_dataset.json (all but its stats):
                               # format, max_seq_len, tokenizer (fingerprint, adds_bos), reserve_prefix (kinds,
                               # template, bin edges), and whatever a newer packer records there
     "cooldown": {"configured": bool, "cooldown": float | null, "boundary": str | null,
                  "ran": bool | null, "started_at_batch": int | null},   # null: not known at export
     "written_by": "hf_llama_checkpointer" | "meco-export"}

The metadata block is serialised generically (every dataclass field), so a field or kind added to
``MetadataConfig`` is carried without editing this module; reading it back goes through
``MetadataConfig.from_dict``, so a file naming a field this version does not know is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meco_callbacks.data.metadata import MetadataConfig

log = logging.getLogger(__name__)

METADATA_RECORD_FILE = 'meco_metadata.json'
METADATA_RECORD_FORMAT = 'meco-metadata-v1'
PROMPT_FIELDS = ('kind', 'template', 'max_chars', 'strip_www', 'position', 'bins')
"""The fields that shape an inference prompt's prefix: a contradiction in any of them is refused."""


def _jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (``dataclasses.asdict`` keeps tuples, JSON writes them as lists anyway)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def metadata_record(
    metadata: MetadataConfig,
    packed_infos: Sequence[Mapping[str, Any]] = (),
    cooldown: Mapping[str, Any] | None = None,
    written_by: str = '',
) -> dict[str, Any]:
    """The record of a run's metadata setting (see the module docstring)."""
    return {
        'format': METADATA_RECORD_FORMAT,
        'metadata': _jsonable(dataclasses.asdict(metadata)),
        'packed_sets': [_jsonable({k: v for k, v in info.items() if k != 'stats'}) for info in packed_infos],
        'cooldown': _jsonable(dict(cooldown)) if cooldown is not None else None,
        'written_by': written_by,
    }


def write_metadata_record(directory: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``directory/meco_metadata.json``."""
    path = Path(directory) / METADATA_RECORD_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + '\n')
    return path


def read_metadata_record(directory: str | Path) -> dict[str, Any] | None:
    """The record in ``directory``, or None when there is none (an export from before the file existed)."""
    path = Path(directory) / METADATA_RECORD_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or record.get('format') != METADATA_RECORD_FORMAT:
        raise ValueError(
            f'{path} is not a {METADATA_RECORD_FORMAT} record (format {record.get("format") if isinstance(record, dict) else None!r}): '
            'it was written by another version of this package; export the model again with this one.'
        )
    return record


def recorded_metadata(record: Mapping[str, Any], where: str = METADATA_RECORD_FILE) -> MetadataConfig:
    """The ``MetadataConfig`` a record holds (unknown fields are refused by name: a newer version wrote it)."""
    try:
        return MetadataConfig.from_dict(record.get('metadata'))
    except ValueError as error:
        raise ValueError(f'{where}: {error} Was it written by a newer version of this package?') from error


def contradictions(recorded: MetadataConfig, given: MetadataConfig) -> list[str]:
    """``field: recorded vs given`` for each prompt-shaping field where the two settings differ."""
    return [
        f'{name} {getattr(recorded, name)!r} (recorded) vs {getattr(given, name)!r} (given)'
        for name in PROMPT_FIELDS
        if getattr(recorded, name) != getattr(given, name) and not (name == 'bins' and given.bins is None)
    ]
