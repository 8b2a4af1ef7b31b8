"""Fast reading of MDS shards: columns located for a whole range of samples at once, with numpy.

Streaming's reader decodes one sample at a time into Python objects; packing a web corpus touches every
document, and that per-sample decoding was most of its time. Here a shard's bytes for samples ``[begin, end)``
are read in one call, and each column's byte spans for every sample come from the MDS sample layout (the
uint32 sizes of the variable-size columns, then the columns' bytes in order), so Python only touches a
document to copy its tokens or decode its strings. Output is identical to Streaming's decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from streaming.base.compression import decompress
from streaming.base.format.mds.encodings import mds_decode

Spans = tuple[np.ndarray, np.ndarray]
"""A column's ``(starts, sizes)`` in a range's bytes, one entry per sample."""

TOKEN_ENCODINGS = {'ndarray:uint32': np.uint32, 'ndarray:int32': np.int32}
# Scalar encodings a metadata column may have; their values are carried as strings.
METADATA_ENCODINGS = frozenset(
    {
        'str',
        'int',
        'int8',
        'int16',
        'int32',
        'int64',
        'uint8',
        'uint16',
        'uint32',
        'uint64',
        'float16',
        'float32',
        'float64',
        'str_int',
        'str_float',
        'str_decimal',
    }
)
# Fixed-width integer encodings (a ``length`` column), read for a whole range at once.
INTEGER_ENCODINGS = {
    'int': np.int64,
    'int64': np.int64,
    'uint64': np.uint64,
    'int32': np.int32,
    'uint32': np.uint32,
    'int16': np.int16,
    'uint16': np.uint16,
}


def raw_shard_path(directory: str, shard: dict[str, Any]) -> Path:
    """Where a shard's uncompressed file is (it may be absent when only the compressed copy was kept)."""
    return Path(directory) / shard['raw_data']['basename']


def sample_bytes(directory: str, shard: dict[str, Any], begin: int, end: int) -> tuple[bytes, np.ndarray]:
    """The bytes holding samples ``[begin, end)`` of the task's shard, and the samples' offsets into them.

    An MDS shard starts with its sample count and the uint32 byte offsets of its samples; a shard stored only
    compressed is decompressed whole.
    """
    raw = raw_shard_path(directory, shard)
    count = end - begin
    if raw.is_file():
        with open(raw, 'rb', 0) as f:
            f.seek(4 * (1 + begin))
            offsets = np.frombuffer(f.read(4 * (count + 1)), np.uint32).astype(np.int64)
            f.seek(int(offsets[0]))
            blob = f.read(int(offsets[-1] - offsets[0]))
        return blob, offsets - offsets[0]
    zip_info = shard.get('zip_data')
    if not zip_info or not (Path(directory) / zip_info['basename']).is_file():
        raise FileNotFoundError(f'shard {raw} is missing (neither its raw nor its compressed file is there).')
    blob = decompress(shard['compression'], (Path(directory) / zip_info['basename']).read_bytes())
    offsets = np.frombuffer(blob, np.uint32, count=count + 1, offset=4 * (1 + begin)).astype(np.int64)
    return blob, offsets


def column_spans(blob: bytes, offsets: np.ndarray, shard: dict[str, Any]) -> dict[str, Spans]:
    """Each column's ``(starts, sizes)`` in ``blob`` for every sample, from the MDS sample layout.

    An MDS sample is the uint32 sizes of its variable-size columns, then the columns' bytes in order.
    """
    column_sizes = shard['column_sizes']
    variable = sum(size is None for size in column_sizes)
    begins = offsets[:-1]
    head = np.frombuffer(blob, np.uint8)[(begins[:, None] + np.arange(4 * variable))]
    variable_sizes = np.ascontiguousarray(head).view(np.uint32).astype(np.int64)  # (samples, variable)
    position = begins + 4 * variable
    spans = {}
    k = 0
    for name, size in zip(shard['column_names'], column_sizes):
        if size is None:
            sizes = variable_sizes[:, k]
            k += 1
        else:
            sizes = np.full(len(begins), size, np.int64)
        spans[name] = (position, sizes)
        position = position + sizes
    if not np.array_equal(position, offsets[1:]):
        raise ValueError(
            f'shard {shard["raw_data"]["basename"]}: sample sizes disagree with the columns '
            f'{shard["column_names"]}; the shard is corrupt or not MDS.'
        )
    return spans


def array_spans(
    blob: bytes, starts: np.ndarray, sizes: np.ndarray, itemsize: int, first_sample: int, directory: str
) -> Spans:
    """Where each 1-D MDS ndarray's values start and how many there are (after its ndim/shape header)."""
    header = np.frombuffer(blob, np.uint8)[starts].astype(np.int64)
    not_1d = np.flatnonzero(header >> 2 != 1)
    if len(not_1d):
        raise ValueError(
            f'document {first_sample + int(not_1d[0])} of {directory}: input_ids is a '
            f'{int(header[not_1d[0]] >> 2)}-D array; documents hold 1-D token arrays.'
        )
    shape_bytes = 1 << (header & 3)
    return starts + 1 + shape_bytes, (sizes - 1 - shape_bytes) // itemsize


def column_integers(blob: bytes, span: Spans, encoding: str) -> np.ndarray:
    """An integer column's values for every sample (e.g. ``length``): fixed-width ones read at once."""
    starts, sizes = span
    width = INTEGER_ENCODINGS.get(encoding)
    if width is None:
        return np.array(
            [int(mds_decode(encoding, blob[a : a + b])) for a, b in zip(starts.tolist(), sizes.tolist())], np.int64
        )
    raw = np.frombuffer(blob, np.uint8)[starts[:, None] + np.arange(np.dtype(width).itemsize)]
    return np.ascontiguousarray(raw).view(width)[:, 0].astype(np.int64)


def column_texts(blob: bytes, span: Spans, kept: np.ndarray, encoding: str) -> list[str]:
    """A metadata column's values as text for the kept samples."""
    starts, sizes = (column[kept].tolist() for column in span)
    if encoding == 'str':
        return [blob[a : a + b].decode('utf-8') for a, b in zip(starts, sizes)]
    return [str(mds_decode(encoding, blob[a : a + b])) for a, b in zip(starts, sizes)]


def check_token_ids(
    tokens: np.ndarray, lengths: np.ndarray, kept: np.ndarray, first_document: int, directory: str, limit: int | None
) -> None:
    """Fail on a token id the tokenizer cannot have: negative (int32 data) or beyond its vocabulary."""
    if not len(tokens):
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low >= 0 and (limit is None or high < limit):
        return
    bad = int(np.flatnonzero((tokens < 0) | (tokens >= (limit if limit is not None else np.iinfo(np.int64).max)))[0])
    document = first_document + kept[int(np.searchsorted(np.cumsum(lengths), bad, side='right'))]
    if int(tokens[bad]) < 0:
        raise ValueError(
            f'document {document} of {directory} has the negative token id {int(tokens[bad])}: '
            f'its input_ids are not token ids. Re-convert it with convert/documents.py.'
        )
    raise ValueError(
        f'document {document} of {directory} has token id {int(tokens[bad])}, outside the '
        f"tokenizer's vocabulary of {limit} ids: the documents were made with another tokenizer. "
        f'Pass the one that produced them with --tokenizer.'
    )
