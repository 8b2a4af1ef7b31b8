"""Load a trained MeCo model for evaluation or generation: a Composer checkpoint with its train YAML, or an HF directory.

A Composer checkpoint holds weights, not the architecture, so the run's YAML (with the same overrides the run
used) rebuilds the model and tokenizer through llm-foundry's registries before the weights are loaded. An HF
directory written by llm-foundry's ``hf_checkpointer`` is plain MPT with its modeling code and tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.tokenizer.loading import check_tokenizer_location, load_tokenizer

log = logging.getLogger(__name__)


def train_config(config_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The train YAML with ``key=value`` overrides applied and variables resolved, as a plain dict."""
    cfg = OmegaConf.load(str(config_path))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    for key in ('model', 'tokenizer'):
        if key not in resolved:
            raise ValueError(
                f'{config_path} has no `{key}:` block; pass the train YAML the checkpoint was trained with.'
            )
    return resolved


def training_metadata(config_path: str | Path | None, overrides: Sequence[str] = ()) -> MetadataConfig:
    """The metadata setting a model was trained with, which inference prompts must use.

    The train YAML's ``train_loader.dataset.metadata`` block (with the run's overrides) when the YAML is given; an
    HF directory carries no such record, so without a YAML it is MeCo's default (the domain, ``URL: {}\\n\\n``).
    """
    if config_path is None:
        return MetadataConfig()
    loader = train_config(config_path, overrides).get('train_loader') or {}
    return MetadataConfig.from_dict((loader.get('dataset') or {}).get('metadata'))


def load_composer_checkpoint(
    config_path: str | Path, checkpoint: str | Path, overrides: Sequence[str] = (), device: str = 'cpu'
) -> tuple[torch.nn.Module, Any]:
    """(Composer model in eval mode, tokenizer) rebuilt from the train YAML with the checkpoint's weights loaded."""
    from llmfoundry.utils.builders import build_composer_model, build_tokenizer

    cfg = train_config(config_path, overrides)
    tokenizer_cfg = dict(cfg['tokenizer'])
    check_tokenizer_location(tokenizer_cfg['name'])  # a missing directory is named, not taken for a hub repo id
    tokenizer = build_tokenizer(tokenizer_cfg['name'], dict(tokenizer_cfg.get('kwargs') or {}))
    model_cfg = dict(cfg['model'])
    model_cfg['init_device'] = 'cpu'
    model = build_composer_model(name=model_cfg.pop('name'), cfg=model_cfg, tokenizer=tokenizer)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f'no Composer checkpoint at {checkpoint}: pass a file such as '
            "checkpoints/ep0-ba40-rank0.pt or latest-rank0.pt from the run's save_folder."
        )
    state = torch.load(str(checkpoint), map_location='cpu', weights_only=False)
    weights = state.get('state', {}).get('model') if isinstance(state, dict) else None
    if weights is None:
        raise ValueError(
            f'{checkpoint} is not a Composer checkpoint (no state.model); for an HF directory use load_hf_model.'
        )
    model.load_state_dict(weights)
    log.info('loaded %s (%s) from %s', type(model).__name__, cfg['model'].get('name'), checkpoint)
    return model.to(device).eval(), tokenizer


def load_hf_model(directory: str | Path, device: str = 'cpu') -> tuple[torch.nn.Module, Any]:
    """(HF causal LM in eval mode, tokenizer) from a directory written by ``hf_checkpointer`` or ``save_pretrained``."""
    from transformers import AutoModelForCausalLM

    if not (Path(directory) / 'config.json').is_file():
        raise FileNotFoundError(
            f'{directory} has no config.json: pass the directory hf_checkpointer wrote '
            '(save_folder/huggingface/ba<N>) or a save_pretrained directory.'
        )
    model = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=True)
    tokenizer = load_tokenizer(directory)
    log.info('loaded %s from %s', type(model).__name__, directory)
    return model.to(device).eval(), tokenizer


def load_trained_model(
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    hf: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = 'cpu',
) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) from either ``hf`` or ``config`` + ``checkpoint``, with a clear error for any other mix."""
    if hf and not (config or checkpoint):
        return load_hf_model(hf, device)
    if config and checkpoint and not hf:
        return load_composer_checkpoint(config, checkpoint, overrides, device)
    raise ValueError(
        'give either an HF directory (--hf DIR) or a train YAML and its Composer checkpoint '
        '(--config YAML --checkpoint FILE.pt), not both and not neither.'
    )
