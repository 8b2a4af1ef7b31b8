"""The ``meco`` loader through llm-foundry's registry over a real Streaming dataset."""

import json

import pytest
from conftest import pack_texts, synthetic_documents, write_packed_mds
from llmfoundry.data.dataloader import build_dataloader
from streaming.base.util import clean_stale_shared_memory

from meco_callbacks.formats import DATASET_INFO_FILE


def loader_config(data, **dataset):
    return {
        'name': 'meco',
        'drop_last': True,
        'num_workers': 0,
        'dataset': {'local': str(data), 'shuffle': False, 'max_seq_len': 64, **dataset},
    }


@pytest.fixture
def packed(tmp_path, tokenizer):
    clean_stale_shared_memory()
    return write_packed_mds(tmp_path / 'packed', pack_texts(synthetic_documents(60), tokenizer, 64), 64, tokenizer)


def test_the_registered_loader_yields_full_prefixed_batches(packed, tokenizer):
    spec = build_dataloader(loader_config(packed), tokenizer, 3)
    batch = spec.batch_transforms(next(iter(spec.dataloader)))
    assert batch['input_ids'].shape == batch['labels'].shape == batch['sequence_id'].shape == (3, 64)
    assert tokenizer.decode(batch['input_ids'][0]).startswith('URL: en.wikipedia.org\n\n')
    assert int(batch['attention_mask'].sum()) == 3 * 64
    metadata_tokens = spec.dataloader.injector.stats.last['metadata_tokens']
    assert metadata_tokens > 0
    assert spec.get_num_tokens_in_batch(batch) == 3 * 64 - metadata_tokens  # Composer's count: document tokens


def test_metadata_disabled_in_yaml_gives_plain_rows(packed, tokenizer):
    spec = build_dataloader(loader_config(packed, metadata={'enabled': False}), tokenizer, 2)
    raw = next(iter(spec.dataloader))
    batch = spec.batch_transforms(raw)
    assert batch['input_ids'].tolist() == [row.tolist() for row in raw.tokens]


def test_a_dataset_of_another_tokenizer_is_refused(packed, tokenizer):
    info = json.loads((packed / DATASET_INFO_FILE).read_text())
    info['tokenizer'].update(fingerprint='sha256:0000000000000000', name='meta-llama/Meta-Llama-3-8B')
    (packed / DATASET_INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match='tokenized with .meta-llama/Meta-Llama-3-8B'):
        build_dataloader(loader_config(packed), tokenizer, 2)


def test_a_dataset_packed_for_another_row_length_is_refused(packed, tokenizer):
    config = loader_config(packed)
    config['dataset']['max_seq_len'] = 128
    with pytest.raises(ValueError, match='packed with max_seq_len 64 but training uses 128'):
        build_dataloader(config, tokenizer, 2)


def test_unknown_dataset_keys_are_named(packed, tokenizer):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shufle'\]"):
        build_dataloader(loader_config(packed, shufle=True), tokenizer, 2)
