"""Load a trained MeCo model for evaluation or generation: a Composer checkpoint with its train YAML, or an HF directory.

A Composer checkpoint holds weights, not the architecture, so the run's YAML (with the same overrides the run
used) rebuilds the model and tokenizer through llm-foundry's registries before the weights are loaded. The
checkpoint is a single file (``ep0-ba40-rank0.pt``) or a sharded directory (``ep0-ba36000/`` with ``*.distcp`` and
``.metadata``, as FSDP runs with ``state_dict_type: sharded`` write it); ``meco_callbacks.model.checkpoints`` reads
both. An HF directory is a Llama export (``hf_llama_checkpointer``, ``recipes/export.py``), loaded without
``trust_remote_code``, or an MPT export (llm-foundry's ``hf_checkpointer``, ``--format mpt``), whose modeling code
is then trusted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from meco_callbacks.data.compact import COMPACT_KIND
from meco_callbacks.data.dataset import read_packed_info, stream_locations, with_recorded_compact
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.metadata_record import (
    METADATA_RECORD_FILE,
    contradictions,
    read_metadata_record,
    recorded_metadata,
)
from meco_callbacks.model.checkpoints import describe_checkpoint, load_model_weights
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
    Kind ``compact`` without ``metadata.compact`` gets the vocabulary recorded by the run's packed set(s), as the
    loader reads it (the YAML's ``train_loader.dataset`` streams).
    """
    if config_path is None:
        return MetadataConfig()
    loader = train_config(config_path, overrides).get('train_loader') or {}
    dataset = loader.get('dataset') or {}
    metadata = MetadataConfig.from_dict(dataset.get('metadata'))
    if metadata.kind == COMPACT_KIND and metadata.compact is None:
        infos = [read_packed_info(remote, local) for remote, local in stream_locations(dataset)]
        metadata = with_recorded_compact(metadata, [info for info in infos if info])
    return metadata


_WARNED_WITHOUT_RECORD: set[str] = set()


def unescape_flag(text: str) -> str:
    """A template typed on the command line: ``\\n`` and ``\\t`` as a newline and a tab (``$'...'`` works too)."""
    return text.replace('\\n', '\n').replace('\\t', '\t')


def inference_metadata(
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    hf: str | Path | None = None,
    template: str | None = None,
    kind: str | None = None,
    force: bool = False,
) -> MetadataConfig:
    """The metadata setting inference prompts must use, with the command line's flags checked against it.

    What the model was trained with comes from the export's ``meco_metadata.json`` (``hf``), else from the train
    YAML (``config_path`` with the run's ``overrides``). With both (the harness: a model directory and
    ``--config``), the YAML's prompt-shaping fields must agree with the record. A flag (``template``, ``kind``) or a
    YAML that contradicts the record is refused with both values in the message, unless ``force``: the model
    would be prompted in a form it never saw. A directory without the file (an export from before it existed)
    keeps MeCo's default (the domain in ``URL: {}\\n\\n``, or the YAML's setting) and says so once.
    """
    record = read_metadata_record(hf) if hf is not None else None
    source: str | None = None
    if record is not None:
        source = str(Path(hf) / METADATA_RECORD_FILE)
        metadata = recorded_metadata(record, source)
        if config_path is not None:
            given = training_metadata(config_path, overrides)
            differ = contradictions(metadata, given)
            if differ and not force:
                raise ValueError(
                    f'the train YAML {config_path} contradicts {source}, which the model was exported with: '
                    f'{"; ".join(differ)}. Drop --config (the record is what the model was trained with), or pass '
                    '--force-metadata to prompt it as the YAML says.'
                )
            if differ:
                log.warning(
                    '--force-metadata: prompting as %s says, not as %s records (%s)', config_path, source, differ
                )
                metadata = given
    elif config_path is not None:
        metadata = training_metadata(config_path, overrides)
        source = f'the train YAML {config_path}'
    else:
        metadata = MetadataConfig()
    if hf is not None and record is None and str(hf) not in _WARNED_WITHOUT_RECORD:
        _WARNED_WITHOUT_RECORD.add(str(hf))
        log.warning(
            '%s has no %s (an export from before it was written): prompts use %s (kind %r, template %r); if the model '
            'was trained otherwise, say so with --metadata-kind / --template.',
            hf,
            METADATA_RECORD_FILE,
            f'the metadata block of {config_path}' if config_path is not None else "MeCo's default",
            metadata.kind,
            metadata.template,
        )
    if metadata.kind == 'none':  # a baseline: a URL condition (a control) is laid out in MeCo's default form
        log.info('the model was trained without metadata (kind none): a URL is laid out as MeCo lays out a domain')
        metadata = dataclasses.replace(metadata, kind='domain', bins=None, quantiles=None)
        source = None
    given = {name: value for name, value in (('template', template), ('kind', kind)) if value is not None}
    flags = {'template': '--template', 'kind': '--metadata-kind'}
    differ = {name: value for name, value in given.items() if value != getattr(metadata, name)}
    if differ and source is not None and not force:
        name, value = next(iter(differ.items()))
        raise ValueError(
            f'{flags[name]} {value!r} contradicts {source}, which records {name} {getattr(metadata, name)!r}: the '
            f'model was trained with that. Drop {flags[name]}, or pass --force-metadata to prompt it in a form it '
            'never saw.'
        )
    if differ:
        if source is not None:
            log.warning('--force-metadata: %s instead of what %s records', differ, source)
        metadata = dataclasses.replace(metadata, **differ)
    return metadata


def build_run_tokenizer(cfg: dict[str, Any]) -> Any:
    """The run's tokenizer from its train config; a missing local directory is named, not taken for a repo id."""
    from llmfoundry.utils.builders import build_tokenizer

    tokenizer_cfg = dict(cfg['tokenizer'])
    check_tokenizer_location(tokenizer_cfg['name'])
    return build_tokenizer(tokenizer_cfg['name'], dict(tokenizer_cfg.get('kwargs') or {}))


def build_run_model(cfg: dict[str, Any], tokenizer: Any, init_device: str = 'cpu') -> torch.nn.Module:
    """The run's Composer model, untrained, from its train config on ``init_device`` (``meta``: shapes only)."""
    from llmfoundry.utils.builders import build_composer_model

    model_cfg = dict(cfg['model'])
    model_cfg['init_device'] = init_device
    return build_composer_model(name=model_cfg.pop('name'), cfg=model_cfg, tokenizer=tokenizer)


def load_composer_checkpoint(
    config_path: str | Path, checkpoint: str | Path, overrides: Sequence[str] = (), device: str = 'cpu'
) -> tuple[torch.nn.Module, Any]:
    """(Composer model in eval mode, tokenizer) rebuilt from the train YAML with the checkpoint's weights loaded.

    ``checkpoint`` is a checkpoint file or a sharded checkpoint directory (:func:`load_model_weights`).
    """
    cfg = train_config(config_path, overrides)
    tokenizer = build_run_tokenizer(cfg)
    model = build_run_model(cfg, tokenizer)
    model.load_state_dict(load_model_weights(checkpoint))
    log.info(
        'loaded %s (%s) from the %s %s',
        type(model).__name__,
        cfg['model'].get('name'),
        describe_checkpoint(checkpoint),
        checkpoint,
    )
    return model.to(device).eval(), tokenizer


def load_hf_model(directory: str | Path, device: str = 'cpu') -> tuple[torch.nn.Module, Any]:
    """(HF causal LM in eval mode, tokenizer) from an HF directory: a Llama export, an MPT export, any causal LM.

    Only an MPT export (``model_type: mpt``, llm-foundry's modeling code beside it) is loaded with
    ``trust_remote_code``; a Llama export (``hf_llama_checkpointer``, ``recipes/export.py``) needs none.
    """
    from transformers import AutoModelForCausalLM

    config_file = Path(directory) / 'config.json'
    if not config_file.is_file():
        raise FileNotFoundError(
            f'{directory} has no config.json: pass a directory written by hf_llama_checkpointer or hf_checkpointer '
            '(save_folder/huggingface/ba<N>), by recipes/export.py, or by save_pretrained.'
        )
    model_type = json.loads(config_file.read_text()).get('model_type')
    trust_remote_code = model_type == 'mpt'
    model = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(directory)
    log.info(
        'loaded %s (model_type %s%s) from %s',
        type(model).__name__,
        model_type,
        ', its own modeling code: trust_remote_code' if trust_remote_code else '',
        directory,
    )
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
        '(--config YAML --checkpoint FILE.pt or sharded checkpoint DIR), not both and not neither.'
    )
