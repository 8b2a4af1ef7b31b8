"""Print a trained MeCo model's continuation of a prompt, optionally steered by a URL prefix.

  python recipes/generate.py --prompt "import json" --url docs.python.org --hf run/huggingface/ba40000
  python recipes/generate.py --prompt "..." --url en.wikipedia.org --config yamls/tiny-cpu.yaml \\
      --checkpoint run/checkpoints/latest-rank0.pt
The URL becomes the prefix training put before its documents: the run's metadata of it (the domain, for kind
domain: https://docs.python.org/3/library/ gives "URL: docs.python.org\\n\\n") in the run's template, read from
--config, or MeCo's default for --hf; BOS first when the tokenizer adds one. Without --url the prompt is used as is.
--guidance γ (with --url) steers harder with context guidance (Fan et al. 2025): two streams, the prompt behind the
URL and without it, logits = no_url + γ · (url − no_url) at each step; 1 is plain --url generation, 2-3 steer more.
"""

from __future__ import annotations

import argparse
import logging

from meco_callbacks.cli.evaluate import add_model_args, model_metadata
from meco_callbacks.evaluation.generation import generate
from meco_callbacks.evaluation.guidance import GUIDANCE_HELP, guidance_scale
from meco_callbacks.evaluation.trained_models import load_trained_model


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the model and print the continuation."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--prompt', required=True, help='the text to continue')
    parser.add_argument('--url', help='a real or made-up URL or domain to condition on, e.g. docs.python.org')
    parser.add_argument('--max-new-tokens', type=int, default=64, help='tokens to generate (default 64)')
    parser.add_argument('--sample', action='store_true', help='sample instead of greedy decoding')
    parser.add_argument('--temperature', type=float, default=1.0, help='sampling temperature (with --sample)')
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (default 0)')
    parser.add_argument('--guidance', type=guidance_scale, metavar='GAMMA', help=f'{GUIDANCE_HELP}; needs --url')
    add_model_args(parser)
    args = parser.parse_args(argv)
    if args.guidance is not None and args.url is None:
        parser.error('--guidance needs --url: it weighs the prompt behind that URL against the prompt without it.')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    model, tokenizer = load_trained_model(args.config, args.checkpoint, args.hf, args.override, args.device)
    print(
        generate(
            model,
            tokenizer,
            args.prompt,
            args.url,
            args.max_new_tokens,
            model_metadata(args),
            do_sample=args.sample,
            temperature=args.temperature,
            seed=args.seed,
            guidance=args.guidance,
        )
    )
