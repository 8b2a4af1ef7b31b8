"""Benchmark inputs built on the spot: a synthetic multi-site corpus, its BPE, document and packed MDS.

Shared by bench/loader.py and bench/train_step.py so both measure the same data through the real converters.
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

SITES = [
    'https://en.wikipedia.org/wiki/',
    'https://docs.python.org/3/library/',
    'https://news.example.com/',
    'https://forum.example.org/t/',
    'https://www.bbc.co.uk/news/',
    'https://blog.example.net/post/',
]


def scratch_dir() -> Path:
    """A working directory removed when the process exits (after Streaming's prefetch threads have stopped)."""
    path = Path(tempfile.mkdtemp(prefix='meco-bench-'))
    atexit.register(shutil.rmtree, path, True)
    return path


def synthetic_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """JSON Lines of ``documents`` texts (50-2,000 words) from six sites, each with its own word habits."""
    rng = random.Random(seed)
    words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    with path.open('w') as f:
        for i in range(documents):
            site = i % len(SITES)
            vocab = words[site * 400 : site * 400 + 1200]
            text = ' '.join(rng.choice(vocab) for _ in range(rng.randint(50, 2000)))
            f.write(json.dumps({'text': text, 'url': f'{SITES[site]}{i}'}) + '\n')
    return path


def build_packed(
    work: Path,
    documents: int,
    max_seq_len: int,
    reserve_prefix: list[str] | None = None,
    template: str | None = None,
    metadata_tokens: int = 0,
) -> tuple[Path, Path]:
    """(tokenizer dir, packed MDS dir) for a fresh synthetic corpus, through convert_documents and pack_documents.

    ``reserve_prefix`` packs with prefix room for those metadata kinds (with ``template``, else the packer's), as the
    README packs for MeCo; ``metadata_tokens`` gives the tokenizer that many reserved tokens (kind ``compact``).
    """
    from meco_callbacks.corpus.documents.conversion import convert_documents
    from meco_callbacks.corpus.packing.packing import pack_documents
    from meco_callbacks.tokenizer.training import train_bpe_tokenizer

    corpus = synthetic_corpus(work / 'corpus.jsonl', documents)
    texts = [json.loads(line)['text'] for line in corpus.read_text().splitlines()[:500]]
    tokenizer_dir = train_bpe_tokenizer(texts, work / 'tokenizer', vocab_size=4096, metadata_tokens=metadata_tokens)
    convert_documents([str(corpus)], work / 'documents', str(tokenizer_dir), progress=False)
    pack_documents(
        work / 'documents',
        work / 'packed',
        max_seq_len,
        progress=False,
        reserve_prefix=reserve_prefix,
        **({'template': template} if template is not None else {}),
    )
    return tokenizer_dir, work / 'packed'


def write_token_rows(packed: Path, out: Path) -> Path:
    """The packed rows as llm-foundry's pre-tokenized ``tokens`` MDS (what its text loader reads).

    Rows packed with prefix room hold fewer document tokens than ``max_seq_len``; they are filled up with EOS
    so that both loaders yield rows of the same length.
    """
    from streaming import LocalDataset, MDSWriter

    from meco_callbacks.formats import read_dataset_info

    info = read_dataset_info(packed)
    length, eos = info['max_seq_len'], info['tokenizer']['eos_token_id']
    dataset = LocalDataset(str(packed))  # no shared memory: the loaders open their own StreamingDataset later
    with MDSWriter(out=str(out), columns={'tokens': 'ndarray:int32'}) as writer:
        for i in range(len(dataset)):
            row = np.full(length, eos, dtype=np.int32)
            tokens = dataset[i]['input_ids']
            row[: len(tokens)] = tokens
            writer.write({'tokens': row})
    return out
