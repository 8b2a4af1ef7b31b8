"""Rank candidate URLs for a task by the model's loss (or accuracy) on the task's dev examples behind each URL.

  python recipes/url_search.py --dev dev.jsonl --candidates urls.txt --hf run/huggingface/ba40000 [--by accuracy]
dev.jsonl: {"context": ..., "continuation": ...} per line (llm-foundry language_modeling format);
urls.txt: one candidate domain per line (# comments allowed). Prints the ranking, best first.
"""

from __future__ import annotations

import argparse
import logging

from meco_callbacks.cli.evaluate import add_model_args
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
    add_model_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    model, tokenizer = load_trained_model(args.config, args.checkpoint, args.hf, args.override, args.device)
    ranked = rank_urls(model, tokenizer, read_dev_examples(args.dev), read_candidate_urls(args.candidates), args.by)
    print(f'{"rank":>4}  {"loss":>8}  {"accuracy":>8}  url')
    for i, score in enumerate(ranked, 1):
        print(f'{i:>4}  {score.loss:8.4f}  {score.accuracy:8.3f}  {score.url}')
    print(f'best: {ranked[0].url}')
