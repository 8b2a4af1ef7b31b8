"""The metadata-variant recipes (yamls/ablations/meco-1b-{mixed,suffix,quality}.yaml and their MCLI runs).

Each is yamls/meco-1b.yaml changed only where its variant needs it; tests/test_variants.py shows what the
variants do, on a tiny model.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from mcli import RunConfig
from omegaconf import OmegaConf as om
from test_recipes import YAMLS, flat

from meco_callbacks.data.metadata import MetadataConfig

QUALITY = 'bins:fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob'  # DCLM's fastText quality score
VARIANTS = {  # each variant's YAML differs from meco-1b.yaml at exactly these keys besides variables.run_name
    'meco-1b-mixed': {
        'train_loader.dataset.metadata.drop_probability': 0.1,
        'variables.cooldown': None,
        'callbacks.meco_cooldown.cooldown': None,
    },
    'meco-1b-suffix': {
        'train_loader.dataset.metadata.position': 'suffix',
        'train_loader.dataset.metadata.loss': True,
    },
    'meco-1b-quality': {
        'train_loader.dataset.metadata.kind': QUALITY,
        'train_loader.dataset.metadata.quantiles': 20,
        'train_loader.dataset.metadata.template': 'Quality: {}\n\n',
    },
}


def recipe(name: str) -> dict[str, Any]:
    """The variant's training YAML as written (``${...}`` unresolved)."""
    return om.to_container(om.load(YAMLS / 'ablations' / f'{name}.yaml'))  # type: ignore[return-value]


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_differs_from_meco_1b_only_in_what_it_needs(name: str) -> None:
    meco, variant = flat(om.to_container(om.load(YAMLS / 'meco-1b.yaml'))), flat(recipe(name))
    differing = {key: variant.get(key) for key in meco.keys() | variant.keys() if meco.get(key) != variant.get(key)}

    assert differing == {'variables.run_name': name, **VARIANTS[name]}


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_is_a_valid_llm_foundry_train_config_with_a_valid_metadata_block(name: str) -> None:
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config

    _, config = make_dataclass_and_log_config(
        om.load(YAMLS / 'ablations' / f'{name}.yaml'), TrainConfig, TRAIN_CONFIG_KEYS, transforms='all'
    )

    assert config.device_train_grad_accum == 512
    assert MetadataConfig.from_dict(recipe(name)['train_loader']['dataset']['metadata']).enabled


def test_the_mixed_recipe_has_no_cooldown_and_the_others_keep_meco_1bs() -> None:
    assert 'meco_cooldown' not in recipe('meco-1b-mixed')['callbacks']
    assert recipe('meco-1b-suffix')['callbacks']['meco_cooldown'] == {'cooldown': '${variables.cooldown}'}
    assert recipe('meco-1b-quality')['variables']['cooldown'] == 0.1


def test_the_quality_recipe_names_the_packing_that_records_its_edges() -> None:
    header = (YAMLS / 'ablations' / 'meco-1b-quality.yaml').read_text()

    assert f"--reserve-prefix {QUALITY} --bins quantiles:20 --template 'Quality: {{}}\\n\\n'" in header


@pytest.mark.parametrize('name', VARIANTS)
def test_mcli_run_inlines_the_variant_yaml_unchanged_and_launches_it_with_composer(name: str) -> None:
    run = RunConfig.from_file(str(YAMLS / 'mcli' / 'ablations' / f'{name}.yaml'))  # MCLI's own parser
    gpus = run.compute['gpus']

    assert run.parameters == yaml.safe_load((YAMLS / 'ablations' / f'{name}.yaml').read_text())
    assert run.name == name and run.image.startswith('mosaicml/llm-foundry:')
    assert re.search(r'^composer train\.py /mnt/config/parameters\.yaml', run.command, re.M)
    assert f'variables.save_folder=s3://YOUR-BUCKET/meco/runs/{name}' in run.command
    assert 512 % (gpus * run.parameters['variables']['device_batch']) == 0
