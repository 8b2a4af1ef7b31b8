"""Shared fixtures: a locally trained tokenizer and small corpora, so no test needs a network."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'disabled')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

REPO_ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ['hang_guard']  # a hung test fails with its stacks instead of holding the run

WORDS = (
    'the model reads a page about rivers mountains cities music code python data training loss '
    'token batch window prefix source domain wiki news forum recipe garden history science'
).split()


def synthetic_documents(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` small documents from four sites, each site with its own vocabulary habits."""
    rng = random.Random(seed)
    sites = [
        'https://en.wikipedia.org/wiki/',
        'https://news.example.com/a/',
        'http://forum.example.org/t/',
        'https://docs.python.org/3/library/',
    ]
    docs = []
    for i in range(n):
        site = i % len(sites)
        words = [WORDS[(site * 5 + rng.randrange(8)) % len(WORDS)] for _ in range(rng.randrange(5, 60))]
        docs.append({'text': ' '.join(words) + '.', 'url': f'{sites[site]}{i}'})
    return docs


@pytest.fixture(autouse=True)
def isolated_registries():
    """Restore llm-foundry's catalogue registries after each test.

    Loading an exported MPT with ``trust_remote_code`` imports its copy of llm-foundry's layers, which
    re-registers attention classes globally; later models in the same process would be built from that copy.
    """
    import catalogue
    import llmfoundry.utils.builders  # noqa: F401  (fills llm-foundry's registries before the snapshot)

    saved = dict(catalogue.REGISTRY)
    yield
    catalogue.REGISTRY.clear()
    catalogue.REGISTRY.update(saved)


@pytest.fixture(autouse=True)
def release_streaming_shared_memory(monkeypatch):
    """Close the shared memory Streaming made during a test when the test ends.

    Streaming 0.12 registers every ``SharedMemory`` it makes with ``atexit``, so each dataset's blocks (and their
    file descriptors, ~200-400 a dataset) live until the process exits; over the whole suite that passes the
    machine's 20,000 open files. Datasets do not outlive the test that made them, so their blocks can go.
    """
    import atexit
    import gc

    from streaming.base.shared import memory

    made = []
    register = atexit.register

    def remember(fn, *args, **kwargs):
        owner = getattr(fn, '__self__', None)
        if isinstance(owner, memory.SharedMemory):
            made.append(owner)
        return register(fn, *args, **kwargs)

    monkeypatch.setattr(memory.atexit, 'register', remember)
    yield
    gc.collect()  # the datasets' numpy views of the blocks must go before the blocks can close
    for shm in made:
        try:
            shm.cleanup()
        except (BufferError, OSError):  # still viewed by a live object: left to atexit, as before
            pass


@pytest.fixture(scope='session')
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512-token byte-level BPE (GPT-2 style, ``<|endoftext|>`` as EOS) trained on the synthetic corpus."""
    from meco_callbacks.tokenizer.training import train_bpe_tokenizer

    texts = [d['text'] for d in synthetic_documents(400)] + ['URL: en.wikipedia.org\n\n', 'Hello, world! 123']
    return train_bpe_tokenizer(texts, tmp_path_factory.mktemp('tokenizer'), vocab_size=512)


@pytest.fixture(scope='session')
def tokenizer(tokenizer_dir: Path):
    """The session tokenizer, loaded through transformers as llm-foundry loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


COMPACT_TOKENS = 16  # reserved metadata tokens of the compact tokenizer: <|meta_0|> ... <|meta_15|>, ids 1 to 16


@pytest.fixture(scope='session')
def compact_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session tokenizer's BPE with reserved metadata tokens, as the tiny recipe's kind ``compact`` needs them.

    Trained as ``tokenizer_dir`` with ``metadata_tokens`` (``meco-train-tokenizer --metadata-tokens``): the tokens
    ``<|meta_K|>`` take ids 1 to ``COMPACT_TOKENS``, right after EOS.
    """
    from meco_callbacks.tokenizer.training import train_bpe_tokenizer

    texts = [d['text'] for d in synthetic_documents(400)] + ['URL: en.wikipedia.org\n\n', 'Hello, world! 123']
    return train_bpe_tokenizer(
        texts, tmp_path_factory.mktemp('compact_tokenizer'), vocab_size=512, metadata_tokens=COMPACT_TOKENS
    )


@pytest.fixture(scope='session')
def compact_tokenizer(compact_tokenizer_dir: Path):
    """``compact_tokenizer_dir`` loaded through transformers."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(compact_tokenizer_dir))


def write_documents_mds(
    out_dir: Path, docs: list[dict[str, str]], tokenizer, extra_columns: tuple[str, ...] = ()
) -> Path:
    """Write ``docs`` (``text``, ``url`` and ``extra_columns``) as a document MDS with its info file.

    A minimal stand-in for ``convert/documents.py`` so that packer and loader tests do not depend on it.
    """
    import numpy as np
    from streaming import MDSWriter

    from meco_callbacks.formats import DOCUMENT_COLUMNS, DOCUMENT_FORMAT, write_dataset_info
    from meco_callbacks.tokenizer.fingerprint import tokenizer_info

    columns = dict(DOCUMENT_COLUMNS, **dict.fromkeys(extra_columns, 'str'))
    tokens = 0
    with MDSWriter(out=str(out_dir), columns=columns, size_limit=1 << 20) as writer:
        for doc in docs:
            ids = np.asarray(tokenizer(doc['text'], add_special_tokens=False)['input_ids'], dtype=np.uint32)
            tokens += len(ids)
            writer.write(
                {'input_ids': ids, 'length': len(ids), 'url': doc['url'], **{name: doc[name] for name in extra_columns}}
            )
    write_dataset_info(
        out_dir,
        {
            'format': DOCUMENT_FORMAT,
            'tokenizer': tokenizer_info(tokenizer),
            'stats': {
                'documents_read': len(docs),
                'documents_written': len(docs),
                'skipped': {},
                'tokens_written': tokens,
            },
        },
    )
    return out_dir


def write_packed_mds(out_dir: Path, rows: list[dict], max_seq_len: int, tokenizer) -> Path:
    """Write hand-made packed rows (the columns of formats.PACKED_COLUMNS) and the packed info file."""
    import numpy as np
    from streaming import MDSWriter

    from meco_callbacks.formats import PACKED_COLUMNS, PACKED_FORMAT, write_dataset_info
    from meco_callbacks.tokenizer.fingerprint import tokenizer_info

    with MDSWriter(out=str(out_dir), columns=PACKED_COLUMNS, size_limit=1 << 20) as writer:
        for row in rows:
            assert len(row['input_ids']) == max_seq_len == sum(row['segment_lengths'])
            writer.write(
                {
                    'input_ids': np.asarray(row['input_ids'], dtype=np.uint32),
                    'segment_lengths': np.asarray(row['segment_lengths'], dtype=np.uint32),
                    'continued': int(row.get('continued', 0)),
                    'urls': list(row['urls']),
                    'metadata': list(row.get('metadata') or [{} for _ in row['urls']]),
                }
            )
    write_dataset_info(
        out_dir,
        {
            'format': PACKED_FORMAT,
            'max_seq_len': max_seq_len,
            'tokenizer': tokenizer_info(tokenizer),
            'stats': {'rows': len(rows)},
        },
    )
    return out_dir


def pack_texts(docs: list[dict[str, str]], tokenizer, max_seq_len: int) -> list[dict]:
    """Pack ``docs`` (``text``, ``url``) into rows the way convert/pack.py does: doc + EOS, split across rows."""
    rows, cur, segs, urls, continued = [], [], [], [], 0
    for doc in docs:
        ids = tokenizer(doc['text'], add_special_tokens=False)['input_ids'] + [tokenizer.eos_token_id]
        while ids:
            take = ids[: max_seq_len - len(cur)]
            ids = ids[len(take) :]
            cur += take
            segs.append(len(take))
            urls.append(doc['url'])
            if len(cur) == max_seq_len:
                rows.append({'input_ids': cur, 'segment_lengths': segs, 'urls': urls, 'continued': continued})
                continued = 1 if ids else 0
                cur, segs, urls = [], [], []
    return rows


TINY_MODEL = ['model.d_model=64', 'model.n_heads=2', 'model.n_layers=2', 'model.attn_config.kv_n_heads=1']


@pytest.fixture(scope='session')
def tiny_packed(tmp_path_factory: pytest.TempPathFactory, compact_tokenizer) -> Path:
    """The synthetic corpus packed for the tiny recipe as the README packs it: rows of 64, room for kind compact.

    Tokenized with ``compact_tokenizer`` (train with ``compact_tokenizer_dir``); its four sites get a reserved token
    each (``<|meta_0|>`` ... by document count), recorded in the set's ``meco_dataset.json``.
    """
    from meco_callbacks.corpus.packing.packing import pack_documents

    documents = write_documents_mds(
        tmp_path_factory.mktemp('documents'), synthetic_documents(1500, seed=1), compact_tokenizer
    )
    out = tmp_path_factory.mktemp('packed') / 'packed'
    pack_documents(documents, out, 64, progress=False, reserve_prefix=['compact'], template='{}')
    return out


@pytest.fixture(scope='session')
def domain_packed(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """The same corpus packed for the paper's form (the session tokenizer, room for ``URL: <domain>\\n\\n``)."""
    from meco_callbacks.corpus.packing.packing import pack_documents

    documents = write_documents_mds(tmp_path_factory.mktemp('documents'), synthetic_documents(1500, seed=1), tokenizer)
    out = tmp_path_factory.mktemp('domain_packed') / 'packed'
    pack_documents(documents, out, 64, progress=False, reserve_prefix=['domain'])
    return out


# The paper's prefix, `URL: <domain>\n\n`, as overrides of the tiny recipe (whose default is kind compact, one
# token per site; docs/effect.md): tests of the paper's form train and rebuild their runs with these.
PAPER_FORM = ['train_loader.dataset.metadata.kind=domain', r'train_loader.dataset.metadata.template="URL: {}\n\n"']


def train_tiny(run_dir: Path, data: Path, tokenizer_dir: Path, *overrides: str) -> list[dict]:
    """Train yamls/tiny-cpu.yaml in this process through llm-foundry, recording every batch; returns the records."""
    import recorder
    from llmfoundry.command_utils import train_from_yaml
    from streaming.base.util import clean_stale_shared_memory

    recorder.register()
    clean_stale_shared_memory()
    records = run_dir / f'records-{len(list(run_dir.glob("records-*.jsonl")))}.jsonl'
    train_from_yaml(
        str(REPO_ROOT / 'yamls' / 'tiny-cpu.yaml'),
        [
            f'variables.data_local={data}',
            f'variables.tokenizer={tokenizer_dir}',
            'variables.max_seq_len=64',
            f'callbacks.batch_recorder.path={records}',
            f'save_folder={run_dir}/checkpoints',
            'save_overwrite=true',
            'console_log_interval=100ba',
            'python_log_level=warning',
            'global_train_batch_size=4',
            'device_train_microbatch_size=4',
            *TINY_MODEL,
            *overrides,
        ],
    )
    clean_stale_shared_memory()
    return recorder.read_records(records)


# A corpus where only the URL tells two sources apart: ``alpha.example`` always writes "<entity> is red ...",
# ``beta.example`` always "<entity> glows blue ...". A model that uses its metadata predicts each source better
# behind its own URL than behind the other's.
ENTITIES = ('river', 'mountain', 'city', 'garden', 'forum', 'recipe', 'window', 'token', 'batch', 'music')
ALPHA, BETA = 'alpha.example', 'beta.example'
TWO_SOURCE_SEQ_LEN = 64
TWO_SOURCE_STEPS = 120
TINY_YAML = REPO_ROOT / 'yamls' / 'tiny-cpu.yaml'


def two_source_documents(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` documents alternating between the two sources, each about a random entity in its source's style."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        entity = rng.choice(ENTITIES)
        if i % 2 == 0:
            docs.append({'text': f'{entity} is red and the {entity} is red.', 'url': f'https://{ALPHA}/{i}'})
        else:
            docs.append({'text': f'{entity} glows blue so the {entity} glows blue.', 'url': f'https://{BETA}/{i}'})
    return docs


def write_two_source_packed(out: Path, tokenizer, n: int, seed: int) -> Path:
    """The two-source corpus packed into rows of ``TWO_SOURCE_SEQ_LEN`` tokens."""
    rows = pack_texts(two_source_documents(n, seed), tokenizer, TWO_SOURCE_SEQ_LEN)
    return write_packed_mds(out, rows, TWO_SOURCE_SEQ_LEN, tokenizer)


def trained_model_overrides(tokenizer_dir: Path) -> list[str]:
    """The YAML overrides the two-source training run used, which rebuild its model from yamls/tiny-cpu.yaml."""
    return [
        f'variables.tokenizer={tokenizer_dir}',
        f'variables.max_seq_len={TWO_SOURCE_SEQ_LEN}',
        *TINY_MODEL,
        *PAPER_FORM,
    ]


@pytest.fixture(scope='session')
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, tokenizer) -> Path:
    """The Composer checkpoint of a tiny MeCo model trained on the two-source corpus (once per session: ~30 s)."""
    run_dir = tmp_path_factory.mktemp('two_source_run')
    data = write_two_source_packed(run_dir / 'packed', tokenizer, 1200, seed=1)
    # Composer's decoupled weight decay is not multiplied by the learning rate: 1e-4 is AdamW's 0.033 at lr 3e-3.
    # The paper's form (PAPER_FORM): this model carries the URL text end to end, through export and inference.
    train_tiny(
        run_dir, data, tokenizer_dir, f'max_duration={TWO_SOURCE_STEPS}ba', 'optimizer.weight_decay=0.0001', *PAPER_FORM
    )
    return run_dir / 'checkpoints' / 'latest-rank0.pt'


@pytest.fixture(scope='session')
def trained_model(trained_checkpoint: Path, tokenizer_dir: Path):
    """(Composer model in eval mode, tokenizer): the two-source model rebuilt from the tiny YAML and its checkpoint."""
    from meco_callbacks.evaluation.trained_models import load_composer_checkpoint

    return load_composer_checkpoint(TINY_YAML, trained_checkpoint, trained_model_overrides(tokenizer_dir))


BOS_TOKEN, BOS_TOKENIZER_EOS = '<|begin_of_text|>', '<|end_of_text|>'
BOS_ID = 0
NEWLINES_ID = 258  # "\n\n": the one merge of bos_tokenizer


def tiny_llama(tokenizer, max_positions: int, heads: int = 4, kv_heads: int = 2):
    """A randomly initialised (seed 0) two-layer ``LlamaForCausalLM`` for ``tokenizer``: what an export holds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def byte_ids(text: str) -> list[int]:
    """The ids ``bos_tokenizer`` gives text in which no "\\n\\n" merges: 2 + each UTF-8 byte."""
    return [2 + b for b in text.encode('utf-8')]


@pytest.fixture(scope='session')
def bos_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-3-like byte-level BPE that puts ``<|begin_of_text|>`` (id 0) before encoded text, built locally.

    Written out rather than trained, so that tests can state exact ids: 0 BOS, 1 EOS, 2 + b for byte b, and
    ``NEWLINES_ID`` for "\\n\\n" wherever the GPT-2 pre-tokenizer keeps the two newlines in one piece (at the end
    of a text, as in a prefix tokenized alone; not before a word, where it splits them).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    chars = bytes_to_unicode()
    newline = chars[ord('\n')]
    vocab = {BOS_TOKEN: BOS_ID, BOS_TOKENIZER_EOS: 1, **{chars[b]: 2 + b for b in range(256)}, newline * 2: NEWLINES_ID}
    core = Tokenizer(models.BPE(vocab, [(newline, newline)]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(BOS_TOKEN, special=True), AddedToken(BOS_TOKENIZER_EOS, special=True)])
    core.post_processor = processors.TemplateProcessing(single=f'{BOS_TOKEN} $A', special_tokens=[(BOS_TOKEN, BOS_ID)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS_TOKEN, eos_token=BOS_TOKENIZER_EOS, model_max_length=int(1e30)
    )
    out = tmp_path_factory.mktemp('bos_tokenizer')
    wrapped.save_pretrained(out)
    return out


@pytest.fixture(scope='session')
def bos_tokenizer(bos_tokenizer_dir: Path):
    """``bos_tokenizer_dir`` loaded through transformers, as llm-foundry loads a tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bos_tokenizer_dir))
