"""The ``hf_llama_checkpointer`` callback: a native transformers Llama copy of the model at an interval.

Like llm-foundry's ``hf_checkpointer``, but the copy is a ``LlamaForCausalLM`` (``meco_callbacks.model.llama_export``),
which ``AutoModelForCausalLM.from_pretrained(dir)`` loads without ``trust_remote_code`` or this package:

    callbacks:
      hf_llama_checkpointer:
        save_folder: ${variables.save_folder}   # local or s3://, gs://, oci://...: <save_folder>/huggingface/ba<N>
        save_interval: ${variables.save_interval}  # e.g. 4000ba; the end of training is always exported
        precision: bfloat16                      # float32 (default), bfloat16 or float16

Beside ``config.json`` it writes ``meco_metadata.json`` (``meco_callbacks.data.metadata_record``): the run's metadata
setting, what the loader read from the packed sets and whether the cooldown had run, which the inference tools read.
Under FSDP every rank takes part in gathering the full state dict (offloaded to the CPU of rank 0), and rank 0
converts and writes it; a remote save_folder is written to a temporary directory and uploaded. A model that a
Llama cannot express (ALiBi, biases, LayerNorm, ...) stops the run at start-up (Event.INIT), naming the setting.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from composer.core import Callback, Event, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist, format_name_with_dist_and_time, parse_uri
from composer.utils.misc import create_interval_scheduler

from meco_callbacks.config_checks import check_bool, check_str, refuse
from meco_callbacks.data.metadata_record import metadata_record, write_metadata_record
from meco_callbacks.model.llama_export import (
    check_llama_exportable,
    llama_config,
    llama_state_dict,
    mpt_config_of,
    save_llama,
)

__all__ = ['HFLlamaCheckpointer', 'PRECISIONS']

log = logging.getLogger(__name__)

PRECISIONS = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


class HFLlamaCheckpointer(Callback):
    """Write the model as a transformers Llama to ``<save_folder>/huggingface/ba<N>`` every ``save_interval``.

    YAML keys: ``save_folder`` (local path or object-store URI), ``save_interval`` (a Composer time such as
    ``4000ba`` or ``1dur``; an integer means epochs, as for ``hf_checkpointer``), ``precision`` (``float32``,
    ``bfloat16``, ``float16``), ``huggingface_folder_name`` (default ``ba{batch}``), ``overwrite`` (of remote
    files; default true).
    """

    def __init__(
        self,
        save_folder: str,
        save_interval: str | int | Time,
        precision: str = 'float32',
        huggingface_folder_name: str = 'ba{batch}',
        overwrite: bool = True,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ValueError(
                f'unknown hf_llama_checkpointer key(s) {sorted(unknown)}; it takes save_folder, save_interval, '
                'precision, huggingface_folder_name and overwrite.'
            )
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise ValueError(f'hf_llama_checkpointer precision {precision!r}: use one of {list(PRECISIONS)}.')
        check_str('hf_llama_checkpointer.save_folder', save_folder)
        if not isinstance(save_interval, Time):
            if isinstance(save_interval, bool) or not isinstance(save_interval, (str, int)):
                raise refuse(
                    'hf_llama_checkpointer.save_interval', save_interval, "a time such as '4000ba' or '1dur', or epochs"
                )
            try:
                Time.from_input(save_interval, TimeUnit.EPOCH)
            except ValueError:
                raise refuse(
                    'hf_llama_checkpointer.save_interval', save_interval, "a time such as '4000ba' or '1dur', or epochs"
                ) from None
        check_str('hf_llama_checkpointer.huggingface_folder_name', huggingface_folder_name)
        check_bool('hf_llama_checkpointer.overwrite', overwrite)
        self.save_folder = save_folder
        self.dtype = PRECISIONS[precision]
        self.overwrite = bool(overwrite)
        _, _, folder = parse_uri(save_folder)
        self.save_dir_format = str(Path(folder) / 'huggingface' / huggingface_folder_name)
        self.save_interval = Time.from_input(save_interval, TimeUnit.EPOCH)
        self.check_interval = create_interval_scheduler(self.save_interval, include_end_of_training=True)
        self.remote_ud: Any = None
        self.config: Any = None  # the model's MPTConfig, from Event.INIT
        self.last_saved_batch: Time | None = None
        self.saved: list[str] = []  # the directories (or remote paths) written, in order

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self._init(state, logger)
        elif (
            state.get_elapsed_duration() is not None
            and self.check_interval(state, event)
            and self.last_saved_batch != state.timestamp.batch
        ):
            self._save(state)

    def _init(self, state: State, logger: Logger) -> None:
        """Refuse a model that is not an exportable MPT now, not hours later; set up the remote upload."""
        config = mpt_config_of(_composer_model(state))  # before FSDP wraps the model
        check_llama_exportable(config, 'the model (hf_llama_checkpointer)')
        self.config = config
        from composer.utils import maybe_create_remote_uploader_downloader_from_uri

        self.remote_ud = maybe_create_remote_uploader_downloader_from_uri(self.save_folder, loggers=[])
        if self.remote_ud is not None:
            self.remote_ud.init(state, logger)
            state.callbacks.append(self.remote_ud)
        log.info(
            'hf_llama_checkpointer: a transformers Llama (%s) every %s and at the end, in %s',
            str(self.dtype).removeprefix('torch.'),
            self.save_interval,
            os.path.join(self.save_folder, 'huggingface'),
        )

    def _save(self, state: State) -> None:
        self.last_saved_batch = state.timestamp.batch
        composer_model = _composer_model(state)
        config = self.config if self.config is not None else mpt_config_of(composer_model)
        save_dir = format_name_with_dist_and_time(self.save_dir_format, state.run_name, state.timestamp)
        weights = gather_full_state_dict(state)  # every rank takes part; only rank 0 gets the weights
        for name in list(weights):  # to the export's dtype one tensor at a time: fp32 and bf16 copies never both whole
            weights[name] = weights[name].to(self.dtype)
        if dist.get_global_rank() == 0:
            tokenizer = getattr(composer_model, 'tokenizer', None)
            local_dir = tempfile.mkdtemp() if self.remote_ud is not None else save_dir
            save_llama(
                llama_state_dict(weights, config),
                llama_config(config, tokenizer, self.dtype),
                local_dir,
                tokenizer=tokenizer,
                dtype=self.dtype,
            )
            record = run_metadata_record(state)
            if record is not None:
                write_metadata_record(local_dir, record)
            if self.remote_ud is not None:
                for filename in sorted(os.listdir(local_dir)):
                    self.remote_ud.upload_file(
                        state=state,
                        remote_file_name=os.path.join(save_dir, filename),
                        file_path=Path(local_dir, filename),
                        overwrite=self.overwrite,
                    )
                shutil.rmtree(local_dir, ignore_errors=True)  # upload_file copied each file to its staging folder
                where = self.remote_ud.remote_backend.get_uri(save_dir)
            else:
                where = save_dir
            self.saved.append(where)
            # DEBUG, as Composer's own checkpoint saver logs each save: the INIT line already says where they go.
            log.debug(
                'hf_llama_checkpointer: wrote a transformers Llama at batch %d to %s', int(state.timestamp.batch), where
            )
        del weights
        dist.barrier()


def run_metadata_record(state: State) -> dict[str, Any] | None:
    """The run's ``meco_metadata.json`` record: the meco loader's metadata setting (bin edges as read from the packed
    sets), the packed sets' records, and the cooldown as of this save; None for a run without the meco loader."""
    from meco_callbacks.data.dataloader import MeCoDataLoader
    from meco_callbacks.training.cooldown import MeCoCooldown

    loader = state.train_dataloader
    if not isinstance(loader, MeCoDataLoader):
        return None
    cooldown = next((cb for cb in state.callbacks if isinstance(cb, MeCoCooldown)), None)
    if cooldown is None:
        phase: dict[str, Any] = {'configured': False, 'cooldown': None, 'boundary': None, 'ran': False}
        phase['started_at_batch'] = None
    else:
        phase = {
            'configured': True,
            'cooldown': cooldown.cooldown,
            'boundary': str(cooldown.boundary) if cooldown.boundary is not None else cooldown.boundary_spec,
            'ran': cooldown.switched_at_batch is not None,
            'started_at_batch': cooldown.switched_at_batch,
        }
    return metadata_record(loader.metadata, loader.packed_infos, phase, written_by='hf_llama_checkpointer')


def _composer_model(state: State) -> Any:
    """The Composer model, unwrapped from DDP (FSDP wraps inside it, at ``.model``)."""
    return state.model.module if state.is_model_ddp else state.model


def gather_full_state_dict(state: State) -> dict[str, torch.Tensor]:
    """The model's full, unsharded state dict on rank 0's CPU ({} on other ranks); a collective under FSDP."""
    model = _composer_model(state)
    if state.fsdp_enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # As llm-foundry's hf_checkpointer: on the FSDP-wrapped HF model (keys transformer.*, lm_head.*).
        wrapped = model.model if isinstance(getattr(model, 'model', None), torch.nn.Module) else model
        full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full if dist.get_global_rank() == 0 else {}
    if dist.get_global_rank() != 0:
        return {}
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
