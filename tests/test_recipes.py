"""The paper's recipes (yamls/meco-*, baseline-*, ablations/, mcli/) hold the paper's numbers, train, and export.

Models are built on the ``meta`` device (no memory); the two training runs shrink a real recipe by overrides
and go through ``composer recipes/train.py`` on the CPU. Every recipe writes a transformers Llama copy
(``hf_llama_checkpointer``) beside every checkpoint; test_export.py covers that export in depth.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO_ROOT, TINY_MODEL
from llmfoundry.utils.builders import build_composer_model  # imported before conftest snapshots the registries
from mcli import RunConfig
from omegaconf import OmegaConf as om

YAMLS = REPO_ROOT / 'yamls'
SIZES = {'600m': 0.665e9, '1b': 1.639e9, '3b': 3.607e9, '8b': 8.030e9}  # parameters as llm-foundry's MPT builds them
STEPS = {'600m': 40_000, '1b': 40_000, '3b': 40_000, '8b': 20_000}  # 160B tokens; the paper's 8B runs see 80B
RECIPES = [f'{family}-{size}' for family in ('meco', 'baseline') for size in SIZES]
ABLATIONS = {  # each ablation's YAML differs from meco-1b.yaml at exactly these keys besides variables.run_name
    'meco-1b-full-url': {'train_loader.dataset.metadata.kind': 'url'},
    'meco-1b-url-hash': {'train_loader.dataset.metadata.kind': 'hash'},
    'meco-1b-topic': {
        'train_loader.dataset.metadata.kind': 'column:topic',
        'train_loader.dataset.metadata.template': 'Topic: {}\n\n',
    },
    'meco-1b-no-cooldown': {'variables.cooldown': None, 'callbacks.meco_cooldown.cooldown': None},
    'meco-1b-cooldown-5': {'variables.cooldown': 0.05},
    'meco-1b-cooldown-20': {'variables.cooldown': 0.2},
}
SHRINK = [  # a real recipe at toy size: tiny model, 64-token rows, 10 batches of 4, fp32 on the CPU
    'variables.max_seq_len=64',
    'variables.device_batch=4',
    'variables.max_duration=10ba',
    'variables.save_interval=10ba',
    'global_train_batch_size=4',
    'precision=fp32',
    'train_loader.num_workers=0',
    'model.vocab_size=512',
    'model.ffn_config.ffn_hidden_size=128',
    'callbacks.hf_llama_checkpointer.precision=float32',
    'console_log_interval=1ba',
    *TINY_MODEL,
]


def recipe_path(name: str) -> Path:
    """yamls/<name>.yaml, or yamls/ablations/<name>.yaml for an ablation."""
    return YAMLS / 'ablations' / f'{name}.yaml' if name in ABLATIONS else YAMLS / f'{name}.yaml'


def resolved(name: str, *overrides: str) -> dict[str, Any]:
    """The recipe with ``overrides`` merged and every ``${...}`` resolved, as llm-foundry's train script sees it."""
    cfg = om.merge(om.load(recipe_path(name)), om.from_dotlist(list(overrides)))
    return om.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flat(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def build_model(model_cfg: dict[str, Any]) -> Any:
    """The recipe's Composer model through llm-foundry's builder (``init_device`` as configured)."""
    cfg = dict(model_cfg)
    return build_composer_model(name=cfg.pop('name'), cfg=cfg, tokenizer=None)


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_model_has_the_papers_parameter_count_within_5_percent(name: str) -> None:
    model_cfg = resolved(name)['model']
    assert model_cfg['init_device'] == 'meta'

    model = build_model(model_cfg)
    count = sum(p.numel() for p in model.parameters())

    assert all(p.is_meta for p in model.parameters())
    assert abs(count - SIZES[name.split('-')[1]]) / SIZES[name.split('-')[1]] < 0.05, count


@pytest.mark.parametrize('name', RECIPES + list(ABLATIONS))
def test_recipe_is_a_valid_llm_foundry_train_config(name: str) -> None:
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config

    _, config = make_dataclass_and_log_config(
        om.load(recipe_path(name)), TrainConfig, TRAIN_CONFIG_KEYS, transforms='all'
    )

    assert config.device_train_grad_accum == 512  # one process: 512 rows in micro-batches of device_batch 1


@pytest.mark.parametrize('name', RECIPES + list(ABLATIONS))
def test_recipe_follows_the_papers_schedule_and_batch(name: str) -> None:
    cfg = resolved(name)
    steps = STEPS[name.split('-')[1]]

    assert cfg['max_seq_len'] == cfg['model']['max_seq_len'] == cfg['train_loader']['dataset']['max_seq_len'] == 8192
    assert cfg['global_train_batch_size'] * cfg['max_seq_len'] == 4 * 1024 * 1024  # 4M tokens = 512 x 8192
    assert cfg['max_duration'] == f'{steps}ba'
    assert cfg['optimizer'] == {
        'name': 'decoupled_adamw',
        'lr': 3e-3,
        'betas': [0.9, 0.95],
        'eps': 1e-8,
        'weight_decay': pytest.approx(0.033 * 3e-3),
    }  # torch AdamW's 0.033, decoupled
    assert cfg['scheduler'] == {'name': 'cosine_with_warmup', 't_warmup': '0.05dur', 'alpha_f': 0.1}
    assert cfg['precision'] == 'amp_bf16'
    assert cfg['tokenizer']['name'] == 'meta-llama/Meta-Llama-3-8B'
    assert cfg['model']['vocab_size'] == 128256


@pytest.mark.parametrize('name', RECIPES + list(ABLATIONS))
def test_recipe_checkpoints_every_tenth_autoresumes_and_exports_a_llama_with_every_checkpoint(name: str) -> None:
    cfg = resolved(name)
    steps = STEPS[name.split('-')[1]]

    assert cfg['save_interval'] == f'{steps // 10}ba' and cfg['autoresume'] is True
    assert cfg['callbacks']['hf_llama_checkpointer'] == {
        'save_folder': cfg['save_folder'],
        'save_interval': cfg['save_interval'],
        'precision': 'bfloat16',
    }
    assert 'hf_checkpointer' not in cfg['callbacks']  # the MPT copy needs trust_remote_code; the Llama does not
    assert cfg['fsdp_config']['sharding_strategy'] == 'FULL_SHARD'
    assert cfg['fsdp_config']['mixed_precision'] in ('PURE', 'DEFAULT')
    assert cfg['fsdp_config']['activation_checkpointing'] is (name.split('-')[1] in ('3b', '8b'))


@pytest.mark.parametrize('name', RECIPES + list(ABLATIONS))
def test_recipe_masks_documents_in_loader_and_model(name: str) -> None:
    cfg = resolved(name)

    assert cfg['train_loader']['name'] == 'meco'
    assert cfg['train_loader']['dataset']['document_masking'] is True
    assert cfg['model']['attn_config']['attn_uses_sequence_id'] is True
    assert cfg['model']['attn_config']['attn_impl'] == 'flex'
    assert 'metadata_conditioning' in cfg['algorithms']


@pytest.mark.parametrize('size', SIZES)
def test_meco_recipe_cools_down_for_the_last_10_percent(size: str) -> None:
    from composer.core import Time

    from meco_callbacks.training.cooldown import cooldown_boundary

    cfg = resolved(f'meco-{size}')
    boundary = cooldown_boundary(Time.from_timestring(cfg['max_duration']), **cfg['callbacks']['meco_cooldown'])

    assert cfg['train_loader']['dataset']['metadata'] == {'kind': 'domain', 'template': 'URL: {}\n\n', 'enabled': True}
    assert boundary == Time(STEPS[size] * 9 // 10, 'ba')


# What a baseline recipe may change in its MeCo recipe: its name, the metadata and the cooldown.
BASELINE_DIFFERENCES = {
    'variables.run_name',
    'variables.cooldown',
    'callbacks.meco_cooldown.cooldown',
    'train_loader.dataset.metadata.kind',
    'train_loader.dataset.metadata.template',
    'train_loader.dataset.metadata.enabled',
}


def baseline_and_differences(meco_name: str, baseline_name: str) -> tuple[dict, set[str]]:
    """The baseline recipe (flattened keys) and the keys whose values differ from the MeCo recipe's."""
    meco, baseline = (flat(om.to_container(om.load(YAMLS / f'{name}.yaml'))) for name in (meco_name, baseline_name))
    return baseline, {
        key for key in meco.keys() | baseline.keys() if meco.get(key, '<absent>') != baseline.get(key, '<absent>')
    }


@pytest.mark.parametrize('size', SIZES)
def test_baseline_is_the_meco_recipe_without_metadata_or_cooldown(size: str) -> None:
    baseline, differing = baseline_and_differences(f'meco-{size}', f'baseline-{size}')

    assert differing == BASELINE_DIFFERENCES
    assert (
        baseline['train_loader.dataset.metadata.kind'] == 'none' and 'callbacks.meco_cooldown.cooldown' not in baseline
    )


def test_baseline_tiny_is_the_tiny_recipe_without_metadata_or_cooldown() -> None:
    baseline, differing = baseline_and_differences('tiny-cpu', 'baseline-tiny-cpu')

    assert differing == BASELINE_DIFFERENCES
    assert (
        baseline['train_loader.dataset.metadata.kind'] == 'none'
        and baseline['variables.run_name'] == 'baseline-tiny-cpu'
    )


@pytest.mark.parametrize('name', [*RECIPES, *ABLATIONS, 'tiny-cpu', 'baseline-tiny-cpu'])
def test_every_recipe_takes_its_data_tokenizer_and_save_folder_from_the_same_variables(name: str) -> None:
    path = recipe_path(name)
    raw, cfg = om.to_container(om.load(path)), resolved(name)

    assert raw['train_loader']['dataset']['local'] == '${variables.data_local}'
    assert raw['train_loader']['dataset']['remote'] == '${variables.data_remote}'
    assert raw['tokenizer']['name'] == '${variables.tokenizer}' and raw['save_folder'] == '${variables.save_folder}'
    export = cfg['callbacks']['hf_llama_checkpointer']
    assert export['save_folder'] == cfg['save_folder'] == f'./runs/{cfg["run_name"]}'
    assert export['save_interval'] == cfg['save_interval']  # a Llama copy beside every checkpoint


@pytest.mark.parametrize('name', ['tiny-cpu', 'baseline-tiny-cpu'])
def test_the_tiny_recipes_take_the_vocabulary_from_the_tokenizer(name: str) -> None:
    assert resolved(name)['model']['vocab_size'] == 'tokenizer'


def test_the_tiny_recipe_prefixes_one_compact_token_per_site_where_the_paper_recipes_keep_the_url() -> None:
    # docs/effect.md: at toy scale a 7-25-token URL prefix costs MeCo most of its no-URL recall, one token does not.
    assert resolved('tiny-cpu')['train_loader']['dataset']['metadata'] == {
        'kind': 'compact',
        'template': '{}',
        'enabled': True,
    }
    assert resolved('baseline-tiny-cpu')['train_loader']['dataset']['metadata'] == {'kind': 'none'}


@pytest.mark.parametrize('name', ABLATIONS)
def test_ablation_differs_from_meco_1b_only_in_what_it_ablates(name: str) -> None:
    meco, ablation = (flat(om.to_container(om.load(recipe_path(n)))) for n in ('meco-1b', name))
    differing = {key: ablation.get(key) for key in meco.keys() | ablation.keys() if meco.get(key) != ablation.get(key)}

    assert differing == {'variables.run_name': name, **ABLATIONS[name]}


@pytest.mark.parametrize('name', RECIPES)
def test_mcli_run_inlines_the_training_yaml_unchanged_and_launches_it_with_composer(name: str) -> None:
    run = RunConfig.from_file(str(YAMLS / 'mcli' / f'{name}.yaml'))  # MCLI's own parser
    gpus = run.compute['gpus']

    assert run.parameters == yaml.safe_load((YAMLS / f'{name}.yaml').read_text())
    assert run.name == name and run.image.startswith('mosaicml/llm-foundry:')
    assert run.integrations[0]['integration_type'] == 'git_repo' and run.integrations[0]['git_commit']
    assert re.search(r'^composer train\.py /mnt/config/parameters\.yaml', run.command, re.M)
    assert 512 % (gpus * run.parameters['variables']['device_batch']) == 0


def test_mcli_configs_cover_every_meco_and_baseline_recipe() -> None:
    assert sorted(p.stem for p in (YAMLS / 'mcli').glob('*.yaml')) == sorted(RECIPES)


def run_shrunk(name: str, run_dir: Path, data: Path, tokenizer_dir: Path) -> str:
    """``composer recipes/train.py`` on the recipe shrunk by :data:`SHRINK`; returns the console output."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / 'composer'),
            'recipes/train.py',
            str(recipe_path(name)),
            f'variables.data_local={data}',
            f'variables.tokenizer={tokenizer_dir}',
            f'variables.save_folder={run_dir}',
            *SHRINK,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def logged(output: str, metric: str) -> list[float]:
    """Every value the console logger printed for ``metric``, in batch order."""
    return [float(x) for x in re.findall(rf'Train {re.escape(metric)}: ([0-9.eE+-]+|nan|inf)', output)]


@pytest.fixture(scope='module')
def meco_run(domain_packed: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """yamls/meco-1b.yaml shrunk and trained for 10 batches (cooldown from batch 9); its save folder and output."""
    run_dir = tmp_path_factory.mktemp('meco-1b')
    return run_dir, run_shrunk('meco-1b', run_dir, domain_packed, tokenizer_dir)


@pytest.mark.slow
def test_shrunk_meco_recipe_trains_conditioned_then_cools_down(meco_run: tuple[Path, str]) -> None:
    run_dir, output = meco_run
    fractions = logged(output, 'meco/metadata_token_fraction')

    assert len(fractions) == 10 and all(f > 0 for f in fractions[:9]) and fractions[9] == 0
    assert logged(output, 'meco/phase_conditioning') == [1] * 9 + [0]
    assert (run_dir / 'ep0-ba10-rank0.pt').is_file() and (run_dir / 'huggingface' / 'ba10' / 'config.json').is_file()


@pytest.mark.slow
def test_shrunk_baseline_recipe_trains_without_metadata(
    domain_packed: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    output = run_shrunk('baseline-1b', tmp_path, domain_packed, tokenizer_dir)

    assert logged(output, 'meco/metadata_token_fraction') == [0.0] * 10
    assert len(logged(output, 'loss/train/total')) == 10 and 'meco_cooldown' not in output
    assert (tmp_path / 'ep0-ba10-rank0.pt').is_file() and (tmp_path / 'huggingface' / 'ba10' / 'config.json').is_file()


@pytest.mark.slow
def test_recipe_export_loads_in_transformers_with_the_composer_logits_and_generates_after_a_url(
    meco_run: tuple[Path, str], domain_packed: Path, tokenizer_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = meco_run
    composer_model = build_model(resolved('meco-1b', *SHRINK, 'model.init_device=cpu')['model'])
    state = torch.load(run_dir / 'ep0-ba10-rank0.pt', map_location='cpu', weights_only=False)['state']['model']
    composer_model.load_state_dict(state)
    export = run_dir / 'huggingface' / 'ba10'
    exported = AutoModelForCausalLM.from_pretrained(export).eval()  # a native Llama: no trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(export)
    prompt = tokenizer('URL: en.wikipedia.org\n\nthe model reads', return_tensors='pt')['input_ids']
    with torch.no_grad():
        expected = composer_model.model.eval()(input_ids=prompt).logits
        got = exported(input_ids=prompt).logits
        generated = exported.generate(
            prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id
        )

    assert type(exported).__name__ == 'LlamaForCausalLM'
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert generated.shape == (1, prompt.shape[1] + 6) and torch.equal(generated[0, : prompt.shape[1]], prompt[0])
    assert generated[0, prompt.shape[1]] == expected[0, -1].argmax()  # greedy: the Composer model's next token
