"""The Llama export (model/llama_export.py, recipes/export.py, the hf_llama_checkpointer callback) and the tools on it.

A MeCo MPT exported as a transformers ``LlamaForCausalLM`` computes the Composer model's logits (1e-4 in fp32) and
its greedy generations, from a checkpoint file or a sharded checkpoint directory; every MPT setting a Llama cannot
express is refused by name; the callback writes exports during a real Composer run; evaluate, generate and
url_search read sharded directories and Llama exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ALPHA, BETA, ENTITIES, TINY_MODEL, TINY_YAML, train_tiny, trained_model_overrides

from meco_callbacks.model.llama_export import (
    check_llama_exportable,
    llama_config,
    llama_state_dict,
    save_llama,
    unsupported_settings,
)

EXPORT_FILES = {'config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json'}


def write_sharded(checkpoint_file: Path, out_dir: Path) -> Path:
    """The Composer checkpoint file re-written as Composer's sharded form: torch.distributed.checkpoint, one process.

    The whole Composer state (``{'state': {'model', 'optimizers', 'timestamp', ...}, 'rng'}``) is saved, as
    Composer's ``_save_checkpoint`` does under FSDP with ``state_dict_type: sharded``.
    """
    import torch.distributed.checkpoint as dcp

    state = torch.load(checkpoint_file, map_location='cpu', weights_only=False)
    dcp.save({'state': state['state'], 'rng': state['rng']}, checkpoint_id=str(out_dir))
    return out_dir


@pytest.fixture(scope='module')
def sharded_checkpoint(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-source model's checkpoint as a sharded directory ``ep0-ba120/`` (``__0_0.distcp`` + ``.metadata``)."""
    return write_sharded(trained_checkpoint, tmp_path_factory.mktemp('sharded') / 'ep0-ba120')


@pytest.fixture(scope='module')
def llama_export(sharded_checkpoint: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipes/export.py's Llama export of the sharded checkpoint."""
    from meco_callbacks.cli import export

    out = tmp_path_factory.mktemp('export') / 'llama'
    overrides = [arg for o in trained_model_overrides(tokenizer_dir) for arg in ('--override', o)]
    export.main(['--config', str(TINY_YAML), '--checkpoint', str(sharded_checkpoint), *overrides, '--output', str(out)])
    return out


def composer_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.model.eval()(input_ids=input_ids).logits


def loaded_llama(directory: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory)).eval()  # no trust_remote_code


def sample_ids(tokenizer, batch: int = 2) -> torch.Tensor:
    texts = [f'URL: {ALPHA}\n\nriver is red and the river', f'URL: {BETA}\n\ncity glows blue so the city glows'][:batch]
    ids = [tokenizer(t, add_special_tokens=False)['input_ids'] for t in texts]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])


# --- (a), (b): checkpoint file and sharded directory -> Llama with the Composer model's logits -------------------


@pytest.mark.slow
def test_the_sharded_checkpoint_holds_the_model_as_composer_shards_it(sharded_checkpoint: Path, trained_checkpoint):
    from meco_callbacks.model.checkpoints import load_model_weights

    from_dir, from_file = load_model_weights(sharded_checkpoint), load_model_weights(trained_checkpoint)

    assert sorted(p.name for p in sharded_checkpoint.iterdir()) == ['.metadata', '__0_0.distcp']
    assert from_dir.keys() == from_file.keys() and all(
        k.startswith('model.transformer.') or k == 'model.lm_head.weight' for k in from_dir
    )
    assert all(torch.equal(from_dir[k], from_file[k]) for k in from_file)


@pytest.mark.slow
def test_a_sharded_checkpoint_exports_a_native_llama_with_the_composer_logits(llama_export: Path, trained_model):
    model, tokenizer = trained_model
    config = json.loads((llama_export / 'config.json').read_text())
    llama = loaded_llama(llama_export)
    ids = sample_ids(tokenizer)

    assert EXPORT_FILES <= {p.name for p in llama_export.iterdir()}
    assert (
        config['model_type'] == 'llama' and 'auto_map' not in config and config['architectures'] == ['LlamaForCausalLM']
    )
    assert type(llama).__name__ == 'LlamaForCausalLM'
    with torch.no_grad():
        torch.testing.assert_close(llama(input_ids=ids).logits, composer_logits(model, ids), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_checkpoint_file_exports_the_same_llama(trained_checkpoint, tokenizer_dir, trained_model, tmp_path: Path):
    from meco_callbacks.cli import export

    model, tokenizer = trained_model
    overrides = [arg for o in trained_model_overrides(tokenizer_dir) for arg in ('--override', o)]
    export.main(
        ['--config', str(TINY_YAML), '--checkpoint', str(trained_checkpoint), *overrides, '--output', str(tmp_path)]
    )
    ids = sample_ids(tokenizer)

    with torch.no_grad():
        torch.testing.assert_close(
            loaded_llama(tmp_path)(input_ids=ids).logits, composer_logits(model, ids), atol=1e-4, rtol=0
        )


@pytest.mark.slow
def test_the_mpt_format_keeps_the_mpt_export_loaded_with_its_own_code(
    sharded_checkpoint, tokenizer_dir, trained_model, tmp_path: Path
):
    from transformers import AutoModelForCausalLM

    from meco_callbacks.cli import export

    model, tokenizer = trained_model
    overrides = [arg for o in trained_model_overrides(tokenizer_dir) for arg in ('--override', o)]
    export.main(
        [
            '--config',
            str(TINY_YAML),
            '--checkpoint',
            str(sharded_checkpoint),
            *overrides,
            '--output',
            str(tmp_path),
            '--format',
            'mpt',
        ]
    )
    config = json.loads((tmp_path / 'config.json').read_text())
    mpt = AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
    ids = sample_ids(tokenizer)

    assert config['model_type'] == 'mpt' and config['auto_map']['AutoModelForCausalLM'] == 'modeling_mpt.MPTForCausalLM'
    assert (tmp_path / 'tokenizer.json').is_file()
    with torch.no_grad():
        torch.testing.assert_close(mpt(input_ids=ids).logits, composer_logits(model, ids), atol=1e-4, rtol=0)


# --- (d) greedy generation with the KV cache --------------------------------------------------------------------


@pytest.mark.slow
def test_llama_greedy_generation_with_the_kv_cache_equals_the_mpt_paths(llama_export: Path, trained_model):
    from meco_callbacks.evaluation.generation import generate, generation_model

    model, tokenizer = trained_model
    llama = loaded_llama(llama_export)
    mpt = generation_model(model)
    for prompt, url in (('river', ALPHA), ('city', BETA), ('the model reads', None)):
        ids = torch.tensor([tokenizer(f'URL: {url}\n\n{prompt}' if url else prompt)['input_ids']])
        kwargs = {
            'max_new_tokens': 16,
            'do_sample': False,
            'pad_token_id': tokenizer.eos_token_id,
            'eos_token_id': tokenizer.eos_token_id,  # the Llama's generation_config.json stops there too
        }
        with torch.no_grad():
            by_mpt = mpt.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs)
            by_llama = llama.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs)

        assert by_llama.tolist() == by_mpt.tolist()
        assert generate(llama, tokenizer, prompt, url, 16) == generate(model, tokenizer, prompt, url, 16)
    assert generate(llama, tokenizer, 'river', ALPHA, 12).startswith(' is red')


# --- (c) settings a Llama cannot express, and those it can ------------------------------------------------------


def tiny_mpt_config(**changes: Any) -> Any:
    """An MPTConfig shaped as yamls/tiny-cpu.yaml's model (torch attention), with ``changes`` (dotted keys)."""
    from llmfoundry.models.mpt import MPTConfig

    kwargs: dict[str, Any] = {
        'd_model': 64,
        'n_heads': 4,
        'n_layers': 2,
        'max_seq_len': 64,
        'vocab_size': 96,
        'no_bias': True,
        'norm_type': 'rmsnorm',
        'tie_word_embeddings': False,
        'learned_pos_emb': False,
        'ffn_config': {'ffn_type': 'mptglu', 'ffn_act_fn': {'name': 'silu'}},
        'attn_config': {
            'attn_impl': 'torch',
            'attn_type': 'grouped_query_attention',
            'kv_n_heads': 2,
            'rope': True,
            'rope_impl': 'hf',
            'rope_theta': 500000,
        },
    }
    for key, value in changes.items():
        *parents, leaf = key.split('.')
        target = kwargs
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is DROP:
            del target[leaf]
        else:
            target[leaf] = value
    return MPTConfig(**kwargs)


DROP = object()  # tiny_mpt_config(key=DROP) removes the key


@pytest.mark.parametrize(
    ('changes', 'named'),
    [
        ({'attn_config.alibi': True, 'attn_config.rope': False}, 'model.attn_config.alibi'),
        ({'attn_config.rope': False}, 'model.attn_config.rope: false'),
        ({'no_bias': False}, 'model.no_bias: false'),
        ({'norm_type': 'low_precision_layernorm'}, 'model.norm_type: low_precision_layernorm'),
        ({'attn_config.qk_ln': True}, 'model.attn_config.qk_ln'),
        ({'attn_config.clip_qkv': 8.0}, 'model.attn_config.clip_qkv'),
        ({'attn_config.softmax_scale': 0.5}, 'model.attn_config.softmax_scale: 0.5'),
        ({'attn_config.sliding_window_size': 16}, 'model.attn_config.sliding_window_size'),
        ({'attn_config.attn_logit_softcapping': 30.0}, 'model.attn_config.attn_logit_softcapping'),
        ({'ffn_config': {'ffn_type': 'mptmlp'}}, 'model.ffn_config.ffn_type: mptmlp'),
        ({'ffn_config': {'ffn_type': 'mptglu'}}, 'model.ffn_config.ffn_act_fn'),  # MPT's default: GELU
        ({'logit_scale': 'inv_sqrt_d_model'}, 'model.logit_scale'),
        ({'final_logit_softcapping': 30.0}, 'model.final_logit_softcapping'),
        ({'learned_pos_emb': True, 'attn_config.rope': False}, 'model.learned_pos_emb: true'),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_a_setting_llama_cannot_express_is_refused_by_name(changes: dict[str, Any], named: str) -> None:
    config = tiny_mpt_config(**changes)

    with pytest.raises(ValueError, match='cannot be exported as a Llama') as refused:
        llama_config(config)
    assert named in str(refused.value)
    with pytest.raises(ValueError, match='cannot be exported as a Llama'):
        llama_state_dict({}, config)


def test_settings_that_need_other_libraries_are_refused_from_the_config_dict() -> None:
    config = tiny_mpt_config().to_dict()
    config['attn_config'].update(rope_impl='dail', attn_temperature_tuning={'attn_scale': 0.1}, kv_dim=32)
    config.update(fc_type={'name': 'te'}, block_overrides={'order': [], 'overrides': {}}, head_dim=32)

    assert unsupported_settings(config) == [
        'model.attn_config.rope_impl: dail (only hf: dail offsets positions by the cache)',
        'model.attn_config.attn_temperature_tuning.attn_scale (temperature tuning)',
        'model.attn_config.kv_dim (cross-attention inputs)',
        'model.head_dim: 32 (not d_model / n_heads = 16)',
        'model.fc_type: te (only torch linear layers)',
        'model.block_overrides (per-layer overrides)',
    ]


def test_the_recipes_model_has_nothing_llama_cannot_express() -> None:
    from llmfoundry.utils.builders import build_composer_model
    from omegaconf import OmegaConf as om

    for recipe in ('meco-1b.yaml', 'meco-8b.yaml', 'tiny-cpu.yaml'):
        cfg = om.to_container(om.load(TINY_YAML.parent / recipe), resolve=True)['model']
        cfg.update(init_device='meta', vocab_size=128)
        model = build_composer_model(name=cfg.pop('name'), cfg=cfg, tokenizer=None)

        assert unsupported_settings(model.model.config) == [], recipe
        check_llama_exportable(model.model.config)


def test_weights_that_disagree_with_the_tying_of_the_config_are_refused() -> None:
    from llmfoundry.models.mpt import MPTForCausalLM

    untied = MPTForCausalLM(tiny_mpt_config()).state_dict()
    tied = MPTForCausalLM(tiny_mpt_config(tie_word_embeddings=True)).state_dict()

    with pytest.raises(ValueError, match='tie_word_embeddings: true.*separate lm_head.weight'):
        llama_state_dict(untied, tiny_mpt_config(tie_word_embeddings=True))
    with pytest.raises(ValueError, match='tie_word_embeddings: false.*no lm_head.weight'):
        llama_state_dict(tied, tiny_mpt_config())
    with pytest.raises(ValueError, match='missing'):
        llama_state_dict({k: v for k, v in untied.items() if 'blocks.1.' not in k}, tiny_mpt_config())


@pytest.mark.parametrize(
    'changes',
    [
        {},
        {'tie_word_embeddings': True},
        {'attn_config.attn_type': 'multihead_attention', 'attn_config.kv_n_heads': DROP},
        {'attn_config.attn_type': 'multiquery_attention', 'attn_config.kv_n_heads': DROP},
        {'attn_config.fused_qkv': False},
        {'attn_config.rope_hf_config': {'type': 'linear', 'factor': 2.0}},
        {'attn_config.rope_theta': 10000},
        {'norm_type': 'low_precision_rmsnorm', 'norm_eps': 1e-6},
        {'embedding_fraction': 0.5, 'attn_config.softmax_scale': 0.25},  # gradient-only; 1/sqrt(16) is the default
    ],
    ids=['recipe', 'tied', 'mha', 'mqa', 'unfused-qkv', 'linear-rope', 'theta', 'lp-rmsnorm', 'training-only'],
)
def test_settings_llama_expresses_give_the_same_logits(changes: dict[str, Any], tmp_path: Path) -> None:
    from llmfoundry.models.mpt import MPTForCausalLM

    config = tiny_mpt_config(**changes)
    torch.manual_seed(0)
    mpt = MPTForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in mpt.parameters():  # well away from the initialisation (norm weights of 1, ...)
            parameter.normal_(0, 0.2)
    save_llama(llama_state_dict(mpt.state_dict(), config), llama_config(config), tmp_path)
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        torch.testing.assert_close(
            loaded_llama(tmp_path)(input_ids=ids).logits, mpt(input_ids=ids).logits, atol=1e-4, rtol=0
        )


def test_the_export_command_refuses_an_unexportable_model_before_reading_the_checkpoint(
    tokenizer_dir, tmp_path: Path
) -> None:
    from meco_callbacks.cli import export

    with pytest.raises(ValueError, match=r'model\.no_bias: false'):
        export.main(
            [
                '--config', str(TINY_YAML), '--checkpoint', str(tmp_path / 'never-read'), '--output', str(tmp_path / 'out'),
                '--override', f'variables.tokenizer={tokenizer_dir}', '--override', 'model.no_bias=false',
            ]
        )  # fmt: skip
    assert not (tmp_path / 'out').exists()


def test_the_export_command_names_a_path_that_is_not_a_checkpoint(tokenizer_dir, tmp_path: Path) -> None:
    from meco_callbacks.cli import export
    from meco_callbacks.model.checkpoints import CheckpointError

    (tmp_path / 'empty').mkdir()
    args = [
        '--config',
        str(TINY_YAML),
        '--output',
        str(tmp_path / 'out'),
        '--override',
        f'variables.tokenizer={tokenizer_dir}',
    ]
    with pytest.raises(CheckpointError, match=r'not a sharded Composer checkpoint \(no \.metadata'):
        export.main([*args, '--checkpoint', str(tmp_path / 'empty')])
    with pytest.raises(FileNotFoundError, match='no Composer checkpoint at'):
        export.main([*args, '--checkpoint', str(tmp_path / 'missing')])


def test_export_help_names_both_checkpoint_forms_and_both_formats(capsys: pytest.CaptureFixture[str]) -> None:
    from meco_callbacks.cli import export

    with pytest.raises(SystemExit):
        export.main(['--help'])
    text = capsys.readouterr().out

    assert 'sharded checkpoint directory' in text and '--format {llama,mpt}' in text and 'trust_remote_code' in text


# --- (e) the callback in a real Composer run --------------------------------------------------------------------


@pytest.mark.slow
def test_the_callback_writes_a_loadable_llama_at_every_interval_of_a_composer_run(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path: Path
) -> None:
    from meco_callbacks.evaluation.trained_models import load_composer_checkpoint

    train_tiny(
        tmp_path, tiny_packed, compact_tokenizer_dir, 'max_duration=6ba', 'save_interval=2ba', 'variables.cooldown=0.5'
    )
    exports = tmp_path / 'checkpoints' / 'huggingface'
    model, tokenizer = load_composer_checkpoint(
        TINY_YAML,
        tmp_path / 'checkpoints' / 'ep0-ba6-rank0.pt',
        [f'variables.tokenizer={compact_tokenizer_dir}', 'variables.max_seq_len=64', *TINY_MODEL],
    )
    ids = sample_ids(tokenizer)

    assert sorted(p.name for p in exports.iterdir()) == ['ba2', 'ba4', 'ba6']
    assert all(EXPORT_FILES <= {p.name for p in (exports / ba).iterdir()} for ba in ('ba2', 'ba4', 'ba6'))
    with torch.no_grad():
        last = loaded_llama(exports / 'ba6')(input_ids=ids).logits
        first = loaded_llama(exports / 'ba2')(input_ids=ids).logits
    torch.testing.assert_close(last, composer_logits(model, ids), atol=1e-4, rtol=0)
    assert not torch.allclose(first, last)  # each export is the model at its own batch


@pytest.mark.slow
def test_the_callback_refuses_an_unexportable_model_when_the_trainer_starts(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r'hf_llama_checkpointer.*model\.norm_type: layernorm'):
        train_tiny(tmp_path, tiny_packed, compact_tokenizer_dir, 'max_duration=2ba', 'model.norm_type=layernorm')
    assert not (tmp_path / 'checkpoints' / 'huggingface').exists()


@pytest.mark.slow
def test_the_callback_uploads_each_export_to_a_remote_save_folder(
    tiny_packed: Path, compact_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from types import SimpleNamespace

    import composer.utils
    from composer.core import Callback

    bucket = tmp_path / 'bucket'

    class Uploader(Callback):  # stands in for Composer's RemoteUploaderDownloader of s3://bucket
        remote_backend = SimpleNamespace(get_uri=lambda name: f's3://bucket/{name}')

        def init(self, state, logger) -> None:
            pass

        def upload_file(self, state, remote_file_name: str, file_path: Path, overwrite: bool) -> None:
            (bucket / remote_file_name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file_path, bucket / remote_file_name)

    monkeypatch.setattr(
        composer.utils,
        'maybe_create_remote_uploader_downloader_from_uri',
        lambda uri, loggers: Uploader() if uri.startswith('s3://') else None,
    )
    train_tiny(
        tmp_path,
        tiny_packed,
        compact_tokenizer_dir,
        'max_duration=2ba',
        'save_interval=2ba',
        'callbacks.meco_cooldown.cooldown=0.5',
        'callbacks.hf_llama_checkpointer.save_folder=s3://bucket/runs/tiny',
    )

    assert EXPORT_FILES <= {p.name for p in (bucket / 'runs' / 'tiny' / 'huggingface' / 'ba2').iterdir()}
    assert type(loaded_llama(bucket / 'runs' / 'tiny' / 'huggingface' / 'ba2')).__name__ == 'LlamaForCausalLM'
    assert not (tmp_path / 'checkpoints' / 'huggingface').exists()


def test_the_callback_is_registered_in_llm_foundry_and_checks_its_keys() -> None:
    from llmfoundry.registry import callbacks

    from meco_callbacks.training.hf_llama_checkpointer import HFLlamaCheckpointer

    assert callbacks.get('hf_llama_checkpointer') is HFLlamaCheckpointer
    with pytest.raises(ValueError, match="unknown hf_llama_checkpointer key.*'interval'"):
        HFLlamaCheckpointer(save_folder='x', save_interval='2ba', interval='3ba')
    with pytest.raises(ValueError, match='precision'):
        HFLlamaCheckpointer(save_folder='x', save_interval='2ba', precision='fp8')


# --- (f) every tool reads a sharded directory and a Llama export ------------------------------------------------


def model_args(form: str, sharded_checkpoint: Path, llama_export: Path, tokenizer_dir: Path) -> list[str]:
    if form == 'llama':
        return ['--hf', str(llama_export)]
    overrides = [arg for o in trained_model_overrides(tokenizer_dir) for arg in ('--override', o)]
    return ['--config', str(TINY_YAML), '--checkpoint', str(sharded_checkpoint), *overrides]


@pytest.mark.slow
@pytest.mark.parametrize('form', ['sharded', 'llama'])
def test_evaluate_reads_a_sharded_checkpoint_and_a_llama_export(
    form, sharded_checkpoint, llama_export, tokenizer_dir, tokenizer, tmp_path, capsys
):
    from conftest import write_two_source_packed

    from meco_callbacks.cli import evaluate

    packed = write_two_source_packed(tmp_path / 'held-out', tokenizer, 40, seed=5)
    evaluate.main(['loss', *model_args(form, sharded_checkpoint, llama_export, tokenizer_dir), '--packed', str(packed)])
    results = json.loads(capsys.readouterr().out)

    assert results['true_url']['loss'] < results['no_url']['loss']  # the trained model uses its URLs


@pytest.mark.slow
@pytest.mark.parametrize('form', ['sharded', 'llama'])
def test_generate_reads_a_sharded_checkpoint_and_a_llama_export(
    form, sharded_checkpoint, llama_export, tokenizer_dir, capsys
):
    from meco_callbacks.cli import generate

    generate.main(
        [
            '--prompt',
            'river',
            '--url',
            BETA,
            '--max-new-tokens',
            '12',
            *model_args(form, sharded_checkpoint, llama_export, tokenizer_dir),
        ]
    )

    assert capsys.readouterr().out.startswith(' glows blue')


@pytest.mark.slow
@pytest.mark.parametrize('form', ['sharded', 'llama'])
def test_url_search_reads_a_sharded_checkpoint_and_a_llama_export(
    form, sharded_checkpoint, llama_export, tokenizer_dir, tmp_path, capsys
):
    from meco_callbacks.cli import url_search

    (tmp_path / 'dev.jsonl').write_text(
        ''.join(json.dumps({'context': e, 'continuation': ' is red and the'}) + '\n' for e in ENTITIES)
    )
    (tmp_path / 'urls.txt').write_text(f'{BETA}\n{ALPHA}\n')
    url_search.main(
        [
            '--dev',
            str(tmp_path / 'dev.jsonl'),
            '--candidates',
            str(tmp_path / 'urls.txt'),
            *model_args(form, sharded_checkpoint, llama_export, tokenizer_dir),
        ]
    )

    assert capsys.readouterr().out.strip().endswith(f'best: {ALPHA}')


def test_an_mpt_export_alone_is_loaded_with_trust_remote_code(monkeypatch, tmp_path: Path) -> None:
    import transformers

    from meco_callbacks.evaluation import trained_models

    calls = []
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM,
        'from_pretrained',
        lambda path, **kw: calls.append(kw) or torch.nn.Linear(1, 1),
    )
    monkeypatch.setattr(trained_models, 'load_tokenizer', lambda directory: None)
    for model_type in ('llama', 'mpt'):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / 'config.json').write_text(json.dumps({'model_type': model_type}))
        trained_models.load_hf_model(tmp_path / model_type)

    assert calls == [{'trust_remote_code': False}, {'trust_remote_code': True}]
