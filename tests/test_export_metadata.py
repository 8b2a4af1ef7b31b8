"""An export remembers its metadata setting (``meco_metadata.json``) and every ``--hf`` tool prompts as training did.

Before, an export said nothing of how it was trained and every tool laid prompts out as ``URL: <domain>\\n\\n``: a
model trained with another kind or template was silently prompted in a form it never saw.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import PAPER_FORM, TINY_MODEL, TINY_YAML, synthetic_documents, train_tiny, write_documents_mds
from streaming.base.util import clean_stale_shared_memory

from meco_callbacks.cli import generate as generate_cli
from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.data.dataloader import build_meco_loader
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.metadata_record import (
    METADATA_RECORD_FILE,
    metadata_record,
    read_metadata_record,
    recorded_metadata,
    write_metadata_record,
)
from meco_callbacks.evaluation import generation, trained_models
from meco_callbacks.evaluation.trained_models import inference_metadata
from meco_callbacks.tokenizer.fingerprint import adds_bos_token

HASH_METADATA = {'kind': 'hash', 'template': '{}\n'}
HASH_OVERRIDES = ['train_loader.dataset.metadata.kind=hash', 'train_loader.dataset.metadata.template="{}\\n"']


def test_the_record_serialises_every_field_of_the_metadata_setting_and_reads_back_exactly(tmp_path):
    metadata = MetadataConfig(kind='bins:score', template='Quality: {}\n\n', bins=(0.2, 0.5), drop_probability=0.1)
    info = {'format': 'meco-packed-v1', 'max_seq_len': 64, 'stats': {'rows': 3}, 'reserve_prefix': {'kinds': ['x']}}
    write_metadata_record(tmp_path, metadata_record(metadata, [info], {'configured': False}, 'test'))
    record = read_metadata_record(tmp_path)

    assert set(record['metadata']) == set(MetadataConfig.__dataclass_fields__)  # every field, generically
    assert recorded_metadata(record) == metadata
    assert record['packed_sets'] == [
        {'format': 'meco-packed-v1', 'max_seq_len': 64, 'reserve_prefix': {'kinds': ['x']}}
    ]


def test_a_record_with_a_field_this_version_does_not_know_is_refused_by_name(tmp_path):
    record = metadata_record(MetadataConfig())
    record['metadata']['vocabulary'] = ['a']
    write_metadata_record(tmp_path, record)

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['vocabulary'\].*newer version"):
        inference_metadata(hf=tmp_path)


def test_a_flag_that_contradicts_the_record_is_refused_naming_both_unless_forced(tmp_path):
    write_metadata_record(tmp_path, metadata_record(MetadataConfig(**HASH_METADATA)))

    assert inference_metadata(hf=tmp_path) == MetadataConfig(**HASH_METADATA)
    assert inference_metadata(hf=tmp_path, template='{}\n', kind='hash') == MetadataConfig(**HASH_METADATA)
    with pytest.raises(
        ValueError,
        match=r"--template 'URL: \{\}\\n\\n' contradicts .*meco_metadata.json, which records template '\{\}\\n'",
    ):
        inference_metadata(hf=tmp_path, template='URL: {}\n\n')
    with pytest.raises(
        ValueError, match=r"--metadata-kind 'domain' contradicts .* which records kind 'hash'.*--force-metadata"
    ):
        inference_metadata(hf=tmp_path, kind='domain')
    forced = inference_metadata(hf=tmp_path, template='URL: {}\n\n', force=True)
    assert (forced.kind, forced.template) == ('hash', 'URL: {}\n\n')


def test_a_train_yaml_that_contradicts_the_record_is_refused_unless_forced(tmp_path):
    write_metadata_record(tmp_path, metadata_record(MetadataConfig(**HASH_METADATA)))

    with pytest.raises(ValueError, match=r"contradicts .*meco_metadata.json.*kind 'hash' \(recorded\) vs 'domain'"):
        inference_metadata(TINY_YAML, PAPER_FORM, hf=tmp_path)
    assert inference_metadata(TINY_YAML, PAPER_FORM, hf=tmp_path, force=True) == MetadataConfig()


def test_an_export_without_the_record_keeps_todays_default_and_says_so_once(tmp_path, caplog):
    trained_models._WARNED_WITHOUT_RECORD.discard(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger='meco_callbacks.evaluation.trained_models'):
        first = inference_metadata(hf=tmp_path)
        second = inference_metadata(hf=tmp_path, template='Site: {}\n')

    assert first == MetadataConfig()
    assert second == MetadataConfig(template='Site: {}\n')  # no record to contradict: the flag says how
    assert caplog.text.count(f'has no {METADATA_RECORD_FILE}') == 1


def test_a_baseline_export_lays_a_url_out_in_mecos_default_form(tmp_path):
    write_metadata_record(tmp_path, metadata_record(MetadataConfig(kind='none')))

    assert inference_metadata(hf=tmp_path) == MetadataConfig()


@pytest.fixture
def hash_packed(tmp_path, tokenizer):
    documents = write_documents_mds(tmp_path / 'documents', synthetic_documents(400, seed=4), tokenizer)
    out = tmp_path / 'packed'
    pack_documents(documents, out, 64, progress=False, reserve_prefix=['hash'], template='{}\n')
    return out


def loader_prefix(packed, tokenizer):
    """(URL, prefix ids) of the first document the loader builds under the hash setting, as training does."""
    clean_stale_shared_memory()
    loader = build_meco_loader(
        tokenizer, 2, {'local': str(packed), 'shuffle': False, 'max_seq_len': 64, 'metadata': HASH_METADATA}
    )
    batch = next(iter(loader))
    del loader
    clean_stale_shared_memory()
    segment = batch.segments[0][0]
    assert segment.new_document and len(segment.prefix)
    return batch.urls[0][0], segment.prefix.tolist()


def generated_prompt(monkeypatch, argv):
    """The token ids meco-generate puts before the model, for ``argv``."""
    seen = []

    def recording(*args, **kwargs):
        ids = prompt_ids(*args, **kwargs)
        seen.append(ids)
        return ids

    prompt_ids = generation.prompt_ids
    monkeypatch.setattr(generation, 'prompt_ids', recording)
    generate_cli.main(['--prompt', 'river', '--max-new-tokens', '1', *argv])
    return seen[0]


@pytest.mark.slow
def test_a_model_trained_with_hash_metadata_is_prompted_by_meco_generate_as_its_loader_built_prefixes(
    hash_packed, tokenizer, tokenizer_dir, tmp_path, monkeypatch
):
    overrides = ['max_duration=4ba', 'save_interval=4ba', 'variables.cooldown=0.5', *HASH_OVERRIDES]
    train_tiny(tmp_path, hash_packed, tokenizer_dir, *overrides)
    export = tmp_path / 'checkpoints' / 'huggingface' / 'ba4'
    record = json.loads((export / METADATA_RECORD_FILE).read_text())
    url, prefix = loader_prefix(hash_packed, tokenizer)
    head = [tokenizer.bos_token_id] if adds_bos_token(tokenizer) else []
    text = tokenizer('river', add_special_tokens=False)['input_ids']

    assert (record['metadata']['kind'], record['metadata']['template']) == ('hash', '{}\n')
    assert record['packed_sets'][0]['reserve_prefix']['kinds'] == ['hash']
    assert record['cooldown'] == {
        'configured': True,
        'cooldown': 0.5,
        'boundary': '2ba',
        'ran': True,
        'started_at_batch': 2,
    }
    assert generated_prompt(monkeypatch, ['--url', url, '--hf', str(export)]) == [*head, *prefix, *text]
    with pytest.raises(ValueError, match=r"--template 'URL: \{\}\\n\\n' contradicts"):
        generated_prompt(monkeypatch, ['--url', url, '--hf', str(export), '--template', r'URL: {}\n\n'])

    # meco-export writes the same setting from the run's YAML and checkpoint.
    from meco_callbacks.cli.export import export_checkpoint

    run_overrides = [
        f'variables.data_local={hash_packed}',
        f'variables.tokenizer={tokenizer_dir}',
        'variables.max_seq_len=64',
        'max_duration=4ba',
        'variables.cooldown=0.5',
        *TINY_MODEL,
        *HASH_OVERRIDES,
    ]
    out = export_checkpoint(
        TINY_YAML, tmp_path / 'checkpoints' / 'ep0-ba4-rank0.pt', tmp_path / 'export', run_overrides
    )
    exported = read_metadata_record(Path(out))

    assert exported['metadata'] == record['metadata']
    assert exported['packed_sets'] == record['packed_sets']
    assert exported['cooldown'] == record['cooldown'] and exported['written_by'] == 'meco-export'
    assert generated_prompt(monkeypatch, ['--url', url, '--hf', str(out)]) == [*head, *prefix, *text]


def test_a_flag_that_contradicts_the_train_yaml_is_refused_too():
    with pytest.raises(ValueError, match=r"--template 'Site: \{\}\\n' contradicts the train YAML .*tiny-cpu.yaml"):
        inference_metadata(TINY_YAML, PAPER_FORM, template='Site: {}\n')
    assert inference_metadata(TINY_YAML, PAPER_FORM, kind='domain') == MetadataConfig()
