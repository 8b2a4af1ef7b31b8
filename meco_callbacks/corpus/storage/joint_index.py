"""One MDS index over the shards that several writers left in their own parts: how both stages join their work.

Each unit of work (a stage-1 unit, a stage-2 part) is written by its own ``MDSWriter`` into its own directory,
so that workers never share a writer and a finished part is never written again. Joining them is listing every
part's shards in order in one ``index.json``. This is the one joiner both stages use. Streaming's own
``streaming.base.util.merge_index`` lists the same shard entries but writes other bytes (its index is not
key-sorted as ``MDSWriter``'s is, so a joint dataset would not read byte for byte like one writer's) and copies
every part's index through a temporary directory with a warning on the root logger.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

SHARD_FILES = ('raw_data', 'zip_data', 'raw_meta', 'zip_meta')


def part_name(index: int) -> str:
    """The directory of stage 2's part ``index`` (the part of window ``index``): sorted names follow the plan."""
    return f'part.{index:05d}'


def write_joint_index(directory: Path, parts: Sequence[Path]) -> int:
    """Write ``directory/index.json`` over the shards of ``parts`` (MDS directories under it), in order; returns their count.

    Each shard stays in its part and the index names it by its path from ``directory``
    (``unit-00003/shard.00000.mds``, ``part.00012/shard.00000.mds``): parts on object storage cannot be renamed.
    The index is written as ``MDSWriter`` writes one (sorted keys).
    """
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for part in parts:
        prefix = part.relative_to(directory).as_posix()
        for shard in json.loads((part / 'index.json').read_text())['shards']:
            for key in SHARD_FILES:
                if shard.get(key):
                    shard[key]['basename'] = f'{prefix}/{shard[key]["basename"]}'
            shards.append(shard)
    (directory / 'index.json').write_text(json.dumps({'version': 2, 'shards': shards}, sort_keys=True))
    return len(shards)
