"""Document-masked flex attention and the ``meco_mpt_causal_lm`` model, checked on the CPU against dense references."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.attention.flex_attention as flex_api
import torch.nn.functional as F
from composer import Trainer
from llmfoundry.callbacks import HuggingFaceCheckpointer
from llmfoundry.layers_registry import attention_implementations
from llmfoundry.models.layers.attention import GroupedQueryAttention
from llmfoundry.models.mpt import ComposerMPTCausalLM, MPTForCausalLM, modeling_mpt
from llmfoundry.registry import models
from llmfoundry.utils.builders import build_composer_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from meco_callbacks.model.attention import build_document_block_mask, flex_attention_fn
from meco_callbacks.model.mpt import MeCoMPTCausalLM, summary_attention

SEQ_LEN = 40
VOCAB = 97
# Row 0 packs documents A (16 tokens) and B (24 tokens); row 1 is one 40-token document.
DOC_A, DOC_B = 16, 24
SEQUENCE_ID = torch.tensor([[0] * DOC_A + [1] * DOC_B, [0] * SEQ_LEN])
POSITION_IDS = torch.stack([torch.cat([torch.arange(DOC_A), torch.arange(DOC_B)]), torch.arange(SEQ_LEN)])


def model_config(
    attn_impl: str = 'flex', uses_sequence_id: bool = True, flex_on_cpu: bool = False, **attn_overrides: Any
) -> dict[str, Any]:
    """The recipe's Llama-shaped MPT YAML (RoPE, SwiGLU, RMSNorm, GQA) at toy size: d_model 64, 2 layers, 4/2 heads.

    ``flex_on_cpu`` keeps ``attn_impl: flex`` on flex attention on the CPU, where the model otherwise runs torch's path.
    """
    attn_config = {
        'attn_impl': attn_impl,
        'attn_type': 'grouped_query_attention',
        'kv_n_heads': 2,
        'rope': True,
        'rope_impl': 'hf',
        'rope_theta': 500000,
        'attn_uses_sequence_id': uses_sequence_id,
        **attn_overrides,
    }
    return {
        'd_model': 64,
        'n_heads': 4,
        'n_layers': 2,
        'max_seq_len': 64,
        'vocab_size': VOCAB,
        'no_bias': True,
        'norm_type': 'rmsnorm',
        'tie_word_embeddings': False,
        'ffn_config': {'ffn_type': 'mptglu', 'ffn_act_fn': {'name': 'silu'}, 'ffn_hidden_size': 96},
        'attn_config': attn_config,
        'loss_fn': 'torch_crossentropy',
        'init_device': 'cpu',
        **({'flex_on_cpu': True} if flex_on_cpu else {}),
    }


def build(cfg: dict[str, Any], name: str = 'meco_mpt_causal_lm', seed: int = 0) -> Any:
    """Build a Composer model through llm-foundry's model registry, as the train script does."""
    torch.manual_seed(seed)
    return build_composer_model(name=name, cfg=cfg, tokenizer=None)


def packed_batch(seed: int = 1, with_documents: bool = True) -> dict[str, torch.Tensor]:
    """A MeCo loader batch: [2, 40] tokens, unshifted labels, all-ones mask, and the document structure."""
    input_ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    batch = {'input_ids': input_ids, 'labels': input_ids.clone(), 'attention_mask': torch.ones_like(input_ids)}
    if with_documents:
        batch.update(sequence_id=SEQUENCE_ID.clone(), position_ids=POSITION_IDS.clone())
    return batch


def dense_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    kv_n_heads: int,
    scale: float,
    allowed: torch.Tensor,
) -> torch.Tensor:
    """SDPA with an explicit ``[b, 1, s, s]`` boolean mask and K/V repeated per query group: the slow, obvious way."""
    b, s, _ = q.shape
    qh = q.view(b, s, n_heads, -1).transpose(1, 2)
    kh = k.view(b, s, kv_n_heads, -1).transpose(1, 2).repeat_interleave(n_heads // kv_n_heads, dim=1)
    vh = v.view(b, s, kv_n_heads, -1).transpose(1, 2).repeat_interleave(n_heads // kv_n_heads, dim=1)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed[:, None], scale=scale)
    return out.transpose(1, 2).reshape(b, s, -1)


@pytest.mark.parametrize('kv_n_heads', [4, 2], ids=['mha', 'gqa'])
@pytest.mark.parametrize('structure', ['causal', 'documents', 'documents+padding'])
def test_flex_attention_matches_dense_mask_sdpa_forward_and_backward(kv_n_heads: int, structure: str) -> None:
    n_heads, head_dim, scale = 4, 8, 0.3
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, SEQ_LEN, n_heads * head_dim, generator=gen, requires_grad=True)
    k = torch.randn(2, SEQ_LEN, kv_n_heads * head_dim, generator=gen, requires_grad=True)
    v = torch.randn(2, SEQ_LEN, kv_n_heads * head_dim, generator=gen, requires_grad=True)
    sequence_id = SEQUENCE_ID if structure != 'causal' else None
    attention_mask = torch.ones(2, SEQ_LEN, dtype=torch.bool)
    if structure == 'documents+padding':
        attention_mask[1, -6:] = False
    allowed = torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool).tril().expand(2, -1, -1)
    if sequence_id is not None:
        allowed = allowed & (sequence_id[:, :, None] == sequence_id[:, None, :])
    allowed = allowed & attention_mask[:, None, :]

    block_mask = build_document_block_mask(
        SEQ_LEN,
        torch.device('cpu'),
        sequence_id=sequence_id,
        attention_mask=None if structure != 'documents+padding' else attention_mask,
    )
    out, weights, cache = flex_attention_fn(
        q, k, v, n_heads=n_heads, kv_n_heads=kv_n_heads, softmax_scale=scale, attn_bias=block_mask
    )
    grad_out = torch.randn(out.shape, generator=gen)
    flex_grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref = dense_reference(q, k, v, n_heads, kv_n_heads, scale, allowed)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)

    assert weights is None and cache is None
    assert out.shape == (2, SEQ_LEN, n_heads * head_dim)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name, got, want in zip('qkv', flex_grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f'd{name} differs')


@pytest.mark.slow
def test_flex_model_equals_torch_model_with_sequence_id_forward_and_backward() -> None:
    flex, dense = build(model_config('flex', flex_on_cpu=True)), build(model_config('torch'))
    dense.load_state_dict(flex.state_dict())
    batch = packed_batch()

    flex_out, dense_out = flex(batch), dense(batch)
    flex.loss(flex_out, batch).backward()
    dense.loss(dense_out, batch).backward()

    torch.testing.assert_close(flex_out.logits, dense_out.logits, atol=1e-5, rtol=1e-5)
    for (name, p_flex), p_dense in zip(flex.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p_flex.grad, p_dense.grad, atol=1e-5, rtol=1e-4, msg=f'grad of {name} differs')


def test_flex_on_the_cpu_is_exactly_torch_attention_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    auto, dense = build(model_config('flex')), build(model_config('torch'))
    dense.load_state_dict(auto.state_dict())
    batch = packed_batch()

    with caplog.at_level(logging.INFO, logger='meco_callbacks.model.mpt'):
        auto_out, dense_out = auto(batch), dense(batch)
        auto.loss(auto_out, batch).backward()
        dense.loss(dense_out, batch).backward()
        auto(packed_batch(seed=2))

    assert torch.equal(auto_out.logits, dense_out.logits)
    assert all(torch.equal(a.grad, d.grad) for a, d in zip(auto.parameters(), dense.parameters()))
    assert [r.getMessage() for r in caplog.records if r.name == 'meco_callbacks.model.mpt'] == [
        "attn_impl: flex on the CPU runs as llm-foundry's torch attention with the same document mask: flex "
        'attention is not compiled on the CPU and its eager path is 1.4-4x slower per training step '
        '(model.flex_on_cpu: true keeps flex there).'
    ]


def test_flex_on_cpu_is_not_part_of_the_exported_config() -> None:
    model = build(model_config('flex', flex_on_cpu=True))

    assert model.model.transformer.flex_on_cpu
    assert not hasattr(model.model.config.to_mpt_config(), 'flex_on_cpu')


def test_torch_attn_impl_on_meco_model_is_exactly_llm_foundry_mpt() -> None:
    ours, mpt = build(model_config('torch')), build(model_config('torch'), name='mpt_causal_lm')
    mpt.load_state_dict(ours.state_dict())
    batch = packed_batch()

    assert torch.equal(ours(batch).logits, mpt(batch).logits)


@pytest.mark.parametrize(
    'uses_sequence_id, b_must_stay', [(True, True), (False, False)], ids=['document-masking', 'control-without-masking']
)
def test_perturbing_document_a_leaves_document_b_logits_unchanged(uses_sequence_id: bool, b_must_stay: bool) -> None:
    model = build(model_config('flex', uses_sequence_id=uses_sequence_id, flex_on_cpu=True)).eval()
    batch = packed_batch(with_documents=uses_sequence_id)
    perturbed = {key: value.clone() for key, value in batch.items()}
    perturbed['input_ids'][0, :DOC_A] = (batch['input_ids'][0, :DOC_A] + 1) % VOCAB

    with torch.no_grad():
        logits, perturbed_logits = model(batch).logits, model(perturbed).logits

    assert not torch.allclose(logits[0, :DOC_A], perturbed_logits[0, :DOC_A])
    assert torch.allclose(logits[0, DOC_A:], perturbed_logits[0, DOC_A:], atol=1e-6, rtol=0) == b_must_stay
    assert torch.equal(logits[1], perturbed_logits[1])


@pytest.mark.slow
def test_document_b_packed_after_a_gets_the_logits_of_b_alone() -> None:
    model = build(model_config('flex', flex_on_cpu=True)).eval()
    batch = packed_batch()
    alone = {
        'input_ids': batch['input_ids'][:1, DOC_A:],
        'position_ids': torch.arange(DOC_B)[None],
        'sequence_id': torch.zeros(1, DOC_B, dtype=torch.long),
    }

    with torch.no_grad():
        packed_b, alone_b = model(batch).logits[0, DOC_A:], model(alone).logits[0]

    torch.testing.assert_close(packed_b, alone_b, atol=1e-5, rtol=1e-5)


def test_batch_position_ids_set_the_rope_positions() -> None:
    # Without document masking B sees A, so restarting B's positions at 0 changes B's relative distances to A.
    model = build(model_config('flex', uses_sequence_id=False, flex_on_cpu=True)).eval()
    batch = packed_batch(with_documents=False)

    with torch.no_grad():
        default = model(batch).logits
        restarted = model({**batch, 'position_ids': POSITION_IDS}).logits

    assert torch.equal(default[:, :DOC_A], restarted[:, :DOC_A])
    assert not torch.allclose(default[0, DOC_A:], restarted[0, DOC_A:], atol=1e-3)


def test_block_mask_is_built_once_per_forward_and_shared_by_all_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(model_config('flex', flex_on_cpu=True))
    calls = {'create_block_mask': 0, 'flex_attention': 0}
    for name in calls:
        real = getattr(flex_api, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(flex_api, name, counted)
    batch = packed_batch()

    model.loss(model(batch), batch).backward()

    assert calls == {'create_block_mask': 1, 'flex_attention': 2}


@pytest.mark.parametrize(
    'attn_impl, overrides, dense_bias_builds',
    [('flex', {'flex_on_cpu': True}, 0), ('flex', {}, 1), ('torch', {}, 1)],
    ids=['flex-kept-on-cpu', 'flex-on-cpu', 'torch'],
)
def test_flex_builds_no_dense_sequence_id_bias_except_on_the_cpu_by_default(
    monkeypatch: pytest.MonkeyPatch, attn_impl: str, overrides: dict[str, Any], dense_bias_builds: int
) -> None:
    model = build(model_config(attn_impl, **overrides))
    builds = []
    real = modeling_mpt.apply_sequence_id

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        bias = real(*args, **kwargs)
        builds.append(tuple(bias.shape))
        return bias

    monkeypatch.setattr(modeling_mpt, 'apply_sequence_id', counted)

    model(packed_batch())

    assert len(builds) == dense_bias_builds
    assert builds == [(2, 1, SEQ_LEN, SEQ_LEN)] * dense_bias_builds


def test_flops_count_attention_within_each_document_when_attention_is_document_masked() -> None:
    meco = build(model_config())
    mpt = build(model_config('torch'), name='mpt_causal_lm')
    attention_per_squared_token = 2 * 2 * 2 * 64 * 3  # n_layers * 2 * 2 * d_model, times 3 for forward + backward
    # Row 0 holds documents of 16 and 24 tokens, row 1 one of 40: 16**2 + 24**2 + 40**2 = 2432, not 2 * 40**2 = 3200.
    saved = attention_per_squared_token * (3200 - 2432)

    assert meco.flops_per_batch(packed_batch()) == mpt.flops_per_batch(packed_batch()) - saved


@pytest.mark.parametrize(
    'uses_sequence_id, with_documents',
    [(True, False), (False, True)],
    ids=['batch-without-sequence-id', 'model-not-document-masked'],
)
def test_flops_are_llm_foundry_mpt_count_without_document_masking(uses_sequence_id: bool, with_documents: bool) -> None:
    meco = build(model_config(uses_sequence_id=uses_sequence_id))
    mpt = build(model_config('torch', uses_sequence_id=uses_sequence_id), name='mpt_causal_lm')
    batch = packed_batch(with_documents=with_documents)

    assert meco.flops_per_batch(batch) == mpt.flops_per_batch(batch)


def test_flex_and_the_model_are_registered_in_llm_foundry() -> None:
    assert attention_implementations.get('flex') is flex_attention_fn
    assert models.get('meco_mpt_causal_lm') is MeCoMPTCausalLM


def test_flex_requested_where_torch_has_no_flex_attention_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'torch.nn.attention.flex_attention', None)  # what torch < 2.5 looks like

    with pytest.raises(
        ValueError,
        match=r'attn_impl: flex is unavailable: torch .* has no torch\.nn\.attention\.'
        r'flex_attention.*set model\.attn_config\.attn_impl: torch',
    ):
        build(model_config('flex'))


def test_document_masking_on_flash_without_flash_attn_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError,
        match=r'attn_uses_sequence_id: true .* attn_impl: flash needs flash-attn >= 2\.1\.2'
        r'.*Set model\.attn_config\.attn_impl: flex',
    ):
        build(model_config('flash'))


@pytest.mark.parametrize(
    'override, named',
    [
        ({'alibi': True, 'rope': False}, 'attn_config.alibi: true'),
        ({'sliding_window_size': 8}, 'attn_config.sliding_window_size'),
        ({'attn_pdrop': 0.1}, 'attn_config.attn_pdrop > 0'),
        ({'attn_logit_softcapping': 30.0}, 'attn_config.attn_logit_softcapping'),
    ],
)
def test_settings_flex_does_not_implement_are_rejected_by_name(override: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=rf'attn_impl: flex does not support {named}'):
        build(model_config('flex', **override))


def test_sequence_id_of_another_length_than_the_tokens_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError,
        match=r'sequence_id must be \[batch, 40\] to mask a sequence of 40 tokens; got '
        r'shape \(2, 39\)',
    ):
        build_document_block_mask(SEQ_LEN, torch.device('cpu'), sequence_id=SEQUENCE_ID[:, 1:])


def test_flex_in_a_model_that_passes_no_block_mask_is_a_clear_error() -> None:
    attention = GroupedQueryAttention(d_model=32, n_heads=4, kv_n_heads=2, attn_impl='flex')

    with pytest.raises(
        TypeError, match=r'needs the model to pass a flex BlockMask .* got NoneType.*meco_mpt_causal_lm'
    ):
        attention(torch.randn(1, 8, 32), attn_bias=None)


@pytest.mark.slow
def test_training_then_hf_checkpointer_exports_plain_mpt_with_the_same_outputs(tmp_path: Path) -> None:
    model = build(model_config('flex'))
    rows = [{key: value[i] for key, value in packed_batch(seed=seed).items()} for seed in (1, 2) for i in (0, 1)]
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(rows, batch_size=2),
        max_duration='2ba',
        optimizers=torch.optim.AdamW(model.parameters(), lr=1e-3),
        callbacks=[HuggingFaceCheckpointer(save_folder=str(tmp_path), save_interval='2ba')],
        progress_bar=False,
    )

    trainer.fit()
    export_dir = tmp_path / 'huggingface' / 'ba2'
    saved = json.loads((export_dir / 'config.json').read_text())
    exported = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True).eval()
    input_ids = packed_batch(seed=3)['input_ids']
    with torch.no_grad():
        expected = model.model.eval()(input_ids=input_ids).logits
        got = exported(input_ids=input_ids).logits

    assert (saved['model_type'], saved['attn_config']['attn_impl']) == ('mpt', 'torch')
    assert saved['auto_map']['AutoModelForCausalLM'] == 'modeling_mpt.MPTForCausalLM'
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_to_mpt_shares_the_weights_and_keeps_document_masking_configured() -> None:
    model = build(model_config('flex'))
    mpt = model.model.to_mpt()
    config: dict[str, Any] | None = mpt.config.attn_config

    assert type(mpt) is MPTForCausalLM and mpt.training
    assert config is not None and config['attn_impl'] == 'torch' and config['attn_uses_sequence_id'] is True
    assert mpt.lm_head.weight.data_ptr() == model.model.lm_head.weight.data_ptr()
    assert not any(t.is_meta for t in [*mpt.parameters(), *mpt.buffers()])


# Summary attention (metadata.attention: summary): a hand-made row of S slots, two segments and padding.
# Row 0: [BOS p p p a a | BOS q b | pad pad pad]: a 3-token prefix (slots 1-3), a 1-token prefix (slot 7).
# Row 1: one 12-token document without a prefix.
S = 12
SUMMARY_PREFIX = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], [0] * S], dtype=torch.bool)
SUMMARY_SEQUENCE_ID = torch.tensor([[0] * 6 + [1] * 3 + [2] * 3, [0] * S])
SUMMARY_ATTENTION_MASK = torch.tensor([[1] * 9 + [0] * 3, [1] * S], dtype=torch.bool)
SUMMARY_POSITION_IDS = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2], list(range(S))])
# What each query slot of row 0 may see: document slots see BOS, the prefix's last token and their document.
SUMMARY_VISIBLE = {
    0: {0},
    1: {0, 1},
    2: {0, 1, 2},
    3: {0, 1, 2, 3},
    4: {0, 3, 4},
    5: {0, 3, 4, 5},
    6: {6},
    7: {6, 7},
    8: {6, 7, 8},
    **{padding: set() for padding in (9, 10, 11)},
}


def summary_batch(seed: int = 3, prefix: bool = True) -> dict[str, torch.Tensor]:
    """The hand-made rows as a model batch (with ``prefix_mask`` unless ``prefix`` is False)."""
    input_ids = torch.randint(0, VOCAB, (2, S), generator=torch.Generator().manual_seed(seed))
    batch = {
        'input_ids': input_ids,
        'labels': input_ids.clone(),
        'attention_mask': SUMMARY_ATTENTION_MASK.clone(),
        'sequence_id': SUMMARY_SEQUENCE_ID.clone(),
        'position_ids': SUMMARY_POSITION_IDS.clone(),
    }
    if prefix:
        batch['prefix_mask'] = SUMMARY_PREFIX.clone()
    return batch


def visible_by_rule() -> torch.Tensor:
    """``[2, S, S]`` bool: row 0 from SUMMARY_VISIBLE, row 1 plain causal."""
    allowed = torch.zeros(2, S, S, dtype=torch.bool)
    for q, keys in SUMMARY_VISIBLE.items():
        allowed[0, q, sorted(keys)] = True
    allowed[1] = torch.ones(S, S, dtype=torch.bool).tril()
    return allowed


def test_summary_hides_all_but_the_last_prefix_token_from_documents_in_the_dense_bias_and_the_flex_mask() -> None:
    dense_model, flex_model = build(model_config('flex')), build(model_config('flex', flex_on_cpu=True))
    cpu = torch.device('cpu')

    with summary_attention(dense_model.model, SUMMARY_PREFIX):
        bias, _ = dense_model.model.transformer._attn_bias(
            cpu, torch.float32, SUMMARY_ATTENTION_MASK, SUMMARY_SEQUENCE_ID
        )
    with summary_attention(flex_model.model, SUMMARY_PREFIX):
        block_mask, _ = flex_model.model.transformer._attn_bias(
            cpu, torch.float32, SUMMARY_ATTENTION_MASK, SUMMARY_SEQUENCE_ID
        )
    causal = torch.ones(S, S, dtype=torch.bool).tril()  # llm-foundry's torch attention adds causality itself
    dense_allowed = (bias[:, 0] > torch.finfo(bias.dtype).min / 2) & causal
    flex_allowed = flex_api.create_mask(block_mask.mask_mod, 2, 1, S, S, device=cpu)[:, 0]

    assert bias.shape == (2, 1, S, S)
    assert torch.equal(flex_allowed, visible_by_rule())
    assert torch.equal(dense_allowed[:, :9], visible_by_rule()[:, :9])  # padding queries: llm-foundry's own rows
    assert torch.equal(dense_allowed[1], visible_by_rule()[1])
    assert dense_model.model.transformer.prefix_mask is None  # cleared after the forward


@pytest.mark.parametrize('path', ['dense', 'flex'])
def test_a_document_token_reads_a_prefix_only_through_its_last_token(path: str) -> None:
    n_heads, head_dim = 2, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, S, n_heads * head_dim, generator=gen) for _ in range(3))
    model = build(model_config('flex', flex_on_cpu=path == 'flex'))
    with summary_attention(model.model, SUMMARY_PREFIX):
        bias, _ = model.model.transformer._attn_bias(
            torch.device('cpu'), torch.float32, SUMMARY_ATTENTION_MASK, SUMMARY_SEQUENCE_ID
        )

    def attend(values: torch.Tensor) -> torch.Tensor:
        return flex_attention_fn(q, k, values, n_heads=n_heads, kv_n_heads=n_heads, attn_bias=bias)[0][0]

    def with_value_changed(slot: int) -> torch.Tensor:
        changed = v.clone()
        changed[0, slot] += 1.0
        return attend(changed)

    base, hidden_changed, last_changed = attend(v), with_value_changed(1), with_value_changed(3)

    assert torch.equal(hidden_changed[4:9], base[4:9])  # documents a and b do not see slot 1
    assert not torch.allclose(hidden_changed[1:4], base[1:4])  # the prefix's own tokens do
    assert not torch.allclose(last_changed[4], base[4]) and not torch.allclose(last_changed[5], base[5])
    assert torch.equal(last_changed[6:9], base[6:9])  # another segment


@pytest.mark.parametrize('n_layers, through_the_last', [(1, False), (2, True)], ids=['one-layer', 'two-layers'])
def test_a_document_token_sees_its_prefix_through_the_summary_token_only(n_layers: int, through_the_last: bool) -> None:
    model = build({**model_config('flex', flex_on_cpu=True), 'n_layers': n_layers}).eval()
    batch = summary_batch()
    changed = {key: value.clone() for key, value in batch.items()}
    changed['input_ids'][0, 1] = (batch['input_ids'][0, 1] + 1) % VOCAB
    full, full_changed = ({k: v for k, v in b.items() if k != 'prefix_mask'} for b in (batch, changed))

    with torch.no_grad():
        logits, changed_logits = model(batch).logits[0], model(changed).logits[0]
        full_logits, full_changed_logits = model(full).logits[0], model(full_changed).logits[0]

    # One layer: slot 1 cannot reach document a; with two it can, through slot 3 (which attended to it).
    assert torch.equal(logits[4:6], changed_logits[4:6]) != through_the_last
    assert not torch.allclose(logits[2:4], changed_logits[2:4])
    assert not torch.allclose(full_logits[4:6], full_changed_logits[4:6])  # full attention: slot 1 is seen


def test_summary_attention_on_the_dense_bias_equals_the_flex_mask_in_the_model_forward_and_backward() -> None:
    flex, dense = build(model_config('flex', flex_on_cpu=True)), build(model_config('flex'))
    dense.load_state_dict(flex.state_dict())
    batch = summary_batch()

    flex_out, dense_out = flex(batch), dense(batch)
    flex.loss(flex_out, batch).backward()
    dense.loss(dense_out, batch).backward()

    real = SUMMARY_ATTENTION_MASK  # padding queries differ by design (flex: no keys; torch: llm-foundry's rows)
    torch.testing.assert_close(flex_out.logits[real], dense_out.logits[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense_out.logits[real], dense(summary_batch(prefix=False)).logits[real])


@pytest.mark.parametrize('attn_impl, flex_on_cpu', [('flex', False), ('flex', True), ('torch', False)])
def test_a_batch_without_prefix_mask_or_with_no_prefix_is_exactly_todays_forward(attn_impl: str, flex_on_cpu: bool):
    model = build(model_config(attn_impl, flex_on_cpu=flex_on_cpu)).eval()
    batch = summary_batch(prefix=False)
    no_prefix = {**batch, 'prefix_mask': torch.zeros(2, S, dtype=torch.bool)}

    with torch.no_grad():
        today = ComposerMPTCausalLM.forward(model, batch).logits  # llm-foundry's forward, which never reads it
        ours, empty = model(batch).logits, model(no_prefix).logits

    assert torch.equal(ours, today)
    assert torch.equal(empty, today)


def test_summary_attention_on_a_model_that_cannot_apply_it_is_a_clear_error() -> None:
    plain = build(model_config('torch'), name='mpt_causal_lm')
    with pytest.raises(ValueError, match='metadata.attention: summary needs the model meco_mpt_causal_lm'):
        with summary_attention(plain.model, SUMMARY_PREFIX):
            pass


@pytest.mark.parametrize('name', ['meco_mpt_causal_lm', 'mpt_causal_lm'])
def test_a_summary_loader_with_a_model_that_cannot_apply_it_stops_the_run(name: str) -> None:
    from types import SimpleNamespace

    from meco_callbacks.training.algorithm import MetadataConditioning

    model = build(model_config('torch'), name=name)
    injector = SimpleNamespace(summary_attention=True, document_masking=True, enabled=True)
    loader = SimpleNamespace(injector=injector, metadata=SimpleNamespace(kind='domain'))
    check = MetadataConditioning()._check_model

    if name == 'meco_mpt_causal_lm':
        check(SimpleNamespace(model=model), loader)
    else:
        with pytest.raises(ValueError, match='metadata.attention: summary needs a model that hides prefix tokens'):
            check(SimpleNamespace(model=model), loader)
