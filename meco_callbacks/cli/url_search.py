"""Rank candidate URLs for a task by the model's loss (or accuracy) on the task's dev examples behind each URL.

  python recipes/url_search.py --dev dev.jsonl --candidates urls.txt --hf run/huggingface/ba40000 [--by accuracy]
dev.jsonl: {"context": ..., "continuation": ...} per line (llm-foundry language_modeling format);
urls.txt: one candidate URL or domain per line (# comments allowed). Prints the ranking, best first.
Each candidate becomes the prefix training put before its documents (the run's metadata of it, e.g. its domain, in
the run's template, from --config; MeCo's default for --hf), after BOS when the tokenizer adds one. An example
longer than the model's context has its context cut from the left, keeping the prefix and the continuation;
the "cut" column counts them per candidate. An example whose prefix and continuation alone do not fit is an error.
--guidance γ scores with context guidance (Fan et al. 2025): each candidate's logits weighed against the same example
without a prefix, logits = no_url + γ · (url − no_url); 1 gives the plain ranking, above 1 sharpens the URL's effect.
"""

from __future__ import annotations

import argparse
import logging

from meco_callbacks.cli.evaluate import add_model_args, model_metadata
from meco_callbacks.evaluation.guidance import GUIDANCE_HELP, guidance_scale
from meco_callbacks.evaluation.trained_models import load_trained_model
from meco_callbacks.evaluation.url_search import rank_urls, read_candidate_urls, read_dev_examples


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, score every candidate and print the ranking."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dev', required=True, help="the task's dev examples (JSON Lines: context, continuation)")
    parser.add_argument('--candidates', required=True, help='a file of candidate URLs, one per line')
    parser.add_argument(
        '--by',
        choices=('loss', 'accuracy'),
        default='loss',
        help='rank by mean continuation loss (default) or exact-match accuracy (ties by loss)',
    )
    parser.add_argument('--guidance', type=guidance_scale, metavar='GAMMA', help=GUIDANCE_HELP)
    add_model_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    model, tokenizer = load_trained_model(args.config, args.checkpoint, args.hf, args.override, args.device)
    examples = read_dev_examples(args.dev)
    metadata = model_metadata(args)
    ranked = rank_urls(
        model, tokenizer, examples, read_candidate_urls(args.candidates), args.by, metadata, args.guidance
    )
    print(f'{"rank":>4}  {"loss":>8}  {"accuracy":>8}  {"cut":>5}  url')
    for i, score in enumerate(ranked, 1):
        print(f'{i:>4}  {score.loss:8.4f}  {score.accuracy:8.3f}  {score.truncated:>5}  {score.url}')
    print(f'best: {ranked[0].url}')
