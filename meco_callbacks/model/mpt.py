"""``meco_mpt_causal_lm``: llm-foundry's MPT that also runs ``attn_impl: flex``, document-masked flex attention.

MPT in llm-foundry 0.22 accepts only ``attn_impl`` ``torch`` or ``flash`` and gives document structure to
attention as a dense ``(batch, 1, seq, seq)`` bias. These subclasses accept ``flex``: the backbone builds one flex
``BlockMask`` per forward from ``sequence_id`` (and the padding mask) and passes it to every layer in place of the
bias, which is never built on this path. RoPE positions come from the batch's ``position_ids`` when present
(``rope_impl: hf``), so they restart at each document. On the CPU, where flex attention runs eagerly (1.4-4x slower
per training step, and no lighter: its eager path materialises the full score matrix too), ``flex`` computes the same
masked attention as llm-foundry's ``torch`` path instead, unless ``model.flex_on_cpu: true``; the choice is logged
once. With ``attn_impl: torch`` or ``flash`` these classes behave exactly like llm-foundry's MPT. Saving
(``save_pretrained``, which llm-foundry's ``hf_checkpointer`` calls) writes a plain MPT with ``attn_impl: torch``
that loads wherever MPT loads.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from llmfoundry.layers_registry import attention_implementations
from llmfoundry.models.layers.attention import GroupedQueryAttention, is_flash_v2_installed
from llmfoundry.models.mpt import ComposerMPTCausalLM, MPTConfig, MPTForCausalLM, MPTModel

from meco_callbacks.config_checks import check_bool
from meco_callbacks.model.attention import (
    FLEX_ATTN_IMPL,
    FLEX_ON_CPU,
    build_document_block_mask,
    flex_attention_unavailable_reason,
    summary_forbidden,
)

__all__ = [
    'MeCoMPTConfig',
    'MeCoMPTModel',
    'MeCoMPTForCausalLM',
    'MeCoMPTCausalLM',
    'VOCAB_FROM_TOKENIZER',
    'applies_summary_attention',
    'summary_attention',
]

log = logging.getLogger(__name__)

VOCAB_FROM_TOKENIZER = 'tokenizer'  # model.vocab_size: tokenizer -> len(tokenizer)


class MeCoMPTConfig(MPTConfig):
    """``MPTConfig`` that also accepts ``attn_config.attn_impl: flex``; every other setting is MPT's own.

    ``model_type`` stays ``mpt``, so llm-foundry treats it as MPT (its ``hf_checkpointer`` resets ``attn_impl`` to
    ``torch`` on export).
    """

    def _validate_config(self) -> None:
        """MPT's validation, with ``flex`` checked here and everything else checked by MPT as for ``torch``."""
        attn_impl = self.attn_config.get('attn_impl', 'flash')
        if attn_impl != FLEX_ATTN_IMPL:
            if (
                self.attn_config.get('attn_uses_sequence_id')
                and attn_impl == 'flash'
                and not is_flash_v2_installed(v2_version='v2.1.2')
            ):
                raise ValueError(
                    'model.attn_config.attn_uses_sequence_id: true (document masking) with attn_impl: flash needs '
                    'flash-attn >= 2.1.2, which is not installed. Set model.attn_config.attn_impl: flex '
                    '(document-masked flex attention), or torch (dense mask, slow and memory-hungry at long sequences).'
                )
            super()._validate_config()
            return
        reason = flex_attention_unavailable_reason()
        if reason is not None:
            raise ValueError(
                f'model.attn_config.attn_impl: flex is unavailable: {reason}. Flex attention needs '
                'torch >= 2.5; upgrade torch or set model.attn_config.attn_impl: torch.'
            )
        self.attn_config['attn_impl'] = 'torch'
        try:
            super()._validate_config()
        finally:
            self.attn_config['attn_impl'] = FLEX_ATTN_IMPL
        self._reject_settings_flex_lacks()

    def _reject_settings_flex_lacks(self) -> None:
        """Fail on MPT settings the flex path does not implement, naming each YAML key."""
        attn = self.attn_config
        lacking = {
            'attn_config.alibi: true': attn['alibi'],
            'attn_config.sliding_window_size != -1': attn['sliding_window_size'] != -1,
            'attn_config.attn_logit_softcapping': attn['attn_logit_softcapping'] is not None,
            'attn_config.attn_pdrop > 0': attn['attn_pdrop'] > 0,
            'attn_config.rope_impl other than hf': attn['rope'] and attn['rope_impl'] != 'hf',
            'use_cache: true (KV cache)': bool(self.use_cache),
        }
        asked = [setting for setting, is_set in lacking.items() if is_set]
        if asked:
            raise ValueError(
                f'model.attn_config.attn_impl: flex does not support {", ".join(asked)}; drop '
                f'{"them" if len(asked) > 1 else "it"} or use attn_impl: torch.'
            )

    def to_mpt_config(self) -> MPTConfig:
        """This config as a plain llm-foundry ``MPTConfig`` with ``attn_impl: torch``, ``init_device: cpu``: what export loads."""
        values = copy.deepcopy(self.to_dict())
        values['attn_config']['attn_impl'] = 'torch'
        values.pop(FLEX_ON_CPU, None)
        values['init_device'] = 'cpu'
        return MPTConfig.from_dict(values)


class MeCoMPTModel(MPTModel):
    """MPT backbone that, with ``attn_impl: flex``, gives every layer one ``BlockMask`` per forward, not a dense bias.

    ``prefix_mask`` (``[batch, seq]``, True on metadata prefix slots; set for one forward by :func:`summary_attention`)
    switches on summary attention (``metadata.attention: summary``): a prefix slot other than its prefix's last is
    hidden from every query that is not a prefix slot, in the flex ``BlockMask`` and in the dense ``torch`` bias
    alike. ``None`` (the default) is MPT's attention unchanged.
    """

    prefix_mask: torch.Tensor | None = None

    def __init__(self, config: MPTConfig) -> None:
        if config.attn_config['attn_impl'] != FLEX_ATTN_IMPL:
            super().__init__(config)
            return
        # MPTModel.__init__ knows only torch and flash (it sizes the dense bias for them). Build as torch, which has
        # the same parameters (an attention implementation has none), then point every attention layer at flex.
        config.attn_config['attn_impl'] = 'torch'
        try:
            super().__init__(config)
        finally:
            config.attn_config['attn_impl'] = FLEX_ATTN_IMPL
        self.attn_impl = FLEX_ATTN_IMPL  # attn_bias_shape stays torch's: the CPU path builds that dense bias
        self.flex_on_cpu = bool(getattr(config, FLEX_ON_CPU, False))
        self._cpu_choice_logged = False
        flex = attention_implementations.get(FLEX_ATTN_IMPL)
        for module in self.modules():
            if isinstance(module, GroupedQueryAttention):
                module.attn_impl = FLEX_ATTN_IMPL
                module.attn_fn = flex

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: list[tuple[torch.FloatTensor]] | None = None,
        attention_mask: torch.ByteTensor | None = None,
        sequence_id: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> Any:
        """MPT's forward; with ``flex`` a missing ``attention_mask`` becomes all ones, which sizes the block mask."""
        if self.attn_impl == FLEX_ATTN_IMPL and attention_mask is None:
            tokens = input_ids if input_ids is not None else inputs_embeds
            if tokens is not None:
                attention_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return super().forward(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            sequence_id=sequence_id,
            return_dict=return_dict,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
        )

    @torch.no_grad()
    def _attn_bias(
        self,
        device: torch.device,
        dtype: torch.dtype,
        attention_mask: torch.ByteTensor | None = None,
        sequence_id: torch.LongTensor | None = None,
    ) -> tuple[Any, torch.ByteTensor | None]:
        """MPT calls this once per forward; with ``flex`` it returns the batch's ``BlockMask`` (padding included)."""
        if self.attn_impl != FLEX_ATTN_IMPL:
            bias, mask = super()._attn_bias(device, dtype, attention_mask=attention_mask, sequence_id=sequence_id)
            return self._summary_bias(bias, sequence_id), mask
        if torch.device(device).type == 'cpu' and not self.flex_on_cpu:
            bias, mask = self._dense_attn_bias(device, dtype, attention_mask, sequence_id)
            return self._summary_bias(bias, sequence_id), mask
        assert attention_mask is not None  # forward() fills it in for flex
        block_mask = build_document_block_mask(
            attention_mask.shape[-1],
            device,
            sequence_id=sequence_id if self.attn_uses_sequence_id else None,
            attention_mask=attention_mask,
            prefix_mask=self.prefix_mask,
        )
        return block_mask, None

    def _summary_bias(self, bias: Any, sequence_id: torch.LongTensor | None) -> Any:
        """The dense bias with summary attention's rule added (``prefix_mask`` set), else the bias unchanged."""
        if self.prefix_mask is None:
            return bias
        if not isinstance(bias, torch.Tensor):
            raise ValueError(
                f'metadata.attention: summary needs attn_impl flex or torch (a mask the model builds); attn_impl '
                f'{self.attn_impl} cannot hide prefix tokens.'
            )
        seq = self.prefix_mask.shape[-1]
        bias = bias[..., -seq:, -seq:]  # MPT's cached causal bias is max_seq_len wide; attention takes its last rows
        documents = sequence_id if self.attn_uses_sequence_id else None  # as the flex mask reads them
        forbidden = summary_forbidden(self.prefix_mask.to(bias.device), documents)
        return bias.masked_fill(forbidden[:, None], torch.finfo(bias.dtype).min)

    def _dense_attn_bias(
        self,
        device: torch.device,
        dtype: torch.dtype,
        attention_mask: torch.ByteTensor | None,
        sequence_id: torch.LongTensor | None,
    ) -> tuple[Any, torch.ByteTensor | None]:
        """llm-foundry's ``torch`` bias (causal, documents, padding): the flex layers run ``torch`` attention on it."""
        if not self._cpu_choice_logged:
            self._cpu_choice_logged = True
            log.info(
                "attn_impl: flex on the CPU runs as llm-foundry's torch attention with the same document mask: flex "
                'attention is not compiled on the CPU and its eager path is 1.4-4x slower per training step '
                '(model.flex_on_cpu: true keeps flex there).'
            )
        self.attn_impl = 'torch'
        try:
            return super()._attn_bias(device, dtype, attention_mask=attention_mask, sequence_id=sequence_id)
        finally:
            self.attn_impl = FLEX_ATTN_IMPL


class MeCoMPTForCausalLM(MPTForCausalLM):
    """``MPTForCausalLM`` on :class:`MeCoMPTModel`; saves itself as plain MPT (``attn_impl: torch``)."""

    config_class = MeCoMPTConfig

    @property
    def backbone_model_class(self) -> type[MPTModel]:
        """The backbone that knows ``attn_impl: flex``."""
        return MeCoMPTModel

    def to_mpt(self) -> MPTForCausalLM:
        """A plain llm-foundry ``MPTForCausalLM`` (``attn_impl: torch``) sharing these weights: for export and generation."""
        config = self.config.to_mpt_config()
        config.init_device = 'meta'
        mpt = MPTForCausalLM(config)
        config.init_device = 'cpu'
        mpt.load_state_dict(self.state_dict(), assign=True)
        return mpt.train(self.training)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as plain MPT (:meth:`to_mpt`) with llm-foundry's modeling code beside it, as ``hf_checkpointer`` does.

        ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` then loads it without flex attention,
        this package or llm-foundry. Without the code, transformers would load its own older MPT, which has no
        grouped-query attention. The auto classes are set on this export only, not registered process-wide.
        """
        from llmfoundry.utils.huggingface_hub_utils import edit_files_for_hf_compatibility

        mpt = self.to_mpt()
        mpt._auto_class = 'AutoModelForCausalLM'
        mpt.config._auto_class = 'AutoConfig'
        mpt.save_pretrained(save_directory, **kwargs)
        edit_files_for_hf_compatibility(str(save_directory))


class MeCoMPTCausalLM(ComposerMPTCausalLM):
    """Composer wrapper of :class:`MeCoMPTForCausalLM`, registered in llm-foundry as ``meco_mpt_causal_lm``.

    Takes ``mpt_causal_lm``'s YAML keys; ``attn_config.attn_impl`` may also be ``flex``, and ``vocab_size`` may be
    ``tokenizer``: the size of the run's tokenizer (``len(tokenizer)``), so a recipe follows whatever tokenizer the
    data was converted with (a fixed number smaller than the tokenizer would be resized silently by Composer, the
    logged config still showing the old number). The batch's ``sequence_id`` and ``position_ids`` reach the model
    as in llm-foundry.
    """

    def __init__(self, tokenizer: Any = None, **kwargs: Any) -> None:
        if FLEX_ON_CPU in kwargs:
            check_bool(f'model.{FLEX_ON_CPU}', kwargs[FLEX_ON_CPU])  # bool('false') would be true
        if kwargs.get('vocab_size') == VOCAB_FROM_TOKENIZER:
            if tokenizer is None:
                raise ValueError(
                    f"model.vocab_size: {VOCAB_FROM_TOKENIZER} takes the size of the run's tokenizer, but the model "
                    'was built without one: set `tokenizer:` in the YAML or give vocab_size as a number.'
                )
            kwargs['vocab_size'] = len(tokenizer)
            log.info('meco_mpt_causal_lm: vocab_size %d, from the tokenizer %s', len(tokenizer), tokenizer.name_or_path)
        super().__init__(tokenizer=tokenizer, **kwargs)

    @property
    def model_class(self) -> type[MPTForCausalLM]:
        """The Hugging Face model this wraps."""
        return MeCoMPTForCausalLM

    @property
    def config_class(self) -> type[MPTConfig]:
        """The config class that accepts ``flex``."""
        return MeCoMPTConfig

    def forward(self, batch: Mapping) -> Any:
        """MPT's forward; a batch's ``prefix_mask`` (``metadata.attention: summary``) reaches the backbone's mask."""
        with summary_attention(self.model, batch.get('prefix_mask')):
            return super().forward(batch)

    def flops_per_batch(self, batch: Mapping) -> int:
        """MPT's count (what SpeedMonitor's MFU uses), less the attention across documents when attention is masked.

        llm-foundry counts a full ``max_seq_len**2`` attention per row. With ``attn_uses_sequence_id`` a token
        attends only inside its own document (and flex skips the masked blocks), so the attention term becomes
        the sum of squared document lengths; otherwise MFU is overstated for rows packed with short documents.
        Padding (id -1) is not counted.
        """
        config = self.model.config
        sequence_id = batch.get('sequence_id')
        if sequence_id is None or not config.attn_config.get('attn_uses_sequence_id') or config.block_overrides:
            return super().flops_per_batch(batch)
        rows, msl = batch['input_ids'].shape[:2]
        ids = sequence_id.long()
        keys = ids + msl * torch.arange(rows, device=ids.device).unsqueeze(1)  # one bucket per (row, document)
        lengths = torch.bincount(keys[ids >= 0], minlength=rows * msl)
        squared_lengths = int((lengths * lengths).sum().item())
        # MPT's attention term is linear in msl**2 (get_attention_flops(1) per squared token), times 3 for backward.
        masked_away = rows * msl * msl - squared_lengths
        return super().flops_per_batch(batch) - 3 * self.get_attention_flops(1) * masked_away


def applies_summary_attention(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds a :class:`MeCoMPTModel` that can apply a ``prefix_mask`` (``attn_impl`` flex or torch)."""
    return any(isinstance(m, MeCoMPTModel) and m.attn_impl in (FLEX_ATTN_IMPL, 'torch') for m in model.modules())


@contextmanager
def summary_attention(model: torch.nn.Module, prefix_mask: torch.Tensor | None) -> Iterator[None]:
    """For the forwards inside, give every :class:`MeCoMPTModel` in ``model`` the batch's ``prefix_mask``.

    ``None`` changes nothing. A model without a ``MeCoMPTModel`` (a plain MPT, a Llama) cannot apply it: a clear error.
    The backbone is looked up among the modules, so a wrapper (FSDP, activation checkpointing) does not hide it.
    """
    if prefix_mask is None:
        yield
        return
    backbones = [m for m in model.modules() if isinstance(m, MeCoMPTModel)]
    if not backbones:
        raise ValueError(
            f'metadata.attention: summary needs the model meco_mpt_causal_lm; {type(model).__name__} cannot hide '
            'prefix tokens from the document.'
        )
    for backbone in backbones:
        backbone.prefix_mask = prefix_mask
    try:
        yield
    finally:
        for backbone in backbones:
            backbone.prefix_mask = None
