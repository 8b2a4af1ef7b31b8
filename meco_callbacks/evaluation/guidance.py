"""Context guidance (classifier-free guidance on the URL prefix), shared by generation, URL search and loss.

Fan, Sabolčec and Jaggi, "URLs Help, Topics Guide" (NeurIPS 2025): ``logits = logits_no_url + γ · (logits_url −
logits_no_url)``. γ = 1 is plain conditioning, γ = 0 the prompt without its prefix, γ > 1 pushes the model further
toward what the prefix says. Both streams hold the same text; only the URL stream has the prefix.

The combination acts on raw logits, as the paper's. Combining log-softmaxes instead shifts each position's guided
logits by one constant (``lse_no_url + γ · (lse_url − lse_no_url)``), which softmax removes: greedy picks, samples
and the log-probabilities the scores take (log-softmax of the guided logits) are the same either way.
"""

from __future__ import annotations

import argparse
import math

import torch


def guide(no_url: torch.Tensor, url: torch.Tensor, guidance: float) -> torch.Tensor:
    """``no_url + guidance · (url − no_url)``: exactly ``url`` at γ = 1 and exactly ``no_url`` at γ = 0.

    ``torch.lerp`` computes ``url − (url − no_url) · (1 − γ)`` for γ ≥ 0.5 and ``no_url + γ · (url − no_url)`` below,
    so each endpoint is reproduced bit for bit and γ = 1 scores and generates as plain conditioning does.
    """
    return torch.lerp(no_url, url, guidance)


def guidance_scale(text: str) -> float:
    """``--guidance`` on a command line: a finite number (1: plain conditioning, above 1: more of the URL)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a guidance scale: give a finite number γ (1 = plain URL conditioning, 1.5-3 = stronger).'
        )
    return value


GUIDANCE_HELP = (
    'context guidance γ (Fan et al. 2025): logits = no_url + γ · (url − no_url) from two passes, with the URL prefix '
    'and without it; 1 reproduces plain conditioning, above 1 pushes toward the URL (default: off, one pass)'
)
