"""Does MeCo beat its baseline where metadata carries information? The project's own proof, on 2 CPU cores.

Builds a corpus after Physics of LMs 3.3 (``effect_corpus.py``): biographies of a fixed set of people on one
useful site, each seen many times, among a larger volume of same-style biographies from many junk sites, each
person seen once. Then, with the project's own commands: ``meco-train-tokenizer``, ``meco-convert``,
``meco-pack`` and ``composer train.py`` on ``yamls/tiny-cpu.yaml`` (MeCo with its cooldown) and
``yamls/baseline-tiny-cpu.yaml`` (the baseline), the same rows, seed and steps. Each trained model (its Llama
export) is scored on fact recall, the true value ranked among every candidate after a neutral prompt
("NAME was born in"), with no URL, the true URL and a wrong URL, and on the loss of training documents per
source under each condition.

Prefix forms (``--variant``, repeatable; the runs of all variants and seeds share two worker processes, and a
baseline is trained once for all variants that share its rows):
  compact      one reserved token per frequent site, the rest hashed into buckets (kind compact, template {})
  domain       the paper's form, "URL: <domain>\\n\\n" (kind domain)
  tag:K        an informative K-token tag per site (a carried column, template {}), K in 1 2 4 9 19
  const:K      the same K-token text before every document: the length without the information
Rows are packed once per template: the tag and const variants share one set that reserves room for every
length (the longest decides it), so their comparison changes the prefix alone and a new length reuses the rows.

With no arguments: the default variant, as many seeds as fit in --budget-minutes (30), and the table. The last
line is MeCo's no-URL fact recall over the baseline's (means over seeds). --results appends every run's
scores as JSON lines for bench/effect_report.py (the tables and plot of docs/effect.md).
  python bench/effect.py                       # the benchmark
  python bench/effect.py --seeds 3             # three seeds, the spread in the table
  python bench/effect.py --variant tag:1 --variant tag:19 --variant const:19 --seeds 3 --results r.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from effect_corpus import EffectCorpus, build_effect_corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_VARIANT = 'compact'
TAG_LENGTHS = (1, 2, 4, 9, 19)
BATCH = 8
METADATA_KEY = 'train_loader.dataset.metadata.'
SCORING = threading.Lock()
METADATA_TOKENS = 256  # reserved <|meta_K|> tokens for kind compact (a site each, 64 hash buckets)


@dataclass(frozen=True)
class Variant:
    """One prefix form: the metadata block MeCo trains with and the packing it needs."""

    name: str
    metadata: dict
    template: str  # the packing template
    reserve: tuple[str, ...]
    rows: str  # variants of one rows group share one packed set (and so one baseline)

    @property
    def kind(self) -> str:
        return self.metadata['kind']


def variant(
    name: str, tags: dict[int, dict[str, str]] | None = None, constants: dict[int, str] | None = None
) -> Variant:
    """The named prefix form (see the module docstring)."""
    # every tag and const variant shares one packed set that reserves for every length (the longest sets the room),
    # so adding a length to an experiment reuses its rows and baselines
    shared = tuple(f'column:tag{k}' for k in TAG_LENGTHS)
    shared += tuple(f'constant:{text}' for _, text in sorted((constants or {}).items()))
    if name == 'domain':
        return Variant(name, {'kind': 'domain', 'template': 'URL: {}\n\n'}, 'URL: {}\n\n', ('domain',), 'domain')
    if name == 'compact':
        return Variant(name, {'kind': 'compact', 'template': '{}'}, '{}', ('compact',), 'compact')
    kind, _, k = name.partition(':')
    if kind in ('tag', 'const') and k.isdigit() and int(k) in TAG_LENGTHS:
        if kind == 'tag':
            return Variant(name, {'kind': f'column:tag{k}', 'template': '{}'}, '{}', shared, 'tags')
        text = (constants or {}).get(int(k), 'pending')
        return Variant(name, {'kind': f'constant:{text}', 'template': '{}'}, '{}', shared, 'tags')
    raise SystemExit(
        f'error: unknown --variant {name!r}; use compact, domain, tag:K or const:K with K in {TAG_LENGTHS}.'
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variant', action='append', default=None, help=f'prefix form (default {DEFAULT_VARIANT})')
    parser.add_argument('--seeds', type=int, default=None, help='seeds (default: as many as fit the budget, >= 1)')
    parser.add_argument('--first-seed', type=int, default=17, help='first training seed (default 17)')
    parser.add_argument('--budget-minutes', type=float, default=30.0, help='time for the no-argument run (default 30)')
    parser.add_argument('--people', type=int, default=EffectCorpus.people, help='useful-site people')
    parser.add_argument('--useful-docs', type=int, default=EffectCorpus.useful_docs, help='documents per person')
    parser.add_argument('--junk-fraction', type=float, default=EffectCorpus.junk_fraction, help='junk share of docs')
    parser.add_argument('--junk-sites', type=int, default=EffectCorpus.junk_sites, help='junk sites')
    parser.add_argument('--corpus-seed', type=int, default=0, help='seed of the corpus (default 0)')
    parser.add_argument('--vocab-size', type=int, default=2048, help='BPE vocabulary asked for (default 2048)')
    parser.add_argument('--plain-tokenizer', action='store_true', help='train the BPE without the prefixes')
    parser.add_argument('--max-seq-len', type=int, default=128, help='row length (default 128)')
    parser.add_argument('--strategy', choices=('stream', 'bfd'), default='bfd', help='packing (default bfd)')
    parser.add_argument('--passes', type=float, default=1.0, help='passes over the rows (default 1)')
    parser.add_argument('--cooldown', type=float, default=0.1, help="MeCo's cooldown fraction (default 0.1)")
    parser.add_argument('--override', action='append', default=[], help='KEY=VALUE for both runs (repeatable)')
    parser.add_argument('--meco-override', action='append', default=[], help='KEY=VALUE for MeCo runs only')
    parser.add_argument('--label', default='', help='names this experiment in --results (default: the variant)')
    parser.add_argument('--results', default=None, help="append each run's scores to this JSON Lines file")
    parser.add_argument('--jobs', type=int, default=2, help='training runs at once, one core each (default 2)')
    parser.add_argument('--work', default=None, help='work directory, reused between calls (default: temporary)')
    parser.add_argument('--smoke', action='store_true', help='a tiny corpus and 12 steps: checks that it runs')
    args = parser.parse_args(argv)
    if args.smoke:
        args.people, args.useful_docs, args.junk_sites, args.passes = 6, 6, 4, 2.0
        args.seeds, args.vocab_size = args.seeds or 1, 1024
    return args


# Streaming picks a free shared-memory prefix by probing, then creating, its name: two trainings that start at
# the same moment can both pick one name, and the second stops with this error before its first step.
SHM_RACE = re.compile(r"FileExistsError: .*File exists: '/\d+_locals'")


def run(cmd: list[str], log: Path) -> None:
    """Run one of the project's commands, its output kept in ``log``; a failure shows the log's end.

    A start lost to Streaming's shared-memory race (``SHM_RACE``) is retried, up to twice, after a pause.
    """
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'HF_HUB_OFFLINE': '1'}
    for attempt in range(3):
        with log.open('w') as out:
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if not code or not SHM_RACE.search(log.read_text(errors='replace')):
            break
        print(f'[effect] {log.parent.name}: lost a start to Streaming shared-memory naming; retrying', flush=True)
        time.sleep(5 + 10 * attempt)
    if code:
        tail = ''.join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f'error: {" ".join(map(str, cmd[:3]))} ... exited {code}; the end of {log}:\n{tail}')


def key_of(*parts: object) -> str:
    """A short stable name for a combination of settings (a cache key for data and runs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def tag_texts(tokenizer_dir: Path, sites: list[str], seed: int) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
    """Per K: a distinct text of exactly K tokens per site, and one K-token text shared by all (the constant)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = tokenizer.get_vocab()
    lower = 'abcdefghijklmnopqrstuvwxyz'
    heads = sorted(t for t in vocab if 2 <= len(t) <= 4 and all(c in lower for c in t))
    tails = sorted(t for t in vocab if t.startswith('Ġ') and 2 <= len(t) - 1 <= 4 and all(c in lower for c in t[1:]))
    rng = random.Random(seed)

    def text(k: int, taken: set[str]) -> str:
        for _ in range(10_000):
            words = [rng.choice(heads)] + [rng.choice(tails)[1:] for _ in range(k - 1)]
            candidate = ' '.join(words)
            if candidate not in taken and len(tokenizer(candidate, add_special_tokens=False)['input_ids']) == k:
                taken.add(candidate)
                return candidate
        raise SystemExit(f'error: found no {k}-token tag text with this tokenizer; use a larger --vocab-size.')

    tags, constants = {}, {}
    for k in TAG_LENGTHS:
        taken: set[str] = set()
        tags[k] = {site: text(k, taken) for site in sites}
        constants[k] = text(k, taken)
    return tags, constants


@dataclass
class Data:
    """The prepared inputs of one experiment: corpus, tokenizer and packed rows per template."""

    corpus: Path
    tokenizer: Path
    packed: dict[str, Path] = field(default_factory=dict)
    tags: dict[int, dict[str, str]] = field(default_factory=dict)
    constants: dict[int, str] = field(default_factory=dict)


def prepare(args: argparse.Namespace, work: Path, names: list[str]) -> tuple[Data, list[Variant]]:
    """Corpus, tokenizer, documents and packed rows, each reused when its settings are unchanged."""
    spec = EffectCorpus(args.people, args.useful_docs, args.junk_fraction, args.junk_sites, args.corpus_seed)
    corpus = work / f'corpus-{key_of(spec)}'
    if not (corpus / 'corpus.json').is_file():
        print(f'[effect] corpus: {spec}', flush=True)
        build_effect_corpus(corpus, spec)
    info = json.loads((corpus / 'corpus.json').read_text())
    sites = [info['useful_site'], *info['junk_domains']]
    variants = [variant(n) for n in names]
    learned = sorted({v.template for v in variants if v.kind == 'domain' and not args.plain_tokenizer})
    reserved = METADATA_TOKENS if any(v.kind == 'compact' for v in variants) else 0
    settings = (args.vocab_size, learned, reserved) if learned or reserved else (args.vocab_size, [])
    tokenizer = corpus / f'tokenizer-{key_of(*settings)}'
    if not (tokenizer / 'tokenizer.json').is_file():
        cmd = [BIN / 'meco-train-tokenizer', corpus / 'corpus.jsonl', '--vocab-size', str(args.vocab_size)]
        cmd += ['--output', tokenizer, '--overwrite', '--metadata-tokens', str(reserved)]
        for template in learned:  # the paper's form: the BPE learns the prefixes it will be given
            cmd += ['--prefix-kind', 'domain', '--template', template]
        print(f'[effect] tokenizer: {tokenizer.name}', flush=True)
        run([str(c) for c in cmd], corpus / 'tokenizer.log')
    data = Data(corpus, tokenizer)
    data.tags, data.constants = tag_texts(tokenizer, sites, args.corpus_seed)
    variants = [variant(n, data.tags, data.constants) for n in names]
    tagged = tokenizer / 'corpus-tagged.jsonl'
    if not tagged.is_file():
        with (corpus / 'corpus.jsonl').open() as src, tagged.open('w') as out:
            for line in src:
                doc = json.loads(line)
                out.write(json.dumps({**doc, **{f'tag{k}': data.tags[k][doc['site']] for k in TAG_LENGTHS}}) + '\n')
    documents = tokenizer / 'documents'
    if not (documents / 'index.json').is_file():
        print('[effect] convert', flush=True)
        fields = ','.join(f'tag{k}' for k in TAG_LENGTHS)
        cmd = [BIN / 'meco-convert', tagged, '--output', documents, '--tokenizer', tokenizer]
        run(
            [str(c) for c in [*cmd, '--metadata-fields', fields, '--overwrite', '--no-progress']],
            corpus / 'convert.log',
        )
    for rows in sorted({v.rows for v in variants}):
        template = next(v.template for v in variants if v.rows == rows)
        kinds = sorted({kind for v in variants if v.rows == rows for kind in v.reserve})
        packed = tokenizer / f'packed-{key_of(template, kinds, args.strategy, args.max_seq_len)}'
        if not (packed / 'index.json').is_file():
            print(f'[effect] pack {args.strategy} for {kinds} ({template!r})', flush=True)
            cmd = [
                BIN / 'meco-pack',
                documents,
                packed,
                '--max-seq-len',
                str(args.max_seq_len),
                '--tokenizer',
                tokenizer,
            ]
            cmd += ['--strategy', args.strategy, '--template', template, '--overwrite', '--no-progress']
            run([str(c) for c in [*cmd, '--reserve-prefix', *kinds]], corpus / 'pack.log')
        data.packed[rows] = packed
    return data, variants


@dataclass(frozen=True)
class Run:
    """One training run: an arm (a variant's MeCo, or the baseline of a set of rows) at one seed."""

    arm: str  # a variant name, or 'baseline'
    seed: int
    packed: Path
    metadata: dict | None  # None: the baseline
    overrides: tuple[str, ...]
    schedule: tuple[tuple[str, float], ...] = ()  # passes and cooldown where they differ from the defaults

    @property
    def key(self) -> str:
        # the schedule joins the key only when set, so the runs cached at the default schedule keep their names
        extra = [self.schedule] if self.schedule else []
        return key_of(
            self.arm if self.metadata else 'baseline',
            self.seed,
            str(self.packed),
            self.metadata,
            self.overrides,
            *extra,
        )


def train_and_score(r: Run, data: Data, args: argparse.Namespace, work: Path) -> dict:
    """Train one run with ``composer train.py`` (unless its scores are already there) and score its export."""
    from effect_score import score_run
    from omegaconf import OmegaConf

    run_dir = work / 'runs' / f'{r.arm.replace(":", "")}-s{r.seed}-{r.key}'
    scores_file = run_dir / 'scores.json'
    if scores_file.is_file():
        return json.loads(scores_file.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    rows = json.loads((r.packed / 'meco_dataset.json').read_text())['stats']['rows']
    steps = max(1, int(rows * args.passes) // BATCH)
    recipe = 'tiny-cpu.yaml' if r.metadata else 'baseline-tiny-cpu.yaml'
    config = OmegaConf.load(REPO / 'yamls' / recipe)
    if r.metadata:
        config.train_loader.dataset.metadata = OmegaConf.create({**r.metadata, 'enabled': True})
        config.variables.cooldown = args.cooldown
        if args.cooldown == 0:  # no cooldown: conditioned to the end (the callback takes no zero)
            del config.callbacks['meco_cooldown']
    yaml = run_dir / 'run.yaml'
    OmegaConf.save(config, yaml)
    overrides = [
        f'variables.data_local={r.packed}',
        f'variables.tokenizer={data.tokenizer}',
        f'variables.save_folder={run_dir}',
        f'variables.max_seq_len={args.max_seq_len}',
        f'variables.run_name={run_dir.name}',
        f'seed={r.seed}',
        f'train_loader.dataset.shuffle_seed={r.seed}',
        f'max_duration={steps}ba',
        f'save_interval={steps}ba',
        f'callbacks.hf_llama_checkpointer.save_interval={steps}ba',
        'console_log_interval=50ba',
        'save_overwrite=true',
        *r.overrides,
    ]
    start = time.time()
    run([str(BIN / 'composer'), 'train.py', str(yaml), *overrides], run_dir / 'console.log')
    seconds = time.time() - start
    site = json.loads((data.corpus / 'corpus.json').read_text())['junk_domains'][0]
    scored_with = dict(r.metadata or {}) or None  # the metadata block as trained: the variant, then overrides
    for override in r.overrides:
        key, _, value = override.partition('=')
        if scored_with is not None and key.startswith(METADATA_KEY):
            scored_with[key[len(METADATA_KEY) :]] = OmegaConf.from_dotlist([f'v={value}']).v
    with SCORING:  # transformers' from_pretrained is not thread-safe (two loads at once can leave meta tensors)
        scores = score_run(run_dir, data.corpus, scored_with, site, data.tags, r.packed)
    scores.update({'steps': steps, 'train_seconds': round(seconds, 1)})
    scores_file.write_text(json.dumps(scores, indent=1) + '\n')
    return scores


def runs_for(variants: list[Variant], data: Data, seeds: list[int], args: argparse.Namespace) -> list[Run]:
    """MeCo per variant and seed, and one baseline per set of rows and seed (deduplicated)."""
    meco_overrides = (*args.override, *args.meco_override)
    passes = (('passes', args.passes),) if args.passes != 1.0 else ()
    cooldown = (('cooldown', args.cooldown),) if args.cooldown != 0.1 else ()
    runs: dict[str, Run] = {}
    for seed in seeds:
        for v in variants:
            packed = data.packed[v.rows]
            for r in (
                Run(v.name, seed, packed, v.metadata, tuple(meco_overrides), passes + cooldown),
                Run('baseline', seed, packed, None, tuple(args.override), passes),
            ):
                runs.setdefault(r.key, r)
    return list(runs.values())


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` over seeds (sd only with two or more)."""
    if len(values) < 2:
        return f'{values[0]:.3f}' if values else '-'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def table(variants: list[Variant], results: dict[tuple[str, int, str], dict], seeds: list[int]) -> list[str]:
    """The comparison as Markdown: per variant, MeCo against the baseline of its rows, mean ± sd over seeds."""
    columns = [
        ('recall, no URL', 'none/recall'),
        ('recall, true URL', 'true/recall'),
        ('recall, wrong URL', 'wrong/recall'),
        ('useful-site loss none/true/wrong', ('loss/useful/none', 'loss/useful/true', 'loss/useful/wrong')),
        ('junk loss none/true/wrong', ('loss/junk/none', 'loss/junk/true', 'loss/junk/wrong')),
    ]
    lines = ['| run | ' + ' | '.join(c for c, _ in columns) + ' |', '|---' * (len(columns) + 1) + '|']
    for v in variants:
        for arm in (v.name, 'baseline'):
            got = [results[(arm, s, v.rows)] for s in seeds if (arm, s, v.rows) in results]
            cells = []
            for _, key in columns:
                keys = key if isinstance(key, tuple) else (key,)
                parts = [mean_sd([g[k] for g in got]) if got and k in got[0] else '-' for k in keys]
                cells.append(' / '.join(parts))
            name = f'MeCo {v.name}' if arm != 'baseline' else f'baseline (rows of {v.name})'
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(__import__('tempfile').mkdtemp(prefix='meco-effect-'))
    work.mkdir(parents=True, exist_ok=True)
    names = args.variant or [DEFAULT_VARIANT]
    started = time.time()
    data, variants = prepare(args, work, names)
    budgeted = args.seeds is None
    seeds_left = list(range(args.first_seed, args.first_seed + (args.seeds or 1000)))
    done: list[int] = []
    results: dict[tuple[str, int, str], dict] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while seeds_left:
            if budgeted and done:
                per_seed = (time.time() - started) / len(done)
                if time.time() - started + per_seed > args.budget_minutes * 60:
                    break
            # with a budget, one seed at a time (the clock decides whether another fits); with --seeds, every
            # run at once, so that a cached baseline does not leave a worker idle
            batch = [seeds_left.pop(0)] if budgeted else [seeds_left.pop(0) for _ in range(len(seeds_left))]
            todo = runs_for(variants, data, batch, args)
            print(f'[effect] seeds {batch}: {len(todo)} runs', flush=True)
            for r, scores in zip(todo, pool.map(lambda r: train_and_score(r, data, args, work), todo)):
                rows = next(v.rows for v in variants if data.packed[v.rows] == r.packed)
                results[(r.arm, r.seed, rows)] = scores
                if args.results:
                    record = {'experiment': args.label or 'main', 'arm': r.arm, 'seed': r.seed, 'rows': r.packed.name}
                    record['strategy'] = args.strategy
                    record.update(overrides=list(r.overrides), passes=args.passes, cooldown=args.cooldown, **scores)
                    with open(args.results, 'a') as f:
                        f.write(json.dumps(record) + '\n')
            done.extend(batch)
    info = json.loads((data.corpus / 'corpus.json').read_text())
    print(
        f'\nMeCo against its baseline: {info["people"]} useful people x {info["useful_docs"]} documents, '
        f'{info["junk_documents"]} junk documents from {info["junk_sites"]} sites ({args.junk_fraction:.0%}), '
        f'{args.strategy} rows of {args.max_seq_len}, {args.passes} pass(es), seeds {done}; recall is top-1 among '
        'all candidates (chance about 0.05); loss in nats per document token.'
    )
    print('\n'.join(table(variants, results, done)))
    main_variant = variants[0]
    meco = [results[(main_variant.name, s, main_variant.rows)]['none/recall'] for s in done]
    base = [results[('baseline', s, main_variant.rows)]['none/recall'] for s in done]
    print(
        f'{main_variant.name} MeCo/baseline fact recall without URL: {statistics.mean(meco) / max(statistics.mean(base), 1e-9):.3f}'
    )


if __name__ == '__main__':
    main()
