"""Export a trained MeCo checkpoint as a Hugging Face model directory: a native Llama (default) or llm-foundry's MPT.

  python recipes/export.py --config yamls/meco-1b.yaml --checkpoint runs/meco-1b/ep0-ba36000 \\
      --output runs/meco-1b/llama-ba36000
  python recipes/export.py --config yamls/tiny-cpu.yaml --checkpoint runs/meco-tiny-cpu/ep0-ba40-rank0.pt \\
      --override variables.tokenizer=data/tokenizer --output runs/meco-tiny-cpu/mpt-ba40 --format mpt

--checkpoint is a sharded checkpoint directory (<save_folder>/ep<E>-ba<B>, holding __<rank>_0.distcp files and
.metadata, as FSDP runs with state_dict_type: sharded write) or a single checkpoint file (ep<E>-ba<B>-rank0.pt,
latest-rank0.pt); it is read on the CPU in this one process, no GPU or process group needed. --config is the train
YAML the run used, with the same --override values: it rebuilds the architecture and the tokenizer.

Beside config.json every export writes meco_metadata.json: the run's metadata setting (kind, template, ...), what
the loader read from the packed sets and whether the cooldown had run, which the inference tools read (--hf).
--format llama (default) writes config.json, model.safetensors, generation_config.json and the tokenizer files of a
transformers LlamaForCausalLM, which loads anywhere without trust_remote_code or this package:
    AutoModelForCausalLM.from_pretrained('runs/meco-1b/llama-ba36000')
A model whose settings a Llama cannot express (ALiBi, biases, LayerNorm, QK-norm, ...) is refused with the setting
named; export it with --format mpt instead. --format mpt writes the model's own save_pretrained: llm-foundry's MPT
with its modeling code, loaded with trust_remote_code=True (what llm-foundry's hf_checkpointer writes).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.metadata_record import metadata_record, write_metadata_record
from meco_callbacks.evaluation.trained_models import build_run_model, build_run_tokenizer, train_config
from meco_callbacks.formats import DATASET_INFO_FILE, read_dataset_info
from meco_callbacks.model.checkpoints import describe_checkpoint, load_model_weights

log = logging.getLogger('meco_callbacks.export')

PRECISIONS = ('float32', 'bfloat16', 'float16')


def export_checkpoint(
    config: str | Path,
    checkpoint: str | Path,
    output: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    export_format: str = 'llama',
    precision: str = 'float32',
) -> Path:
    """Write ``checkpoint`` (file or sharded directory) of the run ``config`` to ``output`` as ``export_format``."""
    import torch

    from meco_callbacks.model.llama_export import llama_config, llama_state_dict, mpt_config_of, save_llama

    if export_format not in ('llama', 'mpt'):
        raise ValueError(f'--format {export_format!r}: use llama or mpt.')
    dtype = getattr(torch, precision)
    cfg = train_config(config, overrides)
    tokenizer = build_run_tokenizer(cfg)
    out = Path(output)
    if export_format == 'llama':
        model = build_run_model(cfg, tokenizer, init_device='meta')  # the architecture only: no memory, no init
        mpt_config = mpt_config_of(model)
        llama = llama_config(mpt_config, tokenizer, dtype)  # refuses a model Llama cannot express, before reading
        log.info('reading the %s %s', describe_checkpoint(checkpoint), checkpoint)
        weights = llama_state_dict(load_model_weights(checkpoint), mpt_config)
        save_llama(weights, llama, out, tokenizer=tokenizer, dtype=dtype)
        write_metadata_record(out, export_metadata_record(cfg, checkpoint))
        log.info(
            'wrote a transformers LlamaForCausalLM (%d layers, d_model %d, %d KV heads, %s) to %s; load it with '
            'AutoModelForCausalLM.from_pretrained(%r), no trust_remote_code',
            llama.num_hidden_layers,
            llama.hidden_size,
            llama.num_key_value_heads,
            precision,
            out,
            str(out),
        )
        return out
    model = build_run_model(cfg, tokenizer, init_device='cpu')
    log.info('reading the %s %s', describe_checkpoint(checkpoint), checkpoint)
    model.load_state_dict(load_model_weights(checkpoint))
    model.model.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_metadata_record(out, export_metadata_record(cfg, checkpoint))
    log.info(
        "wrote llm-foundry's MPT (%s) to %s; load it with AutoModelForCausalLM.from_pretrained(%r, "
        'trust_remote_code=True)',
        precision,
        out,
        str(out),
    )
    return out


def export_metadata_record(cfg: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """The ``meco_metadata.json`` record of an export from the run's config (see ``metadata_record``).

    The metadata block is the train YAML's; bin edges given as ``quantiles: N`` and the packed sets' records are
    read from the packed sets' ``meco_dataset.json`` where they are on this machine (a remote set is not
    fetched: a warning says what is missing). Whether the cooldown had run is read from the checkpoint's batch
    (``ep<E>-ba<B>`` in its name, a ``latest`` link followed) when the run counts in batches; else it is null.
    """
    from meco_callbacks.data.dataset import stream_locations, with_recorded_bins

    dataset = ((cfg.get('train_loader') or {}).get('dataset')) or {}
    metadata = MetadataConfig.from_dict(dataset.get('metadata'))
    infos = []
    for remote, local in stream_locations(dataset):
        info = read_dataset_info(local) if local and Path(local).is_dir() else None
        if info is None:
            log.warning(
                'the packed set %s is not on this machine: meco_metadata.json records no %s of it',
                local or remote,
                DATASET_INFO_FILE,
            )
        else:
            infos.append(info)
    try:
        metadata = with_recorded_bins(metadata, infos)
    except ValueError as error:
        log.warning('meco_metadata.json: the bin edges could not be resolved (%s)', error)
    return metadata_record(metadata, infos, _cooldown_at(cfg, checkpoint), written_by='meco-export')


def _cooldown_at(cfg: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """The cooldown as of ``checkpoint``: configured, its fraction or boundary, and whether it had run (or None)."""
    from composer.core import Time, TimeUnit

    from meco_callbacks.training.cooldown import cooldown_boundary

    block = (cfg.get('callbacks') or {}).get('meco_cooldown')
    if block is None:
        return {'configured': False, 'cooldown': None, 'boundary': None, 'ran': False, 'started_at_batch': None}
    block = block or {}
    phase: dict[str, Any] = {'configured': True, 'cooldown': block.get('cooldown'), 'boundary': block.get('boundary')}
    phase.update(ran=None, started_at_batch=None)
    try:
        boundary = cooldown_boundary(
            Time.from_timestring(str(cfg['max_duration'])), block.get('cooldown'), block.get('boundary')
        )
    except (KeyError, ValueError):
        return phase
    phase['boundary'] = str(boundary)
    batch = re.search(r'ba(\d+)', Path(checkpoint).resolve().name)
    if boundary.unit == TimeUnit.BATCH and batch:
        ran = int(batch.group(1)) > boundary.value
        phase.update(ran=ran, started_at_batch=boundary.value if ran else None)
    return phase


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and export."""
    parser = argparse.ArgumentParser(
        prog='recipes/export.py', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--config', required=True, help='the train YAML the checkpoint was trained with')
    parser.add_argument(
        '--checkpoint',
        required=True,
        help='a sharded checkpoint directory (e.g. runs/meco-1b/ep0-ba36000) or a checkpoint file (.pt) of that run',
    )
    parser.add_argument(
        '--override',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='a YAML override the training run used (repeatable), e.g. variables.tokenizer=/models/llama3',
    )
    parser.add_argument('--output', required=True, help='the directory to write (created; files in it are replaced)')
    parser.add_argument(
        '--format',
        choices=('llama', 'mpt'),
        default='llama',
        help='llama (default): a transformers LlamaForCausalLM, no trust_remote_code; '
        "mpt: llm-foundry's MPT with its modeling code (trust_remote_code=True)",
    )
    parser.add_argument(
        '--precision',
        choices=PRECISIONS,
        default='float32',
        help='the dtype of the written weights (default float32: the checkpoint exactly; bfloat16 halves the size)',
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    export_checkpoint(args.config, args.checkpoint, args.output, args.override, args.format, args.precision)
