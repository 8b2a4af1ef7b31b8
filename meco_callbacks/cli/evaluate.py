"""Evaluate a trained MeCo model: conditional loss on packed data, or ICL tasks with and without a URL.

  python recipes/evaluate.py loss --config yamls/tiny-cpu.yaml --checkpoint run/checkpoints/latest-rank0.pt \\
      --packed data/held-out --wrong-url wrong.example --per-source
  python recipes/evaluate.py icl yamls/eval/icl-urls.yaml variables.checkpoint=run/latest-rank0.pt
  python recipes/evaluate.py harness --model run/huggingface/ba40 --urls yamls/eval/olmes-tasks.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from meco_callbacks.data.compact import COMPACT_KIND
from meco_callbacks.data.dataset import with_recorded_compact
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.metadata_record import METADATA_RECORD_FILE, read_metadata_record
from meco_callbacks.evaluation.conditional_loss import NO_URL, compact_conditions, compare_conditions, mismatched_url
from meco_callbacks.evaluation.guidance import GUIDANCE_HELP, guidance_scale
from meco_callbacks.evaluation.trained_models import inference_metadata, load_trained_model, unescape_flag
from meco_callbacks.formats import read_dataset_info


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags that name a trained model: --hf DIR, or --config YAML --checkpoint FILE|DIR [--override k=v ...]."""
    parser.add_argument(
        '--hf',
        help="a Hugging Face directory: a Llama export (hf_llama_checkpointer's save_folder/huggingface/ba<N>, "
        'recipes/export.py; loaded without trust_remote_code) or an MPT export (hf_checkpointer, --format mpt)',
    )
    parser.add_argument('--config', help='the train YAML the Composer checkpoint was trained with')
    parser.add_argument(
        '--checkpoint',
        help='a Composer checkpoint of that run: a sharded checkpoint directory (e.g. runs/meco-1b/ep0-ba36000, '
        'holding __<rank>_0.distcp and .metadata) or a single file (ep0-ba40-rank0.pt, latest-rank0.pt)',
    )
    parser.add_argument(
        '--override',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='a YAML override the training run used (repeatable), e.g. variables.max_seq_len=64',
    )
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    add_metadata_args(parser)


def add_metadata_args(parser: argparse.ArgumentParser) -> None:
    """--template / --metadata-kind (for exports without meco_metadata.json) and --force-metadata."""
    parser.add_argument(
        '--template',
        type=unescape_flag,
        help="the prefix template, e.g. 'URL: {}\\n\\n' (\\n is a newline); only for a model whose setting is not "
        "recorded: one that contradicts the export's meco_metadata.json or the train YAML is refused",
    )
    parser.add_argument(
        '--metadata-kind',
        help='the metadata kind (domain, hash, ...); as --template, refused when it contradicts the recorded one',
    )
    parser.add_argument(
        '--force-metadata',
        action='store_true',
        help="prompt as --template / --metadata-kind / --config say even where they contradict the model's record",
    )


def model_metadata(args: argparse.Namespace, hf: str | None = None) -> MetadataConfig:
    """The metadata setting the tool's prompts use: the model's record or train YAML, with the flags checked."""
    return inference_metadata(
        args.config,
        args.override,
        hf if hf is not None else args.hf,
        template=args.template,
        kind=args.metadata_kind,
        force=args.force_metadata,
    )


def run_loss(args: argparse.Namespace) -> None:
    """Print (as JSON) the loss with the true URL, no URL and each --wrong-url over the same document tokens."""
    model, tokenizer = load_trained_model(args.config, args.checkpoint, args.hf, args.override, args.device)
    metadata = model_metadata(args)
    # Scored as prefixes (the loss tool's layout), each with the run's template, length cap, www rule and attention.
    true_url = dataclasses.replace(metadata, enabled=True, drop_probability=0.0, position='prefix', loss=False)
    conditions: dict[str, Any] = {'true_url': true_url, 'no_url': NO_URL}
    if metadata.kind == COMPACT_KIND:  # its tokens: the true and wrong URLs as trained
        if metadata.compact is None:
            true_url = with_recorded_compact(true_url, [read_dataset_info(args.packed) or {}])
        conditions.update(compact_conditions(true_url, args.wrong_url))
    else:
        conditions.update(
            {
                f'url={url}': dataclasses.replace(true_url, kind=mismatched_url(url)['kind'], bins=None, quantiles=None)
                for url in args.wrong_url
            }
        )
    results = compare_conditions(
        model,
        tokenizer,
        args.packed,
        conditions,
        args.batch_size,
        args.max_batches,
        args.per_source,
        args.reserve_tokens,
        guidance=args.guidance,
    )
    print(json.dumps(results, indent=2))


def run_icl(args: argparse.Namespace) -> None:
    """Run the eval YAML's ICL tasks unconditioned and conditioned and write the Markdown + CSV table."""
    from meco_callbacks.evaluation.icl import evaluate_icl_with_urls

    cfg = eval_config(args.yaml, args.overrides)
    model, tokenizer = load_trained_model(
        cfg.get('config'), cfg.get('checkpoint'), cfg.get('hf'), cfg.get('config_overrides') or [], args.device
    )
    rows = evaluate_icl_with_urls(
        model,
        tokenizer,
        cfg['icl_tasks'],
        cfg['urls'],
        cfg['output_dir'],
        int(cfg['icl_seq_len']),
        int(cfg.get('device_eval_batch_size', 4)),
        icl_metadata(cfg),
    )
    print((Path(cfg['output_dir']) / 'icl_urls.md').read_text(), end='')
    logging.getLogger(__name__).info('%d rows written to %s', len(rows), cfg['output_dir'])


def icl_metadata(cfg: dict) -> MetadataConfig:
    """The metadata setting of the ICL prefixes: the train YAML's (``config``), else MeCo's default with ``url_template``.

    A ``url_template`` that differs from the template the checkpoint was trained with is refused: the prompts
    would carry a prefix the model never saw.
    """
    hf, force = cfg.get('hf'), bool(cfg.get('force_metadata'))
    metadata = inference_metadata(cfg.get('config'), cfg.get('config_overrides') or [], hf, force=force)
    template = cfg.get('url_template')
    if template is None or template == metadata.template:
        return metadata
    recorded = hf is not None and read_metadata_record(hf) is not None
    if (cfg.get('config') or recorded) and not force:
        where = cfg['config'] if cfg.get('config') else f'{hf}/{METADATA_RECORD_FILE}'
        raise ValueError(
            f'url_template {template!r} differs from the template {metadata.template!r} the model was trained with '
            f'({where}); remove url_template from the eval YAML or make it match (force_metadata: true uses it anyway).'
        )
    return dataclasses.replace(metadata, template=template)


def eval_config(path: str, overrides: list[str]) -> dict:
    """The eval YAML with overrides applied and variables resolved (it has no model block of its own)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    missing = [key for key in ('icl_tasks', 'urls', 'output_dir', 'icl_seq_len') if key not in resolved]
    if missing:
        raise ValueError(f'{path} lacks {missing}; see yamls/eval/icl-urls.yaml for the keys an eval YAML takes.')
    return resolved


HARNESS_HELP = """\
Run lm-evaluation-harness tasks on a Hugging Face model directory in two conditions:
  no_url  each prompt as the harness writes it;
  url     the same prompts with the task's URL as the run's metadata prefix ("URL: <domain>\\n\\n" by default, from
          --config's metadata block) once in front of the whole few-shot context: after BOS, before the task's
          description and first example. The harness places it as its system instruction (no chat template), as
          `lm_eval ... --system_instruction $'URL: <domain>\\n\\n'` does; the prefix is tokenized on its own, as in
          training.
Writes OUTPUT/harness_urls.md and .csv (task x {no URL, URL, difference}, with the metric used: acc_norm where the
harness reports it, else acc) and the raw OUTPUT/harness_results.json.

  python recipes/evaluate.py harness --model runs/meco-1b/huggingface/ba40000 --urls yamls/eval/olmes-tasks.yaml
"""


def run_harness(args: argparse.Namespace) -> None:
    """Run the harness tasks with and without their URL and write the Markdown + CSV table and the raw JSON."""
    from meco_callbacks.evaluation.harness import evaluate_harness_with_urls, load_task_urls

    urls = load_task_urls(args.urls) if args.urls else {}
    tasks = [t.strip() for t in args.tasks.split(',') if t.strip()] if args.tasks else list(urls)
    if not tasks:
        raise ValueError('name the tasks: --tasks arc_easy,piqa or --urls FILE (every task in it).')
    batch_size = args.batch_size if args.batch_size.startswith('auto') else int(args.batch_size)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    evaluate_harness_with_urls(
        args.model,
        tasks,
        urls,
        args.output,
        conditions=[c.strip() for c in args.conditions.split(',')],
        num_fewshot=args.num_fewshot,
        limit=limit,
        metadata=model_metadata(args, hf=args.model),
        include_path=args.include_path,
        device=args.device,
        batch_size=batch_size,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        source=args.urls or 'the URLs file (--urls)',
    )
    print((Path(args.output) / 'harness_urls.md').read_text(), end='')


def add_harness_parser(sub: argparse._SubParsersAction) -> None:
    """The ``harness`` subcommand's flags."""
    harness = sub.add_parser(
        'harness',
        help='lm-evaluation-harness tasks with and without a URL before the few-shot prompt',
        description=HARNESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.add_argument('--model', required=True, help='a Hugging Face model directory (recipes/export.py)')
    harness.add_argument('--tasks', help='comma-separated harness task or group names (default: every task in --urls)')
    harness.add_argument(
        '--urls',
        help="a YAML of `tasks: {<task>: {url: <domain>}}`, e.g. yamls/eval/olmes-tasks.yaml (the paper's ten)",
    )
    harness.add_argument(
        '--conditions', default='no_url,url', help='which conditions to run: no_url, url or both (default no_url,url)'
    )
    harness.add_argument(
        '--num-fewshot', type=int, default=5, help='examples before each question (default 5; tasks fixed at 0 keep 0)'
    )
    harness.add_argument('--limit', type=float, help='at most this many examples per task (a fraction if < 1): checks')
    harness.add_argument('--output', default='eval-harness', help='output directory (default eval-harness)')
    harness.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (default cpu)')
    harness.add_argument('--batch-size', default='1', help='requests per forward pass, or auto (default 1)')
    harness.add_argument('--dtype', default='auto', help="the model's dtype: auto (its config), bfloat16, float32")
    harness.add_argument('--include-path', help='a directory of extra task YAMLs for the harness to index')
    harness.add_argument(
        '--config',
        help='the train YAML, for its metadata block (template, kind) when the model has no meco_metadata.json; '
        "default MeCo's URL: {domain}",
    )
    harness.add_argument(
        '--override', action='append', default=[], metavar='KEY=VALUE', help='a YAML override the run used'
    )
    harness.add_argument(
        '--trust-remote-code', action='store_true', help="load a model with its own code (llm-foundry's MPT export)"
    )
    add_metadata_args(harness)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen evaluation."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    loss = sub.add_parser('loss', help='per-token loss with the true URL, no URL and wrong URLs (per source)')
    add_model_args(loss)
    loss.add_argument('--packed', required=True, help='a held-out packed MeCo dataset (convert/pack.py)')
    wrong_url = 'a fixed URL put before every document (repeatable): the mismatched condition'
    loss.add_argument('--wrong-url', action='append', default=[], metavar='DOMAIN', help=wrong_url)
    loss.add_argument('--per-source', action='store_true', help='also report the loss per source domain')
    loss.add_argument('--batch-size', type=int, default=8, help='rows per forward pass (default 8)')
    loss.add_argument(
        '--max-batches',
        type=int,
        help='score this many batches of rows spread evenly over the whole split (default: every row)',
    )
    loss.add_argument(
        '--reserve-tokens',
        type=int,
        default=0,
        help="score only each row's first max_seq_len - N tokens (default 0: every token that "
        'survives prefix injection in all conditions)',
    )
    loss.add_argument('--guidance', type=guidance_scale, metavar='GAMMA', help=f'{GUIDANCE_HELP}; no_url is unchanged')
    icl = sub.add_parser('icl', help='ICL tasks with and without a URL, from an eval YAML (yamls/eval/*.yaml)')
    icl.add_argument('yaml', help='the eval YAML, e.g. yamls/eval/icl-urls.yaml')
    icl.add_argument('overrides', nargs='*', help='key=value overrides of the eval YAML')
    icl.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    add_harness_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    {'loss': run_loss, 'icl': run_icl, 'harness': run_harness}[args.command](args)
