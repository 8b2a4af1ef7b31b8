"""Metadata kind ``compact``: one reserved token per frequent site, the other sites hashed into bucket tokens.

Issue 25 item 3: a prefix that costs what its information is worth. Packed, recorded with the set, injected by the
loader, resolved for inference from the packed set, and carried as a plain field of ``MetadataConfig``.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from conftest import TINY_MODEL, TINY_YAML, synthetic_documents, train_tiny, write_documents_mds
from streaming.base.util import clean_stale_shared_memory

from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.data.compact import HASH_RULE, bucket_of, build_vocabulary
from meco_callbacks.data.dataloader import build_meco_loader
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import PrefixTokens
from meco_callbacks.evaluation.conditional_loss import compact_conditions
from meco_callbacks.evaluation.prompts import prompt_head
from meco_callbacks.evaluation.trained_models import training_metadata
from meco_callbacks.formats import DATASET_INFO_FILE
from meco_callbacks.tokenizer.training import train_bpe_tokenizer

# Eight sites, a.example the most frequent (8 documents) down to h.example (1): with 8 reserved tokens the
# default is 2 buckets, so the 6 most frequent sites get a token each and g, h share the buckets.
SITES = [f'{letter}.example' for letter in 'abcdefgh']
COUNTS = dict(zip(SITES, range(8, 0, -1)))
META = {f'<|meta_{k}|>': 1 + k for k in range(8)}  # EOS is id 0, the metadata tokens follow it


@pytest.fixture(scope='module')
def meta_tokenizer_dir(tmp_path_factory):
    texts = [d['text'] for d in synthetic_documents(200)] + ['URL: a.example\n\n']
    return train_bpe_tokenizer(texts, tmp_path_factory.mktemp('meta-tokenizer'), vocab_size=320, metadata_tokens=8)


@pytest.fixture(scope='module')
def meta_tokenizer(meta_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(meta_tokenizer_dir))


def site_documents():
    return [
        {'text': f'page {i} about rivers and music.', 'url': f'https://{site}/{i}'}
        for site, count in COUNTS.items()
        for i in range(count)
    ]


@pytest.fixture
def packed(tmp_path, meta_tokenizer):
    documents = write_documents_mds(tmp_path / 'docs', site_documents(), meta_tokenizer)
    pack_documents(documents, tmp_path / 'packed', 32, progress=False, reserve_prefix=['compact'], template='{}')
    return tmp_path / 'packed'


def test_the_tokenizer_adds_reserved_metadata_tokens_that_text_never_produces(meta_tokenizer):
    assert {t: meta_tokenizer.convert_tokens_to_ids(t) for t in META} == META
    ids = PrefixTokens(meta_tokenizer, MetadataConfig(kind='constant:<|meta_3|>', template='{}'))('<|meta_3|>')
    assert META['<|meta_3|>'] not in ids.tolist()  # metadata text is text, whatever it spells


def test_the_most_frequent_sites_get_a_token_each_and_the_others_a_hash_bucket(meta_tokenizer):
    vocabulary = build_vocabulary(COUNTS, meta_tokenizer)
    config = MetadataConfig(kind='compact', template='{}', compact=vocabulary)
    prefix = PrefixTokens(meta_tokenizer, config)

    assert vocabulary == {
        'site': 'domain',
        'hash': HASH_RULE,
        'buckets': 2,
        'sites': SITES[:6],
        'tokens': list(META),
        'token_ids': list(META.values()),
    }
    assert [prefix.for_document(f'https://{site}/x').tolist() for site in SITES[:6]] == [[1], [2], [3], [4], [5], [6]]
    # Beyond the top: the last two tokens, by blake2b of the site (fixed here, so a change of rule is caught).
    assert [bucket_of(site, 2) for site in ('g.example', 'h.example', 'unseen.example', 'other.org')] == [0, 1, 0, 0]
    assert prefix.for_document('https://unseen.example/new').tolist() == [7]
    assert prefix.for_document('http://h.example').tolist() == [8]
    assert config.metadata_for('') == ''  # no URL, no prefix


def test_a_tokenizer_without_reserved_tokens_is_refused_with_the_way_to_get_them(tokenizer):
    with pytest.raises(ValueError, match=r'meco-train-tokenizer --metadata-tokens 256 .*reserved_special_token_K'):
        build_vocabulary(COUNTS, tokenizer)


def test_packing_records_the_vocabulary_and_the_loader_injects_the_inference_prefixes(packed, meta_tokenizer):
    record = json.loads((packed / DATASET_INFO_FILE).read_text())['reserve_prefix']
    assert record['kinds'] == ['compact']
    assert record['compact']['sites'] == SITES[:6]
    assert record['compact']['token_ids'] == list(META.values())
    assert record['compact_stats'] == {
        'documents_with_site': 36,
        'sites_seen': 8,
        'documents_in_top_sites': 33,
        'top_site_documents': [8, 7, 6, 5, 4, 3],
    }
    clean_stale_shared_memory()
    dataset = {
        'local': str(packed),
        'shuffle': False,
        'max_seq_len': 32,
        'metadata': {'kind': 'compact', 'template': '{}'},
    }
    loader = build_meco_loader(meta_tokenizer, 4, dataset, num_workers=0)
    inference = MetadataConfig(kind='compact', template='{}', compact=record['compact'])
    assert loader.metadata == inference
    seen = 0
    for packed_batch in loader:
        batch = loader.injector(packed_batch)
        for r, (row, segments, urls) in enumerate(zip(packed_batch.tokens, packed_batch.segments, packed_batch.urls)):
            for segment, url in zip(segments, urls):
                head = prompt_head(meta_tokenizer, url, inference)
                assert segment.prefix.tolist() == head == [META[inference.metadata_for_prompt(url)]]
                assert segment.room == 1
                seen += 1
        ids = batch['input_ids'][0].tolist()
        assert ids[0] in META.values() and batch['labels'][0, 0] == -100
    assert seen >= 36
    del loader
    clean_stale_shared_memory()


def test_the_vocabulary_is_a_plain_field_that_round_trips_through_json(packed):
    record = json.loads((packed / DATASET_INFO_FILE).read_text())['reserve_prefix']['compact']
    config = MetadataConfig(kind='compact', template='{}', compact=record)
    again = MetadataConfig.from_dict(json.loads(json.dumps(asdict(config))))

    assert again == config and hash(again) == hash(config)
    assert again.metadata_for_prompt('https://b.example/about') == '<|meta_1|>'


def test_the_loader_refuses_a_set_packed_without_the_vocabulary(tmp_path, meta_tokenizer):
    documents = write_documents_mds(tmp_path / 'docs', site_documents(), meta_tokenizer)
    dataset = {'shuffle': False, 'max_seq_len': 32, 'metadata': {'kind': 'compact', 'template': '{}'}}
    pack_documents(documents, tmp_path / 'domain', 32, progress=False, reserve_prefix=['domain'])
    pack_documents(documents, tmp_path / 'plain', 32, progress=False)
    clean_stale_shared_memory()
    with pytest.raises(ValueError, match=r'Repack with convert/pack.py --reserve-prefix compact'):
        build_meco_loader(meta_tokenizer, 2, {**dataset, 'local': str(tmp_path / 'domain')})
    with pytest.raises(ValueError, match=r'no set records one: pack with meco-pack --reserve-prefix compact'):
        build_meco_loader(meta_tokenizer, 2, {**dataset, 'local': str(tmp_path / 'plain')})
    clean_stale_shared_memory()


def test_inference_tools_read_the_vocabulary_from_the_packed_set_of_the_train_yaml(tmp_path, packed):
    metadata = training_metadata(TINY_YAML, [f'variables.data_local={packed}'])  # the tiny recipe's default kind

    assert metadata.kind == 'compact' and metadata.compact['sites'] == SITES[:6]
    assert metadata.prefix_for(metadata.metadata_for_prompt('a.example')) == '<|meta_0|>'


def test_packing_compact_with_meco_pack(tmp_path, meta_tokenizer, capsys):
    from meco_callbacks.cli.pack import main

    documents = write_documents_mds(tmp_path / 'docs', site_documents(), meta_tokenizer)
    args = [str(documents), str(tmp_path / 'packed'), '--max-seq-len', '32', '--no-progress']
    assert main([*args, '--reserve-prefix', 'compact', '--compact-buckets', '3', '--template', 'URL: {}\\n\\n']) == 0
    record = json.loads((tmp_path / 'packed' / DATASET_INFO_FILE).read_text())['reserve_prefix']
    assert record['compact']['buckets'] == 3 and record['compact']['sites'] == SITES[:5]
    assert record['compact']['token_ids'] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert main([*args, '--reserve-prefix', 'domain', '--compact-buckets', '3', '--overwrite']) == 2
    assert '--compact-buckets is given but no --reserve-prefix kind is compact' in capsys.readouterr().err


def test_ten_batches_of_the_tiny_recipe_with_kind_compact_then_its_loss_per_condition(
    tmp_path, meta_tokenizer, meta_tokenizer_dir, capsys
):
    from meco_callbacks.cli.evaluate import main as evaluate

    documents = write_documents_mds(tmp_path / 'docs', synthetic_documents(600, seed=3), meta_tokenizer)
    pack_documents(documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['compact'], template='{}')
    overrides = ['train_loader.dataset.metadata.kind=compact', "train_loader.dataset.metadata.template='{}'"]
    records = train_tiny(tmp_path, tmp_path / 'packed', meta_tokenizer_dir, 'max_duration=10ba', *overrides)

    assert len(records) == 10
    first_rows = [r['first_row'] for r in records[:9]]  # the last batch is in the cooldown
    assert all(row[0] in META.values() for row in first_rows)
    assert records[-1]['first_row'][0] not in META.values()
    capsys.readouterr()
    run = [f'variables.data_local={tmp_path / "packed"}', f'variables.tokenizer={meta_tokenizer_dir}']
    run += ['variables.max_seq_len=64', *TINY_MODEL, *overrides]
    evaluate(
        ['loss', '--config', str(TINY_YAML), '--checkpoint', str(tmp_path / 'checkpoints' / 'latest-rank0.pt')]
        + [f'--override={o}' for o in run]
        + ['--packed', str(tmp_path / 'packed'), '--wrong-url', 'zzz.example', '--max-batches', '2']
    )
    results = json.loads(capsys.readouterr().out)
    assert sorted(results) == ['no_url', 'true_url', 'url=zzz.example']
    assert len({r['tokens'] for r in results.values()}) == 1
    assert len({r['loss'] for r in results.values()}) == 3


def test_the_wrong_url_condition_of_a_compact_model_puts_that_sites_token_before_every_document(meta_tokenizer):
    trained = MetadataConfig(kind='compact', template='{}', compact=build_vocabulary(COUNTS, meta_tokenizer))
    conditions = compact_conditions(trained, ['b.example', 'unseen.example'])

    assert conditions['true_url'] == trained
    for name, token_id in (('url=b.example', 2), ('url=unseen.example', 7)):
        prefix = PrefixTokens(meta_tokenizer, conditions[name])
        assert [prefix.for_document(f'https://{site}/').tolist() for site in SITES[:3]] == [[token_id]] * 3


def test_a_hub_tokenizers_reserved_special_tokens_are_used_in_their_order(tokenizer_dir):
    from transformers import AutoTokenizer

    hub = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    reserved = [f'<|reserved_special_token_{k}|>' for k in (10, 2, 0, 1)]
    hub.add_special_tokens({'additional_special_tokens': reserved})
    vocabulary = build_vocabulary({'a.example': 2, 'b.example': 1}, hub, buckets=2)

    assert vocabulary['sites'] == ['a.example', 'b.example']
    assert vocabulary['tokens'] == [f'<|reserved_special_token_{k}|>' for k in (0, 1, 2, 10)]
    assert vocabulary['token_ids'] == [hub.convert_tokens_to_ids(t) for t in vocabulary['tokens']]


def test_a_vocabulary_made_for_another_tokenizer_is_refused(meta_tokenizer):
    vocabulary = build_vocabulary(COUNTS, meta_tokenizer)
    shifted = {**vocabulary, 'token_ids': [i + 1 for i in vocabulary['token_ids']]}
    prefix = PrefixTokens(meta_tokenizer, MetadataConfig(kind='compact', compact=shifted))

    with pytest.raises(ValueError, match=r'made for another tokenizer'):
        prefix.for_document('https://a.example/')


def test_icl_and_harness_prompts_carry_the_sites_token_as_training_does(meta_tokenizer):
    from meco_callbacks.evaluation.icl import conditioned_icl_tasks

    metadata = MetadataConfig(kind='compact', template='URL: {}\n\n', compact=build_vocabulary(COUNTS, meta_tokenizer))
    task = {'label': 'qa', 'num_fewshot': [0], 'prompt_string': ''}
    conditioned = conditioned_icl_tasks([task], {'qa': 'https://c.example/q'}, metadata)[1]
    text_ids = meta_tokenizer(conditioned['prompt_string'], add_special_tokens=False)['input_ids']

    assert conditioned['prompt_string'] == 'URL: <|meta_2|>\n\n'
    assert text_ids == prompt_head(meta_tokenizer, 'c.example', metadata)  # llm-foundry tokenizes the text: same ids
    assert META['<|meta_2|>'] in text_ids
