"""`make demo`: MeCo end to end on real text from this machine, in about ten minutes on 2 CPU cores.

A thin command line over the library; run with ``--help`` for the steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / 'yamls' / 'tiny-cpu.yaml'
RUNS = ('meco', 'baseline')
META_TOKEN = '<|meta_0|>'  # the first reserved metadata token (meco-train-tokenizer --metadata-tokens)
DEMO_ENTRIES = {'corpus', 'tokenizer', 'data', 'runs', 'baseline.yaml', 'evaluation.json', 'report.md', 'loss.png'}

DESCRIPTION = """\
Show MeCo working end to end, offline and on the CPU:

  1. corpus     JSON Lines (text, url) built from this machine: the standard library's docstrings
                (docs.python.org/3/library/...), the language reference topics, and the installed packages'
                long descriptions at their own documentation/home pages; 1 in 10 documents held out
  2. tokenizer  a byte-level BPE trained on the training split, with reserved metadata tokens (--metadata-tokens)
  3. convert    convert_documents + pack_documents (what convert/documents.py and convert/pack.py run), packed
                for the tiny recipe's prefix: --reserve-prefix compact --template '{}'
  4. train      two runs of `composer recipes/train.py yamls/tiny-cpu.yaml` with the same budget:
                MeCo (one reserved token per site before each document, metadata kind compact; cooldown on plain
                documents for the last 10%) and the baseline (metadata kind none, no cooldown callback); each
                run's console log is kept
  5. evaluate   held-out loss of both models with the true URL, no URL and a wrong URL (each as its site's
                token), on the same tokens
  6. effect     what MeCo buys where metadata carries information: bench/effect.py (synthetic biographies on
                one useful site among junk sites, MeCo against its baseline, fact recall and loss per source),
                one seed (--effect smoke: a tiny check; off: skipped)
  7. report     report.md and loss.png, numbers read back from the runs' logs and the effect benchmark

Every step reuses what an earlier invocation finished (pass --fresh to start over), so an interrupted demo
continues where it stopped. Everything is written under --output.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: where to write, the corpus and model sizes, and the training budget."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output', default='demo-output', help='directory for everything (default demo-output)')
    parser.add_argument('--max-docs', type=int, default=None, help='cap on corpus documents (default: all, ~550)')
    parser.add_argument('--vocab-size', type=int, default=4096, help='BPE vocabulary size (default 4096)')
    parser.add_argument(
        '--metadata-tokens',
        type=int,
        default=256,
        help='reserved metadata tokens in the vocabulary, for the compact prefix (default 256, as the README)',
    )
    parser.add_argument('--seq-len', type=int, default=128, help='tokens per training row (default 128)')
    parser.add_argument('--batch-size', type=int, default=8, help='rows per batch (default 8)')
    parser.add_argument('--steps', type=int, default=300, help='batches per run (default 300)')
    parser.add_argument('--cooldown', type=float, default=0.1, help='MeCo cooldown fraction (default 0.1)')
    parser.add_argument(
        '--wrong-url',
        default='pypi.org',
        help='domain put before every held-out document for the wrong-URL evaluation (default pypi.org)',
    )
    parser.add_argument(
        '--eval-batches', type=int, default=16, help='held-out batches scored per model (default 16; 0 for all)'
    )
    parser.add_argument(
        '--override',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='extra llm-foundry override for both runs, e.g. model.n_layers=2 (repeatable)',
    )
    parser.add_argument(
        '--effect',
        choices=('full', 'smoke', 'off'),
        default='full',
        help='the effect benchmark in the report: one seed at its default size (about 8 minutes), smoke, or off',
    )
    parser.add_argument('--fresh', action='store_true', help='delete --output and build everything again')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the six steps, skipping those already done, and print where the report is."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    from demo.corpus import build_demo_corpus
    from demo.report import write_report
    from meco_callbacks.cli.plot import plot_runs
    from meco_callbacks.corpus.documents.conversion import convert_documents
    from meco_callbacks.corpus.packing.packing import pack_documents
    from meco_callbacks.formats import read_dataset_info
    from meco_callbacks.tokenizer.training import train_bpe_tokenizer
    from meco_callbacks.training.run_log import read_run_log

    out = Path(args.output).resolve()
    if args.fresh and out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES)
        if foreign:
            raise SystemExit(
                f'error: --fresh would delete {out}, which holds more than a demo ({", ".join(foreign)}); '
                'choose another --output or remove it yourself.'
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger('demo')

    step('1/7 corpus')
    corpus = out / 'corpus'
    if not (corpus / 'corpus.json').is_file():
        build_demo_corpus(corpus, args.max_docs)
    else:
        log.info('reusing the corpus in %s (--fresh rebuilds it, e.g. for another --max-docs)', corpus)
    corpus_stats = json.loads((corpus / 'corpus.json').read_text())
    log.info('corpus: %s', corpus_stats)

    step('2/7 tokenizer')
    tokenizer = out / 'tokenizer'
    if (tokenizer / 'tokenizer.json').is_file() and META_TOKEN not in (tokenizer / 'tokenizer.json').read_text():
        log.info('the tokenizer in %s has no reserved metadata tokens (a demo from before): rebuilding from it', out)
        for stale in ('tokenizer', 'data', 'runs'):
            shutil.rmtree(out / stale, ignore_errors=True)
        (out / 'evaluation.json').unlink(missing_ok=True)
    if not (tokenizer / 'tokenizer.json').is_file():
        with open(corpus / 'train.jsonl', encoding='utf-8') as lines:
            train_bpe_tokenizer(
                (json.loads(line)['text'] for line in lines),
                tokenizer,
                vocab_size=args.vocab_size,
                metadata_tokens=args.metadata_tokens,
            )
    else:
        log.info('reusing the tokenizer in %s (--fresh retrains it, e.g. for another --vocab-size)', tokenizer)
    log.info('tokenizer: %s', tokenizer)

    step('3/7 convert')
    data = out / 'data'
    for split in ('train', 'heldout'):
        convert_documents([str(corpus / f'{split}.jsonl')], data / f'{split}-documents', str(tokenizer))
        packed = data / f'{split}-packed-{args.seq_len}'
        info = read_dataset_info(packed)
        reserved = (info or {}).get('reserve_prefix') or {}
        # best-fit rows (docs/effect.md: stream cuts documents and costs MeCo more); a demo packed before the
        # compact prefix or with stream rows is repacked
        if reserved.get('kinds') != ['compact'] or (info or {}).get('strategy') != 'bfd':
            pack_documents(
                data / f'{split}-documents',
                packed,
                args.seq_len,
                reserve_prefix=['compact'],
                template='{}',
                strategy='bfd',
                overwrite=True,
            )

    step('4/7 train')
    overrides = [
        f'variables.data_local={data / f"train-packed-{args.seq_len}"}',
        f'variables.tokenizer={tokenizer}',
        f'variables.max_seq_len={args.seq_len}',
        f'variables.cooldown={args.cooldown}',
        f'max_duration={args.steps}ba',
        f'global_train_batch_size={args.batch_size}',
        f'device_train_microbatch_size={args.batch_size}',
        'console_log_interval=1ba',
        'save_overwrite=true',
        f'save_interval={args.steps}ba',
        *args.override,
    ]
    configs = {'meco': RECIPE, 'baseline': baseline_yaml(out / 'baseline.yaml')}
    for name in RUNS:
        run_dir = out / 'runs' / name
        run = read_run_log(run_dir / 'train.log', name) if (run_dir / 'train.log').is_file() else None
        if (
            run is None
            or not run.complete
            or run.max_batches != args.steps
            or not (run_dir / 'checkpoints' / 'latest-rank0.pt').exists()
        ):
            (out / 'evaluation.json').unlink(missing_ok=True)  # it belongs to the previous model
            train(
                name,
                configs[name],
                run_dir,
                overrides + [f'variables.run_name=demo-{name}', f'save_folder={run_dir / "checkpoints"}'],
                args.steps,
            )
        else:
            log.info('%s: already trained (%s)', name, run_dir)
    runs = [read_run_log(out / 'runs' / name / 'train.log', name) for name in RUNS]
    for run in runs:
        if not run.complete:
            raise SystemExit(f'error: the {run.name} run did not finish; see {out / "runs" / run.name / "train.log"}')

    step('5/7 evaluate')
    results_path = out / 'evaluation.json'
    if not results_path.is_file():
        results = evaluate(configs, out, overrides, data / f'heldout-packed-{args.seq_len}', args)
        results_path.write_text(json.dumps(results, indent=2) + '\n')
    evaluation = json.loads(results_path.read_text())

    step('6/7 effect')
    effect = effect_comparison(out / 'effect', args.effect)

    step('7/7 report')
    tokens_per_batch = args.batch_size * args.seq_len
    cooldown_batch = runs[0].cooldown_start_batch
    plot_runs(runs, out / 'loss.png', 'MeCo vs standard pre-training (tiny model, demo corpus)', tokens_per_batch)
    settings = {
        'model': f'yamls/tiny-cpu.yaml (vocabulary {args.vocab_size}) {" ".join(args.override)}'.strip(),
        'training': f'{args.steps} batches of {args.batch_size} x {args.seq_len} tokens per run',
        'MeCo prefix': 'one reserved token per site (metadata kind compact, template "{}"; docs/effect.md says why)',
        'wrong URL': args.wrong_url,
    }
    report = write_report(
        out / 'report.md',
        runs,
        tokens_per_batch,
        cooldown_batch,
        {name: {cond: r['loss'] for cond, r in res.items()} for name, res in evaluation.items()},
        corpus_stats,
        settings,
        effect=effect,
    )
    print(f'\nDemo done.\n  report: {report}\n  plot:   {out / "loss.png"}\n  runs:   {out / "runs"}', flush=True)
    return 0


def effect_comparison(work: Path, mode: str) -> list[str] | None:
    """bench/effect.py's table and ratio line (one seed), run once into ``work`` and kept; None when ``off``."""
    if mode == 'off':
        return None
    saved = work / f'effect-{mode}.md'
    if not saved.is_file():
        work.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(REPO_ROOT / 'bench' / 'effect.py'), '--seeds', '1', '--work', str(work)]
        done = subprocess.run(
            command + (['--smoke'] if mode == 'smoke' else []), cwd=REPO_ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f'error: the effect benchmark failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}')
        lines = done.stdout.strip().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith('MeCo against its baseline'))
        saved.write_text('\n'.join(lines[start:]) + '\n')
    return saved.read_text().splitlines()


def step(title: str) -> None:
    """Announce a step on the console."""
    print(f'\n==> {title}', flush=True)


def baseline_yaml(path: Path) -> Path:
    """The tiny recipe as a standard run: metadata kind ``none`` and no ``meco_cooldown`` callback.

    Derived from yamls/tiny-cpu.yaml each time so the two runs cannot drift apart (an override can set a
    key but not remove the callback).
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(RECIPE)
    del cfg.callbacks['meco_cooldown']
    cfg.train_loader.dataset.metadata.kind = 'none'
    cfg.variables.run_name = 'baseline-tiny-cpu'
    OmegaConf.save(cfg, path)
    return path


def train(name: str, config: Path, run_dir: Path, overrides: list[str], steps: int) -> None:
    """Run ``composer recipes/train.py`` in a subprocess, keeping its console log and showing a progress bar."""
    import re

    from tqdm import tqdm

    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run starts over; its log would mix two runs otherwise
    run_dir.mkdir(parents=True)
    command = [str(Path(sys.executable).parent / 'composer'), 'recipes/train.py', str(config), *overrides]
    (run_dir / 'command.txt').write_text(' '.join(command) + '\n')
    batch_header = re.compile(r'^\[(?:epoch=\d+\]\[)?batch=(\d+)/\d+\]')
    loss_line = re.compile(r'Train loss/train/total: (\S+)')
    with (
        open(run_dir / 'train.log', 'w', encoding='utf-8') as log_file,
        tqdm(total=steps, desc=f'train {name}', unit='ba') as bar,
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED='1'),
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            header = batch_header.match(line)
            if header:
                bar.update(int(header.group(1)) - bar.n)
            loss = loss_line.search(line)
            if loss:
                bar.set_postfix(loss=loss.group(1))
        returncode = process.wait()
    if returncode != 0:
        raise SystemExit(f'error: training {name} failed (exit {returncode}); see {run_dir / "train.log"}')


def evaluate(
    configs: dict[str, Path], out: Path, overrides: list[str], heldout: Path, args: argparse.Namespace
) -> dict[str, dict[str, dict]]:
    """Held-out loss of each run's final checkpoint with the true URL, no URL and a wrong URL, on one token set.

    A URL is put in as MeCo was trained: its site's reserved token from the vocabulary recorded with the training
    set (the held-out set is packed on its own, so its own record is not the one the model learned). The baseline
    is scored under the same conditions, over the same document tokens.
    """
    from dataclasses import replace

    from demo.report import wrong_url_condition
    from meco_callbacks.evaluation.conditional_loss import NO_URL, compact_conditions, compare_conditions
    from meco_callbacks.evaluation.trained_models import load_composer_checkpoint, training_metadata

    trained = replace(training_metadata(configs['meco'], overrides), enabled=True)
    compact = compact_conditions(trained, [args.wrong_url])
    conditions = {
        'no URL': NO_URL,
        'true URL': compact['true_url'],
        wrong_url_condition(args.wrong_url): compact[f'url={args.wrong_url}'],
    }
    results = {}
    for name in RUNS:
        model, tokenizer = load_composer_checkpoint(
            configs[name], out / 'runs' / name / 'checkpoints' / 'latest-rank0.pt', overrides
        )
        results[name] = compare_conditions(
            model,
            tokenizer,
            heldout,
            conditions,
            device_batch_size=args.batch_size,
            max_batches=args.eval_batches or None,
        )
    return results


if __name__ == '__main__':
    sys.exit(main())
