"""Export a MeCo (llm-foundry MPT) model as a native transformers Llama: config, weights, tokenizer.

The recipes' MPT (RoPE, no biases, RMSNorm, grouped-query attention, SwiGLU) is a Llama under other names. After
renaming the weights and splitting the fused ``Wqkv`` into ``q_proj``/``k_proj``/``v_proj`` (MPT rotates the same
``rotate_half`` halves of each head as Llama, so no permutation is needed), ``LlamaForCausalLM`` computes the same
logits, and ``AutoModelForCausalLM.from_pretrained(dir)`` loads it without ``trust_remote_code``.

Every MPT setting that Llama cannot express (ALiBi, no RoPE, biases, LayerNorm, QK-norm, clipped QKV, another
softmax scale, sliding windows, softcapping, logit scaling, a non-SwiGLU FFN, per-layer overrides, ...) is refused
with a ValueError naming the YAML key (:func:`check_llama_exportable`): an export never silently computes something
else. Settings that act only in training (dropouts, ``embedding_fraction``, which scales the embedding gradient,
``attn_uses_sequence_id``) leave the forward pass unchanged and are exported as they are.

    config = llama_config(mpt_config, tokenizer)
    weights = llama_state_dict(mpt_state_dict, mpt_config)
    save_llama(weights, config, out_dir, tokenizer=tokenizer, dtype=torch.bfloat16)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    'LLAMA_WEIGHTS_NAME',
    'check_llama_exportable',
    'llama_config',
    'llama_state_dict',
    'mpt_config_of',
    'save_llama',
    'unsupported_settings',
]

log = logging.getLogger(__name__)

LLAMA_WEIGHTS_NAME = 'model.safetensors'
RMSNORMS = ('rmsnorm', 'low_precision_rmsnorm', 'triton_rmsnorm')  # x / rms(x) * weight, no bias: Llama's norm
KV_HEADS_BY_ATTN_TYPE = {'multihead_attention', 'multiquery_attention', 'grouped_query_attention'}
ROPE_SCALINGS = ('no_scaling', 'linear', 'dynamic', 'llama3')  # MPT's hf RoPE is transformers' Llama RoPE


def mpt_config_of(model: Any) -> Any:
    """The ``MPTConfig`` of a Composer MPT (``.model.config``), an ``MPTForCausalLM`` (``.config``) or the config."""
    for candidate in (model, getattr(model, 'config', None), getattr(getattr(model, 'model', None), 'config', None)):
        if candidate is not None and getattr(candidate, 'model_type', None) == 'mpt':
            return candidate
    raise ValueError(
        f'{type(model).__name__} is not an llm-foundry MPT (meco_mpt_causal_lm or mpt_causal_lm): only MPT models '
        'are exported as Llama.'
    )


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)


def _head_dim(config: Any) -> int:
    return int(_get(config, 'd_model')) // int(_get(config, 'n_heads'))


def _kv_heads(config: Any) -> int:
    attn = _get(config, 'attn_config') or {}
    kind = attn.get('attn_type', 'multihead_attention')
    if kind == 'multiquery_attention':
        return 1
    if kind == 'grouped_query_attention':
        return int(attn.get('kv_n_heads') or _get(config, 'n_heads'))
    return int(_get(config, 'n_heads'))


def _ffn_hidden_size(config: Any) -> int:
    ffn = _get(config, 'ffn_config') or {}
    if ffn.get('ffn_hidden_size') is not None:
        return int(ffn['ffn_hidden_size'])
    return int(int(_get(config, 'd_model')) * float(_get(config, 'expansion_ratio', 4)))


def unsupported_settings(config: Any) -> list[str]:
    """The settings of an MPT config (``MPTConfig`` or a dict) that a transformers Llama cannot express, by YAML key."""
    attn = dict(_get(config, 'attn_config') or {})
    ffn = dict(_get(config, 'ffn_config') or {})
    fc_type = _get(config, 'fc_type') or 'torch'
    fc_name = fc_type.get('name', 'torch') if isinstance(fc_type, Mapping) else fc_type
    d_model, n_heads = int(_get(config, 'd_model')), int(_get(config, 'n_heads'))
    head_dim, config_head_dim = d_model // n_heads, _get(config, 'head_dim')
    norm_type = str(_get(config, 'norm_type', 'low_precision_layernorm')).lower()
    ffn_type = ffn.get('ffn_type', 'mptmlp')
    act = dict(ffn.get('ffn_act_fn') or {'name': 'gelu'})  # MPT's default activation is GELU
    attn_type = attn.get('attn_type', 'multihead_attention')
    rope = bool(attn.get('rope'))
    rope_impl = attn.get('rope_impl', 'dail')
    rope_scaling = (attn.get('rope_hf_config') or {}).get('type', 'no_scaling')
    softmax_scale = attn.get('softmax_scale')
    default_scale = softmax_scale is None or math.isclose(float(softmax_scale), head_dim**-0.5, rel_tol=1e-9)
    no_bias = bool(_get(config, 'no_bias', False))
    qkv_bias = bool(_get(config, 'attention_bias') or False)
    logit_scale = _get(config, 'logit_scale')
    plain_logits = logit_scale is None or (isinstance(logit_scale, int | float) and float(logit_scale) == 1.0)
    temperature = (attn.get('attn_temperature_tuning') or {}).get('attn_scale', 0.0)
    checks = [
        ('model.attn_config.alibi: true (ALiBi; Llama uses RoPE)', bool(attn.get('alibi'))),
        ('model.attn_config.rope: false (no RoPE; Llama needs rope: true)', not rope),
        ('model.learned_pos_emb: true (learned positions; Llama has none)', bool(_get(config, 'learned_pos_emb'))),
        ('model.attn_config.nope: true (layers without positions)', bool(attn.get('nope'))),
        (
            f'model.attn_config.rope_impl: {rope_impl} (only hf: dail offsets positions by the cache)',
            rope and rope_impl != 'hf',
        ),
        (
            f'model.attn_config.rope_hf_config.type: {rope_scaling} (no Llama rope_scaling)',
            rope and rope_scaling not in ROPE_SCALINGS,
        ),
        ('model.no_bias: false (biases; the Llama export has none)', not no_bias),
        ('model.attention_bias: true (QKV biases)', no_bias and qkv_bias),
        (f'model.norm_type: {norm_type} (Llama normalises with RMSNorm: rmsnorm)', norm_type not in RMSNORMS),
        ('model.attn_config.qk_ln: true (QK LayerNorm)', bool(attn.get('qk_ln'))),
        ('model.attn_config.qk_gn: true (QK GroupNorm)', bool(attn.get('qk_gn'))),
        ('model.attn_config.clip_qkv (clipped QKV)', attn.get('clip_qkv') is not None),
        (f'model.attn_config.softmax_scale: {softmax_scale} (Llama scales by 1/sqrt(head_dim))', not default_scale),
        ('model.attn_config.sliding_window_size (sliding-window attention)', attn.get('sliding_window_size', -1) != -1),
        (
            'model.attn_config.attn_logit_softcapping (attention softcapping)',
            attn.get('attn_logit_softcapping') is not None,
        ),
        ('model.attn_config.attn_temperature_tuning.attn_scale (temperature tuning)', bool(temperature)),
        ('model.attn_config.kv_dim (cross-attention inputs)', attn.get('kv_dim') is not None),
        (f'model.attn_config.attn_type: {attn_type}', attn_type not in KV_HEADS_BY_ATTN_TYPE),
        (
            f'model.head_dim: {config_head_dim} (not d_model / n_heads = {head_dim})',
            config_head_dim not in (None, head_dim) or d_model % n_heads != 0,
        ),
        (f'model.ffn_config.ffn_type: {ffn_type} (Llama has a gated MLP: mptglu)', ffn_type != 'mptglu'),
        (
            f'model.ffn_config.ffn_act_fn: {act} (SwiGLU needs {{name: silu}})',
            act.get('name') != 'silu' or any(key not in ('name', 'inplace') for key in act),
        ),
        (f'model.fc_type: {fc_name} (only torch linear layers)', fc_name != 'torch'),
        (f'model.logit_scale: {logit_scale} (scaled logits)', not plain_logits),
        ('model.final_logit_softcapping (softcapped logits)', _get(config, 'final_logit_softcapping') is not None),
        ('model.block_overrides (per-layer overrides)', bool(_get(config, 'block_overrides'))),
    ]
    return [setting for setting, unsupported in checks if unsupported]


def check_llama_exportable(config: Any, what: str = 'this model') -> None:
    """Raise a ValueError naming every setting of ``config`` (an MPT config) that a Llama export cannot keep."""
    settings = unsupported_settings(config)
    if settings:
        raise ValueError(
            f'{what} cannot be exported as a Llama without changing what it computes; unsupported: '
            + '; '.join(settings)
            + ". Export it as MPT instead (recipes/export.py --format mpt, or llm-foundry's hf_checkpointer)."
        )


def llama_config(config: Any, tokenizer: Any = None, dtype: torch.dtype | None = None) -> Any:
    """The ``LlamaConfig`` of an exportable MPT config (checked first), with the tokenizer's special token ids."""
    from transformers import LlamaConfig

    check_llama_exportable(config)
    attn = dict(_get(config, 'attn_config') or {})
    rope = dict(attn.get('rope_hf_config') or {'type': 'no_scaling'})
    rope_type = rope.pop('type', 'no_scaling')
    rope_scaling = None if rope_type == 'no_scaling' else {'rope_type': rope_type, **rope}
    special = {}
    if tokenizer is not None:
        for name in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
            value = getattr(tokenizer, name, None)
            if value is not None:
                special[name] = value
    for name in ('bos_token_id', 'eos_token_id', 'pad_token_id'):  # the MPT config's own, when the tokenizer lacks one
        if name not in special and _get(config, name) is not None:
            special[name] = _get(config, name)
    llama = LlamaConfig(
        vocab_size=int(_get(config, 'vocab_size')),
        hidden_size=int(_get(config, 'd_model')),
        intermediate_size=_ffn_hidden_size(config),
        num_hidden_layers=int(_get(config, 'n_layers')),
        num_attention_heads=int(_get(config, 'n_heads')),
        num_key_value_heads=_kv_heads(config),
        head_dim=_head_dim(config),
        hidden_act='silu',
        max_position_embeddings=int(_get(config, 'max_seq_len')),
        rms_norm_eps=float(_get(config, 'norm_eps', 1e-5)),
        rope_theta=float(attn.get('rope_theta', 10000)),
        rope_scaling=rope_scaling,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=float(attn.get('attn_pdrop', 0.0)),
        tie_word_embeddings=bool(_get(config, 'tie_word_embeddings', True)),
        use_cache=True,
        **special,
    )
    llama.architectures = ['LlamaForCausalLM']
    if dtype is not None:
        llama.torch_dtype = dtype
    return llama


# Tail of an MPT parameter name inside a block -> Llama's (the fused Wqkv is split separately).
_BLOCK_RENAMES = {
    'norm_1.weight': 'input_layernorm.weight',
    'norm_2.weight': 'post_attention_layernorm.weight',
    'attn.Wq.weight': 'self_attn.q_proj.weight',
    'attn.Wk.weight': 'self_attn.k_proj.weight',
    'attn.Wv.weight': 'self_attn.v_proj.weight',
    'attn.out_proj.weight': 'self_attn.o_proj.weight',
    'ffn.gate_proj.weight': 'mlp.gate_proj.weight',
    'ffn.up_proj.weight': 'mlp.up_proj.weight',
    'ffn.down_proj.weight': 'mlp.down_proj.weight',
}
_WRAPPER_SEGMENTS = re.compile(r'(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod|norm_attn_norm)\.')


def _mpt_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` keyed as ``MPTForCausalLM`` (``transformer.*``, ``lm_head.*``): Composer's ``model.`` and
    FSDP/activation-checkpointing wrapper segments removed."""
    out = {}
    for key, value in state_dict.items():
        out[_WRAPPER_SEGMENTS.sub('', key).removeprefix('model.')] = value
    return out


def llama_state_dict(state_dict: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """MPT weights (``MPTForCausalLM`` or Composer ``model.``-prefixed names) as ``LlamaForCausalLM`` weights.

    Raises a ValueError for an unexportable config, and for weights that do not fit it: a missing or unknown
    parameter, or an ``lm_head`` that disagrees with ``tie_word_embeddings``.
    """
    check_llama_exportable(config)
    mpt = _mpt_names(state_dict)
    n_layers, n_heads = int(_get(config, 'n_layers')), int(_get(config, 'n_heads'))
    head_dim, kv_heads = _head_dim(config), _kv_heads(config)
    tied = bool(_get(config, 'tie_word_embeddings', True))
    if tied and 'lm_head.weight' in mpt:
        raise ValueError(
            'the config ties the output layer to the embedding (model.tie_word_embeddings: true) but the weights hold '
            'a separate lm_head.weight: the config and the checkpoint do not belong together.'
        )
    if not tied and 'lm_head.weight' not in mpt:
        raise ValueError(
            'the config has a separate output layer (model.tie_word_embeddings: false) but the weights hold no '
            'lm_head.weight: the config and the checkpoint do not belong together.'
        )
    llama: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in mpt.items():
        if name == 'transformer.wte.weight':
            llama['model.embed_tokens.weight'] = value
        elif name == 'transformer.norm_f.weight':
            llama['model.norm.weight'] = value
        elif name == 'lm_head.weight':
            llama['lm_head.weight'] = value
        elif match := re.fullmatch(r'transformer\.blocks\.(\d+)\.(.+)', name):
            layer, tail = match.groups()
            prefix = f'model.layers.{layer}.'
            if tail == 'attn.Wqkv.weight':
                q, k, v = value.split([n_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=0)
                for proj, part in zip('qkv', (q, k, v), strict=True):
                    llama[f'{prefix}self_attn.{proj}_proj.weight'] = part.clone()  # no storage shared with Wqkv
            elif tail in _BLOCK_RENAMES:
                llama[prefix + _BLOCK_RENAMES[tail]] = value
            else:
                unknown.append(name)
        elif name.endswith(('.inv_freq', 'rotary_embedding.inv_freq')):
            continue  # RoPE's frequencies: recomputed from rope_theta
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f'weights with no Llama counterpart (not a MeCo/llm-foundry MPT state dict?): {unknown[:8]}')
    expected = {'model.embed_tokens.weight', 'model.norm.weight', *(['lm_head.weight'] if not tied else [])}
    for layer in range(n_layers):
        expected |= {f'model.layers.{layer}.{tail}' for tail in _BLOCK_RENAMES.values()}
    missing = sorted(expected - llama.keys())
    extra = sorted(llama.keys() - expected)
    if missing or extra:
        raise ValueError(
            f'the weights do not match the config ({n_layers} layers): missing {missing[:8]}, unexpected {extra[:8]}'
        )
    return llama


def save_llama(
    weights: Mapping[str, torch.Tensor],
    config: Any,
    out_dir: str | Path,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a transformers Llama directory: config.json, model.safetensors, generation_config.json, tokenizer files.

    The weights are written as they are named (``llama_state_dict``), cast to ``dtype``, without building a model.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig
    from transformers.utils import GENERATION_CONFIG_NAME

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.torch_dtype = dtype
    config.save_pretrained(out)
    tensors = {
        name: value.detach().to(device='cpu', dtype=dtype).contiguous()
        for name, value in weights.items()
        if not (config.tie_word_embeddings and name == 'lm_head.weight')
    }
    save_file(tensors, str(out / LLAMA_WEIGHTS_NAME), metadata={'format': 'pt'})
    # Not GenerationConfig.save_pretrained: its warnings.catch_warnings() resets Python's once-per-place warning
    # registry, so every periodic export would make the training log repeat its warnings.
    GenerationConfig.from_model_config(config).to_json_file(out / GENERATION_CONFIG_NAME)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
