"""A YAML or command-line value of the wrong type in a block this package adds is refused when the block is built,
with a message naming the key, the value given and what is expected (not an AttributeError deep inside)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from meco_callbacks.data.dataloader import build_meco_loader
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.training.algorithm import MetadataConditioning
from meco_callbacks.training.cooldown import MeCoCooldown
from meco_callbacks.training.hf_llama_checkpointer import HFLlamaCheckpointer


def test_a_template_of_braces_on_the_command_line_is_named_with_the_way_to_quote_it():
    block = OmegaConf.to_container(OmegaConf.from_dotlist(['metadata.template={}']))['metadata']

    with pytest.raises(ValueError, match=r'metadata.template must be a string; got \{\} \(a mapping\)\. .*quote'):
        MetadataConfig.from_dict(block)


@pytest.mark.parametrize(
    'setting, message',
    [
        ({'kind': 3}, r'metadata.kind must be a string; got 3 \(a whole number\)'),
        ({'kind': ['domain']}, r"metadata.kind must be a string; got \['domain'\] \(a list\)"),
        ({'template': 'URL: {} {}\n'}, r'exactly one "\{\}"'),
        ({'template': 'URL:\n'}, r'exactly one "\{\}"'),
        ({'enabled': 'false'}, r"metadata.enabled must be true or false; got 'false' \(a string\)"),
        ({'max_chars': 0}, r'metadata.max_chars must be a whole number of at least 1; got 0'),
        ({'max_chars': 10.5}, r'metadata.max_chars must be a whole number of at least 1; got 10.5 \(a number\)'),
        ({'max_chars': True}, r'metadata.max_chars must be a whole number'),
        ({'strip_www': 1}, r'metadata.strip_www must be true or false; got 1'),
        ({'drop_probability': '0.1'}, r"metadata.drop_probability must be a number in \[0, 1\).*got '0.1'"),
        ({'drop_probability': 1.5}, r'metadata.drop_probability must be a number in \[0, 1\)'),
        ({'position': {}}, r'metadata.position must be a string; got \{\}'),
        ({'position': 'middle'}, r'metadata.position must be one of prefix, suffix'),
        ({'loss': 'no'}, r'metadata.loss must be true or false'),
        ({'kind': 'bins:score', 'bins': '0.5'}, r"metadata.bins must be a list of numbers.*got '0.5'"),
        ({'kind': 'bins:score', 'quantiles': 1}, r'metadata.quantiles must be a whole number of at least 2'),
    ],
)
def test_every_metadata_field_is_checked_with_what_was_given_and_what_is_expected(setting, message):
    with pytest.raises(ValueError, match=message):
        MetadataConfig.from_dict(setting)


def test_a_metadata_block_that_is_not_a_mapping_is_named():
    with pytest.raises(ValueError, match=r"metadata block .* must be a mapping of settings or null; got 'domain'"):
        MetadataConfig.from_dict('domain')


@pytest.mark.parametrize(
    'dataset, loader, message',
    [
        ({'document_masking': 'false'}, {}, r"dataset.document_masking must be true or false; got 'false'"),
        ({'prefix_overflow': 'ignore'}, {}, r"dataset.prefix_overflow must be one of error, drop; got 'ignore'"),
        ({'max_seq_len': '64'}, {}, r"dataset.max_seq_len must be a whole number of at least 1; got '64'"),
        ({'local': {}}, {}, r'dataset.local must be a string or null; got \{\}'),
        ({'shuffle': 'yes'}, {}, r"dataset.shuffle must be true or false; got 'yes'"),
        ({'streams': ['a']}, {}, r"dataset.streams must be a mapping or null; got \['a'\]"),
        ({}, {'num_workers': -1}, r'num_workers must be a whole number of at least 0; got -1'),
        ({}, {'drop_last': 'true'}, r"drop_last must be true or false; got 'true'"),
    ],
)
def test_the_meco_loader_checks_its_keys_before_reading_any_data(dataset, loader, message, tokenizer):
    block = {'local': '/nonexistent', 'max_seq_len': 64, **dataset}
    with pytest.raises(ValueError, match=message):
        build_meco_loader(tokenizer, 2, block, **loader)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        ({'cooldown': '0.1'}, r"meco_cooldown.cooldown must be a fraction in \(0, 1\) .*got '0.1' \(a string\)"),
        ({'cooldown': 2}, r'meco_cooldown.cooldown must be a fraction in \(0, 1\)'),
        ({'boundary': 900}, r'meco_cooldown.boundary must be a string; got 900'),
        ({'boundary': 'soon'}, r"meco_cooldown.boundary must be a time such as '36000ba'"),
        ({'cooldown_streams': 'hq'}, r"meco_cooldown.cooldown_streams must be a mapping or null; got 'hq'"),
        ({'allow_boundary_change': 'yes'}, r"meco_cooldown.allow_boundary_change must be true or false; got 'yes'"),
    ],
)
def test_the_cooldown_callback_checks_its_keys(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeCoCooldown(**kwargs)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        ({'save_folder': {}}, r'hf_llama_checkpointer.save_folder must be a string; got \{\}'),
        ({'save_interval': ['2ba']}, r"hf_llama_checkpointer.save_interval must be a time such as '4000ba'"),
        ({'save_interval': 'often'}, r"hf_llama_checkpointer.save_interval must be a time such as '4000ba'"),
        ({'precision': {}}, r'hf_llama_checkpointer precision \{\}: use one of'),
        ({'overwrite': 'no'}, r"hf_llama_checkpointer.overwrite must be true or false; got 'no'"),
    ],
)
def test_the_llama_checkpointer_checks_its_keys(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HFLlamaCheckpointer(**{'save_folder': 'runs/x', 'save_interval': '2ba', **kwargs})


def test_the_algorithm_checks_its_keys():
    with pytest.raises(ValueError, match=r"check_document_masking must be true or false; got 'no'"):
        MetadataConditioning(check_document_masking='no')
    with pytest.raises(ValueError, match=r"unknown metadata_conditioning key\(s\) \['check'\]"):
        MetadataConditioning(check=True)


def test_the_models_flex_on_cpu_switch_must_be_true_or_false():
    from meco_callbacks.model.mpt import MeCoMPTCausalLM

    with pytest.raises(ValueError, match=r"model.flex_on_cpu must be true or false; got 'false'"):
        MeCoMPTCausalLM(flex_on_cpu='false')
