"""Document-masked causal attention on PyTorch flex attention, llm-foundry's attention implementation ``flex``.

llm-foundry 0.22 masks documents either with flash-attn (not installable everywhere) or with ``torch``, which
materialises a dense ``(batch, 1, seq, seq)`` bias and the full score matrix. Flex attention takes a sparse
``BlockMask`` instead: blocks that cross a document boundary or lie above the diagonal are skipped, so document
masking makes attention cheaper, not dearer. The model (``meco_callbacks.model.mpt``) builds the mask once per forward
with :func:`build_document_block_mask` and hands it to every layer as ``attn_bias``; :func:`flex_attention_fn` is
the per-layer function registered in ``llmfoundry.layers_registry.attention_implementations``.

On the CPU flex attention runs eagerly (torch 2.7's Inductor cannot compile it there), through a dense reference
that is 1.4-4x slower per training step than llm-foundry's ``torch`` attention; so on the CPU the model hands the layers
llm-foundry's dense ``torch`` bias instead (unless ``model.flex_on_cpu: true``), and :func:`flex_attention_fn` runs
``torch`` attention when given one. On an accelerator flex attention is compiled with ``torch.compile``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from llmfoundry.models.layers.attention import scaled_multihead_dot_product_attention

try:  # Absent before torch 2.5; flex_attention_unavailable_reason() then says so when attn_impl: flex is asked for.
    import torch.nn.attention.flex_attention as flex_api
except ImportError:
    flex_api = None

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

FLEX_ATTN_IMPL = 'flex'
FLEX_ON_CPU = 'flex_on_cpu'  # model key: run flex attention eagerly on the CPU too (default: torch's path there)
_FLEX_MODULE = 'torch.nn.attention.flex_attention'


def flex_attention_unavailable_reason() -> str | None:
    """Why this torch cannot run ``attn_impl: flex`` (``None`` when it can): flex attention with GQA needs torch >= 2.5."""
    try:
        module = importlib.import_module(_FLEX_MODULE)
    except ImportError as err:
        return f'torch {torch.__version__} has no {_FLEX_MODULE} ({err})'
    if 'enable_gqa' not in inspect.signature(module.flex_attention).parameters:
        return f'torch {torch.__version__} flex_attention has no enable_gqa (grouped-query attention)'
    return None


def hidden_prefix_slots(prefix_mask: torch.Tensor, sequence_id: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, seq]`` bool: prefix slots that are not their prefix's last (the next slot is prefix, same segment).

    Under summary attention (``metadata.attention: summary``) these are visible only to queries that are prefix
    slots themselves; the last prefix slot, which has attended to the whole prefix, carries it to the document.
    """
    prefix = prefix_mask.bool()
    follows = torch.zeros_like(prefix)
    follows[:, :-1] = prefix[:, 1:]
    if sequence_id is not None:
        sequence_id = sequence_id.to(prefix.device)
        follows[:, :-1] &= sequence_id[:, :-1] == sequence_id[:, 1:]
    return prefix & follows


def summary_forbidden(prefix_mask: torch.Tensor, sequence_id: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, seq_q, seq_kv]`` bool: where summary attention forbids a query from seeing a key (a hidden prefix
    slot seen from a slot that is not a prefix slot). Everything else (causality, documents, padding) is left as is."""
    prefix = prefix_mask.bool()
    hidden = hidden_prefix_slots(prefix, sequence_id)
    return ~prefix[:, :, None] & hidden[:, None, :]


def _document_block_mask(
    sequence_id: torch.Tensor | None,
    key_is_token: torch.Tensor | None,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    prefix: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
) -> BlockMask:
    """Evaluate the causal / same-document / non-padding (/ summary prefix) rule block by block into a ``BlockMask``."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        allowed = q_idx >= kv_idx
        if sequence_id is not None:
            allowed = allowed & (sequence_id[b, q_idx] == sequence_id[b, kv_idx])
        if key_is_token is not None:
            allowed = allowed & key_is_token[b, kv_idx]
        if prefix is not None and hidden is not None:
            allowed = allowed & ~(hidden[b, kv_idx] & ~prefix[b, q_idx])
        return allowed

    per_row = sequence_id is not None or key_is_token is not None or prefix is not None
    return flex_api.create_block_mask(
        mask_mod,
        batch_size if per_row else None,
        None,
        seq_len,
        seq_len,
        device=device,
    )


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process (static shapes: a training run has one sequence length)."""
    return torch.compile(fn, dynamic=False)


def build_document_block_mask(
    seq_len: int,
    device: torch.device,
    sequence_id: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
) -> BlockMask:
    """The ``BlockMask`` for one batch: causal, within each row's document (same ``sequence_id``), off padded keys.

    ``sequence_id``, ``attention_mask`` and ``prefix_mask`` are ``[batch, seq_len]``; each may be ``None`` (no
    document structure, no padding, full attention to prefixes). With ``prefix_mask`` (summary attention), a prefix
    slot other than its prefix's last is hidden from every query that is not a prefix slot. Build it once per
    forward and share it across layers: it depends on the batch, not on the layer.
    """
    named = (('sequence_id', sequence_id), ('attention_mask', attention_mask), ('prefix_mask', prefix_mask))
    for name, tensor in named:
        if tensor is not None and (tensor.dim() != 2 or tensor.shape[-1] != seq_len):
            raise ValueError(
                f'{name} must be [batch, {seq_len}] to mask a sequence of {seq_len} tokens; got '
                f'shape {tuple(tensor.shape)}.'
            )
    rows = [t.shape[0] for _, t in named if t is not None]
    if len(set(rows)) > 1:
        raise ValueError(f'sequence_id, attention_mask and prefix_mask disagree on the batch size: {rows}.')
    key_is_token = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
    if sequence_id is not None:
        sequence_id = sequence_id.to(device)
    prefix = hidden = None
    if prefix_mask is not None:
        prefix = prefix_mask.to(device=device, dtype=torch.bool)
        hidden = hidden_prefix_slots(prefix, sequence_id)
    build = _document_block_mask if torch.device(device).type == 'cpu' else _compiled(_document_block_mask)
    return build(sequence_id, key_is_token, rows[0] if rows else 1, seq_len, torch.device(device), prefix, hidden)


def flex_attention_fn(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    n_heads: int,
    kv_n_heads: int,
    past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    softmax_scale: float | None = None,
    attn_bias: BlockMask | None = None,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = True,
    dropout_p: float = 0.0,
    training: bool = False,
    needs_weights: bool = False,
    attn_logit_softcapping: float | None = None,
    sliding_window_size: int = -1,
) -> tuple[torch.Tensor, None, None]:
    """llm-foundry attention implementation ``flex``: ``[b, s, h*d]`` q/k/v in, ``[b, s, h*d]`` context out.

    ``attn_bias`` must be the model's ``BlockMask`` (from :func:`build_document_block_mask`): it carries causality,
    documents and padding. Key/value heads are shared across query groups by flex attention itself
    (``enable_gqa``), never repeated in memory. Training-only: no KV cache, dropout or attention weights.
    A dense tensor bias (the model's choice on the CPU) goes to llm-foundry's ``torch`` attention unchanged.
    """
    if isinstance(attn_bias, torch.Tensor):
        return scaled_multihead_dot_product_attention(
            query,
            key,
            value,
            n_heads,
            kv_n_heads,
            past_key_value=past_key_value,
            softmax_scale=softmax_scale,
            attn_bias=attn_bias,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            dropout_p=dropout_p,
            training=training,
            needs_weights=needs_weights,
            attn_logit_softcapping=attn_logit_softcapping,
            sliding_window_size=sliding_window_size,
        )
    if not isinstance(attn_bias, flex_api.BlockMask):
        raise TypeError(
            f'attn_impl: flex needs the model to pass a flex BlockMask as attn_bias, got {type(attn_bias).__name__}. '
            'Use the model `meco_mpt_causal_lm`, which builds it once per forward from sequence_id.'
        )
    unsupported = {
        'past_key_value (KV cache / generation)': past_key_value is not None,
        'key_padding_mask (padding belongs in the BlockMask)': key_padding_mask is not None,
        'is_causal=False': not is_causal,
        'attention dropout (attn_pdrop)': dropout_p > 0.0 and training,
        'needs_weights (output_attentions)': needs_weights,
        'attn_logit_softcapping': attn_logit_softcapping is not None,
        'sliding_window_size': sliding_window_size != -1,
    }
    asked = [name for name, is_asked in unsupported.items() if is_asked]
    if asked:
        raise NotImplementedError(
            f'attn_impl: flex does not support {", ".join(asked)}. Use attn_impl: torch for this, or export the '
            'model to plain MPT (MeCoMPTForCausalLM.to_mpt()) for generation.'
        )

    batch, seq_len = query.shape[:2]
    q = query.view(batch, seq_len, n_heads, -1).transpose(1, 2)
    k = key.view(batch, seq_len, kv_n_heads, -1).transpose(1, 2)
    v = value.view(batch, seq_len, kv_n_heads, -1).transpose(1, 2)
    kernel = flex_api.flex_attention if query.device.type == 'cpu' else _compiled(flex_api.flex_attention)
    out = kernel(q, k, v, block_mask=attn_bias, scale=softmax_scale, enable_gqa=kv_n_heads != n_heads)
    return out.transpose(1, 2).reshape(batch, seq_len, -1), None, None
