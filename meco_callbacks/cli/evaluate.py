"""Evaluate a trained MeCo model: conditional loss on packed data, or ICL tasks with and without a URL.

  python recipes/evaluate.py loss --config yamls/tiny-cpu.yaml --checkpoint run/checkpoints/latest-rank0.pt \\
      --packed data/held-out --wrong-url wrong.example --per-source
  python recipes/evaluate.py icl yamls/eval/icl-urls.yaml variables.checkpoint=run/latest-rank0.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.conditional_loss import NO_URL, TRUE_URL, compare_conditions, mismatched_url
from meco_callbacks.evaluation.trained_models import load_trained_model, training_metadata


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags that name a trained model: --hf DIR, or --config YAML --checkpoint FILE [--override k=v ...]."""
    parser.add_argument('--hf', help='a directory written by hf_checkpointer or save_pretrained')
    parser.add_argument('--config', help='the train YAML the Composer checkpoint was trained with')
    parser.add_argument('--checkpoint', help='a Composer checkpoint (.pt) of that run')
    parser.add_argument(
        '--override',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='a YAML override the training run used (repeatable), e.g. variables.max_seq_len=64',
    )
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')


def run_loss(args: argparse.Namespace) -> None:
    """Print (as JSON) the loss with the true URL, no URL and each --wrong-url over the same document tokens."""
    model, tokenizer = load_trained_model(args.config, args.checkpoint, args.hf, args.override, args.device)
    conditions = {'true_url': TRUE_URL, 'no_url': NO_URL}
    conditions.update({f'url={url}': mismatched_url(url) for url in args.wrong_url})
    results = compare_conditions(
        model,
        tokenizer,
        args.packed,
        conditions,
        args.batch_size,
        args.max_batches,
        args.per_source,
        args.reserve_tokens,
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
    metadata = training_metadata(cfg.get('config'), cfg.get('config_overrides') or [])
    template = cfg.get('url_template')
    if template is None or template == metadata.template:
        return metadata
    if cfg.get('config'):
        raise ValueError(
            f'url_template {template!r} differs from the template {metadata.template!r} the model was trained with '
            f'({cfg["config"]}); remove url_template from the eval YAML or make it match.'
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
    icl = sub.add_parser('icl', help='ICL tasks with and without a URL, from an eval YAML (yamls/eval/*.yaml)')
    icl.add_argument('yaml', help='the eval YAML, e.g. yamls/eval/icl-urls.yaml')
    icl.add_argument('overrides', nargs='*', help='key=value overrides of the eval YAML')
    icl.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    {'loss': run_loss, 'icl': run_icl}[args.command](args)
