"""Training tokens/s of MeCo's MPT with document masking: flex attention against llm-foundry's ``torch`` attention.

Three end-to-end training runs (forward, loss, backward, AdamW step) of ``meco_mpt_causal_lm`` on the same packed
batches, side by side in one process:

  (a) ``attn_impl: flex`` without ``sequence_id`` (plain causal attention),
  (b) ``attn_impl: torch`` with ``sequence_id`` (llm-foundry's dense document mask; out of memory is reported),
  (c) ``attn_impl: flex`` with ``sequence_id`` (document-masked flex attention).

On a GPU the default is the paper's 1.6B model (d2048, 24 layers, 16 heads, 8 KV heads, FFN 5504, Llama-3
vocabulary) at sequence length 8192, micro-batch 1, bf16 autocast; goals: (c) >= 1.05 x (a), (c) >= 2.5 x (b).
Without a GPU it runs a tiny model at sequence length 512 to show that it works; CPU ratios say nothing about
GPU speed. The last line prints the ratios.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

log = logging.getLogger('bench.attention')

# The paper's 1.6B model (DESIGN.md) and a CPU-sized stand-in.
PRESETS: dict[str, dict[str, int]] = {
    '1.6b': {
        'd_model': 2048,
        'n_layers': 24,
        'n_heads': 16,
        'kv_n_heads': 8,
        'ffn_hidden_size': 5504,
        'vocab_size': 128256,
        'seq_len': 8192,
        'batch_size': 1,
        'mean_doc_len': 1024,
        'steps': 10,
        'warmup': 3,
    },
    'tiny': {
        'd_model': 128,
        'n_layers': 2,
        'n_heads': 4,
        'kv_n_heads': 2,
        'ffn_hidden_size': 344,
        'vocab_size': 512,
        'seq_len': 512,
        'batch_size': 2,
        'mean_doc_len': 64,
        'steps': 5,
        'warmup': 1,
    },
}


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: which attention implementation, and whether documents are masked."""

    label: str
    attn_impl: str
    document_masking: bool


VARIANTS = (
    Variant('(a) flex, no sequence_id', 'flex', False),
    Variant('(b) torch, sequence_id', 'torch', True),
    Variant('(c) flex, sequence_id', 'flex', True),
)


def model_config(shape: dict[str, int], attn_impl: str, document_masking: bool, device: str) -> dict[str, Any]:
    """The recipe's Llama-shaped ``meco_mpt_causal_lm`` YAML for ``shape``."""
    return {
        'd_model': shape['d_model'],
        'n_heads': shape['n_heads'],
        'n_layers': shape['n_layers'],
        'max_seq_len': shape['seq_len'],
        'vocab_size': shape['vocab_size'],
        'no_bias': True,
        'norm_type': 'rmsnorm',
        'tie_word_embeddings': False,
        'ffn_config': {
            'ffn_type': 'mptglu',
            'ffn_act_fn': {'name': 'silu'},
            'ffn_hidden_size': shape['ffn_hidden_size'],
        },
        'attn_config': {
            'attn_impl': attn_impl,
            'attn_type': 'grouped_query_attention',
            'kv_n_heads': shape['kv_n_heads'],
            'rope': True,
            'rope_impl': 'hf',
            'rope_theta': 500000,
            'attn_uses_sequence_id': document_masking,
        },
        'loss_fn': 'torch_crossentropy',
        'init_device': device,
    }


def packed_batch(
    batch_size: int, seq_len: int, vocab_size: int, mean_doc_len: int, seed: int, device: str
) -> dict[str, torch.Tensor]:
    """Random tokens packed as the MeCo loader packs them: documents of exponentially distributed length per row."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    sequence_id = torch.empty(batch_size, seq_len, dtype=torch.long)
    position_ids = torch.empty(batch_size, seq_len, dtype=torch.long)
    for row in range(batch_size):
        start, doc = 0, 0
        while start < seq_len:
            length = max(1, math.ceil(-mean_doc_len * math.log(1.0 - torch.rand((), generator=gen).item())))
            end = min(seq_len, start + length)
            sequence_id[row, start:end] = doc
            position_ids[row, start:end] = torch.arange(end - start)
            start, doc = end, doc + 1
    batch = {
        'input_ids': input_ids,
        'labels': input_ids.clone(),
        'attention_mask': torch.ones_like(input_ids),
        'sequence_id': sequence_id,
        'position_ids': position_ids,
    }
    return {key: value.to(device) for key, value in batch.items()}


def training_tokens_per_second(
    variant: Variant, shape: dict[str, int], batch: dict[str, torch.Tensor], device: str, steps: int, warmup: int
) -> float | None:
    """Tokens/s of ``steps`` timed training steps after ``warmup`` (compilation included there); None on OOM."""
    from llmfoundry.utils.builders import build_composer_model

    if not variant.document_masking:
        batch = {key: value for key, value in batch.items() if key not in ('sequence_id', 'position_ids')}
    try:
        model = build_composer_model(
            name='meco_mpt_causal_lm',
            cfg=model_config(shape, variant.attn_impl, variant.document_masking, device),
            tokenizer=None,
        ).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.033)
        autocast = torch.autocast(device_type='cuda', dtype=torch.bfloat16, enabled=device == 'cuda')
        start = 0.0
        for step in tqdm(range(warmup + steps), desc=variant.label, unit='step'):
            if step == warmup:
                _synchronize(device)
                start = time.perf_counter()
            with autocast:
                loss = model.loss(model(batch), batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        return steps * batch['input_ids'].numel() / elapsed
    except torch.OutOfMemoryError as err:
        log.warning('%s ran out of memory: %s', variant.label, str(err).splitlines()[0])
        return None


def _release_memory(device: str) -> None:
    """Free the last run's model, optimizer state and activations before the next run is built."""
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


def _synchronize(device: str) -> None:
    """Wait for queued GPU work so wall-clock time covers it."""
    if device == 'cuda':
        torch.cuda.synchronize()


def ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``1.23x``; an out-of-memory side reads as such."""
    if numerator is None:
        return 'n/a (numerator ran out of memory)'
    if denominator is None:
        return 'inf (denominator ran out of memory)'
    return f'{numerator / denominator:.2f}x'


def parse_args() -> argparse.Namespace:
    """Command line: a preset (1.6b on a GPU, tiny on the CPU) with any of its numbers overridden."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--device', choices=['auto', 'cuda', 'cpu'], default='auto', help='cuda if available under auto (default)'
    )
    parser.add_argument(
        '--preset',
        choices=sorted(PRESETS),
        default=None,
        help='model shape and run length; default 1.6b on cuda, tiny on cpu',
    )
    for key in PRESETS['tiny']:
        parser.add_argument(f'--{key.replace("_", "-")}', type=int, default=None, help=f'override the preset {key}')
    parser.add_argument('--seed', type=int, default=0, help='seed of the packed batch and the weights')
    parser.add_argument(
        '--smoke', action='store_true', help='the tiniest run that exercises the code (tests): tiny preset on the CPU'
    )
    args = parser.parse_args()
    if args.smoke:
        args.device, args.preset = 'cpu', 'tiny'
        for key, value in {'seq_len': 128, 'steps': 2, 'warmup': 1}.items():
            setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    return args


def main() -> None:
    """Run (a), (b), (c) on one packed batch and print tokens/s, then the ratios on the last line."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args()
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    preset = args.preset or ('1.6b' if device == 'cuda' else 'tiny')
    shape = {key: value if getattr(args, key) is None else getattr(args, key) for key, value in PRESETS[preset].items()}
    where = torch.cuda.get_device_name() if device == 'cuda' else 'CPU'
    log.info('%s, torch %s, preset %s: %s', where, torch.__version__, preset, shape)
    if device == 'cpu':
        log.info('No GPU: a small CPU run that shows the benchmark works; its ratios say nothing about GPU speed.')

    torch.manual_seed(args.seed)
    batch = packed_batch(
        shape['batch_size'], shape['seq_len'], shape['vocab_size'], shape['mean_doc_len'], args.seed, device
    )
    docs = int(batch['sequence_id'].max(dim=1).values.sum().item()) + shape['batch_size']
    log.info('batch: %d x %d tokens, %d documents', shape['batch_size'], shape['seq_len'], docs)

    results: dict[str, float | None] = {}
    for variant in VARIANTS:
        results[variant.label] = training_tokens_per_second(
            variant, shape, batch, device, shape['steps'], shape['warmup']
        )
        _release_memory(device)
        speed = results[variant.label]
        log.info('%-28s %s', variant.label, 'out of memory' if speed is None else f'{speed:,.0f} tokens/s')
    a, b, c = (results[v.label] for v in VARIANTS)
    print(f'{where}: (c)/(a) = {ratio(c, a)} (goal >= 1.05), (c)/(b) = {ratio(c, b)} (goal >= 2.5)')


if __name__ == '__main__':
    main()
