"""lm-evaluation-harness tasks with and without a URL in front of the whole few-shot prompt (the paper's OLMES setup).

Each task runs in two conditions through the harness's own Python API (one run without a URL, one per distinct URL): as
written, and with its URL's prefix (``URL: <domain>\\n\\n`` from ``MetadataConfig``, the run's template and kind) before
everything else in the prompt, where the MeCo authors' evaluation puts it. The harness places the text: its
``system_instruction`` (no chat template) becomes the first piece of every context, before the task's description and
the first few-shot example, for loglikelihood (multiple choice) and generate_until requests alike (a template that does
not end in whitespace gets the task's few-shot delimiter between it and a description). ``MeCoHFLM`` tokenizes that
leading prefix as training does, on its own after BOS (``prompts.prompt_ids``), so a tokenizer whose "\\n\\n" would merge
differently with the first example's word (GPT-2-style byte-level BPEs; Llama-3 keeps it apart either way) still gives
the model the prefix tokens it was conditioned on.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lm_eval.models.huggingface import HFLM

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.prompts import DEFAULT_METADATA, prompt_head, refuse_summary_attention

log = logging.getLogger(__name__)

NO_URL, URL = 'no_url', 'url'
CONDITIONS = (NO_URL, URL)
PREFERRED_METRICS = ('acc_norm', 'acc')  # the main metric: acc_norm where the harness reports it, else acc


class MeCoHFLM(HFLM):
    """The harness's Hugging Face model, with the URL condition's prefix tokenized as a training document's prefix.

    ``use_url`` sets the condition; ``system_instruction`` is the text to hand the harness for it. While a URL is set,
    every context that starts with its prefix is encoded as ``[BOS] prefix-tokens text-tokens`` and a request whose
    context lacks the prefix stops the run (the harness adds no system instruction to loglikelihood_rolling requests).
    """

    def __init__(self, *args: Any, metadata: MetadataConfig = DEFAULT_METADATA, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metadata = metadata
        self.prefix = ''
        self.head: list[int] = []

    def use_url(self, url: str | None) -> str | None:
        """Condition the next requests on ``url`` (None: no URL); returns the ``system_instruction`` that places it."""
        self.prefix = '' if url is None else self.metadata.prefix_for(self.metadata.metadata_for_prompt(url))
        self.head = prompt_head(self.tokenizer, url, self.metadata) if url is not None else []
        return self.prefix or None

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any
    ) -> list[int]:
        """The harness's encoding, except that a leading URL prefix is tokenized on its own after BOS (``prompt_ids``)."""
        if not (self.prefix and string.startswith(self.prefix)):
            return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
        text = self.tokenizer(string[len(self.prefix) :], add_special_tokens=False)['input_ids']
        ids = self.head + text
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_batch_encode(
        self,
        strings: list[str],
        padding_side: str = 'left',
        left_truncate_len: int | None = None,
        truncation: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids and attention mask of generation contexts, each encoded by ``tok_encode``."""
        if not self.prefix:
            return super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
        rows = [self.tok_encode(s, left_truncate_len=left_truncate_len) for s in strings]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == 'left' else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Score (context, continuation) pairs; with a URL, every non-empty context must start with its prefix."""
        self._check_prefixed(requests, allow_empty=True)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate from contexts; with a URL, every context must start with its prefix."""
        self._check_prefixed(requests, allow_empty=False)
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Perplexity requests carry no system instruction, so they have no URL condition."""
        if self.prefix:
            names = sorted({str(r.task_name) for r in requests})
            raise ValueError(
                f'task(s) {names} score whole documents (loglikelihood_rolling), where the harness puts no system '
                'instruction: there is no URL condition to run; evaluate them with --conditions no_url.'
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _check_prefixed(self, requests: Sequence[Any], allow_empty: bool) -> None:
        """Stop when a request of the URL condition does not start with the prefix (the condition would be false)."""
        if not self.prefix:
            return
        for request in requests:
            context = request.args[0]
            if not context.startswith(self.prefix) and not (allow_empty and context == ''):
                raise ValueError(
                    f'a {request.request_type} request of task {request.task_name!r} does not start with the URL '
                    f'prefix {self.prefix!r}: {context[:80]!r}'
                )


def load_task_urls(path: str | Path) -> dict[str, str]:
    """``{task: url}`` from a URLs YAML (``tasks: {<harness task>: {url: <domain>}}``); an unfilled url is ''."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    tasks = spec.get('tasks') if isinstance(spec, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            f'{path} needs a `tasks:` mapping of harness task names to `{{url: <domain>}}`; '
            'see yamls/eval/olmes-tasks.yaml.'
        )
    urls = {}
    for name, entry in tasks.items():
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - {'url'}:
            raise ValueError(f'{path}: task {name!r} takes one key, `url:` (a domain or URL); got {entry!r}.')
        urls[str(name)] = str(entry.get('url') or '').strip()
    return urls


def condition_urls(
    tasks: Sequence[str], urls: Mapping[str, str], conditions: Sequence[str], source: str = 'the URLs file'
) -> dict[str, str]:
    """The URL of each task for the URL condition ({} without it); names each task whose URL is missing or empty."""
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        raise ValueError(f'conditions must be among {list(CONDITIONS)}; got {list(conditions)}.')
    if URL not in conditions:
        return {}
    missing = [t for t in tasks if t not in urls]
    empty = [t for t in tasks if t in urls and not urls[t]]
    if missing or empty:
        problems = ([f'no entry for {missing}'] if missing else []) + ([f'an empty url for {empty}'] if empty else [])
        raise ValueError(
            f'the URL condition needs a url for every task: {source} has {" and ".join(problems)}. Fill in '
            '`url:` (e.g. factquizmaster.com) or run only --conditions no_url.'
        )
    return {t: urls[t] for t in tasks}


def check_task_names(task_manager: Any, tasks: Sequence[str]) -> None:
    """Stop before loading the model when the harness knows no task (or group) of that name."""
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        where = f' or in {task_manager.include_path}' if task_manager.include_path else ''
        raise ValueError(
            f'unknown harness task(s) {unknown}: not among the {len(known)} tasks and groups of lm_eval{where}; '
            '`lm_eval ls tasks` lists them (0.4.13 names, e.g. social_iqa, truthfulqa_mc2).'
        )


def run_conditions(
    lm: MeCoHFLM,
    tasks: Sequence[str],
    urls: Mapping[str, str],
    task_manager: Any,
    conditions: Sequence[str] = CONDITIONS,
    num_fewshot: int | None = 5,
    limit: int | float | None = None,
    bootstrap_iters: int = 100000,
) -> list[dict[str, Any]]:
    """Run the tasks without a URL, then once per distinct URL, through ``lm_eval.simple_evaluate``.

    Returns one record per harness run: ``{condition, url, system_instruction, tasks, results}``. Each task keeps its
    few-shot examples across conditions (the harness seeds each task's sampler alike), so the pairs differ only by
    the prefix.
    """
    import lm_eval

    plan: list[tuple[str, str | None, list[str]]] = [(NO_URL, None, list(tasks))] if NO_URL in conditions else []
    if URL in conditions:
        plan += [(URL, url, [t for t in tasks if urls[t] == url]) for url in dict.fromkeys(urls[t] for t in tasks)]
    runs = []
    for step, (condition, url, group) in enumerate(plan, 1):
        instruction = lm.use_url(url)
        shown = f' (prefix {instruction!r})' if instruction else ''
        log.info('[%d/%d] %s%s: %s', step, len(plan), condition, shown, ', '.join(group))
        try:
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=group,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=task_manager,
                system_instruction=instruction,
                apply_chat_template=False,
                fewshot_as_multiturn=False,
                log_samples=False,
                bootstrap_iters=bootstrap_iters,
            )
        finally:
            lm.use_url(None)
        for task in group:
            metric, value = main_metric(results, task)
            n, shots = results['results'][task].get('sample_len'), results['n-shot'].get(task)
            log.info(
                '[%d/%d] %s, %s: %s = %.4f over %s examples (%s-shot)',
                step,
                len(plan),
                task,
                condition,
                metric,
                value,
                n,
                shots,
            )
        runs.append(
            {'condition': condition, 'url': url, 'system_instruction': instruction, 'tasks': group, 'results': results}
        )
    return runs


def main_metric(results: Mapping[str, Any], task: str, metric: str | None = None) -> tuple[str, float]:
    """(metric key, value) of a task: ``metric`` if given, else acc_norm, else acc, else its first reported metric."""
    scores = {
        k: float(v)
        for k, v in results['results'][task].items()
        if ',' in k and '_stderr' not in k and isinstance(v, (int, float))
    }
    if metric is None:
        preferred = [k for name in PREFERRED_METRICS for k in scores if k.split(',')[0] == name]
        metric = (preferred or list(scores) or [None])[0]
    if metric not in scores:
        raise ValueError(f'task {task!r} reports no {metric or "metric"}; it reports {sorted(scores)}.')
    return metric, scores[metric]


def harness_table(
    runs: Sequence[Mapping[str, Any]], tasks: Sequence[str], urls: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Rows ``{task, metric, shots, n, url, no_url, with_url, delta}``; a condition not run leaves its cells None."""
    by_condition = {(run['condition'], task): run['results'] for run in runs for task in run['tasks']}
    rows = []
    for task in tasks:
        ran = {c: by_condition[c, task] for c in CONDITIONS if (c, task) in by_condition}
        first = next(iter(ran.values()))
        metric, _ = main_metric(first, task)
        scores = {c: main_metric(results, task, metric)[1] for c, results in ran.items()}
        plain, with_url = scores.get(NO_URL), scores.get(URL)
        rows.append(
            {
                'task': task,
                'metric': metric.removesuffix(',none'),
                'shots': first['n-shot'].get(task),
                'n': first['results'][task].get('sample_len'),
                'url': urls.get(task, ''),
                'no_url': plain,
                'with_url': with_url,
                'delta': None if plain is None or with_url is None else with_url - plain,
            }
        )
    return rows


def write_harness_outputs(
    rows: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], out_dir: str | Path
) -> tuple[Path, Path, Path]:
    """Write ``harness_urls.md``, ``harness_urls.csv`` and the raw ``harness_results.json`` (the runs' records)."""
    from lm_eval.utils import handle_non_serializable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = ['task', 'metric', 'shots', 'n', 'url', 'no_url', 'with_url', 'delta']
    csv_path = out / 'harness_urls.csv'
    with csv_path.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: float | None, sign: str = '') -> str:
        return '—' if value is None else f'{value:{sign}.4f}'

    lines = [
        '| task | metric | shots | n | URL | no URL | with URL | difference (URL − no URL) |',
        '|---|---|---:|---:|---|---:|---:|---:|',
    ]
    lines += [
        f'| {r["task"]} | {r["metric"]} | {r["shots"]} | {r["n"]} | {r["url"] or "—"} | {cell(r["no_url"])} '
        f'| {cell(r["with_url"])} | {cell(r["delta"], "+")} |'
        for r in rows
    ]
    md_path = out / 'harness_urls.md'
    md_path.write_text('\n'.join(lines) + '\n')
    json_path = out / 'harness_results.json'
    json_path.write_text(json.dumps(list(runs), indent=2, default=handle_non_serializable, ensure_ascii=False))
    log.info('wrote %s, %s and %s', md_path, csv_path, json_path)
    return md_path, csv_path, json_path


def evaluate_harness_with_urls(
    model_dir: str | Path,
    tasks: Sequence[str],
    urls: Mapping[str, str],
    out_dir: str | Path,
    conditions: Sequence[str] = CONDITIONS,
    num_fewshot: int | None = 5,
    limit: int | float | None = None,
    metadata: MetadataConfig = DEFAULT_METADATA,
    include_path: str | Path | None = None,
    device: str = 'cpu',
    batch_size: int | str = 1,
    dtype: str = 'auto',
    trust_remote_code: bool = False,
    source: str = 'the URLs file',
) -> list[dict[str, Any]]:
    """Check tasks and URLs, run every task in every condition on an HF model directory, write the tables."""
    from lm_eval.tasks import TaskManager

    if not (Path(model_dir) / 'config.json').is_file():
        raise FileNotFoundError(
            f'{model_dir} has no config.json: pass a Hugging Face model directory (recipes/export.py or save_pretrained).'
        )
    task_urls = condition_urls(tasks, urls, conditions, source)
    if task_urls and metadata.position != 'prefix':
        raise ValueError(
            f'the model was trained with its metadata after each document (metadata.position {metadata.position!r}); '
            'the URL condition puts it before the prompt, a layout it never saw. Run --conditions no_url.'
        )
    if task_urls:
        refuse_summary_attention(metadata)
    for url in task_urls.values():
        metadata.metadata_for_prompt(url)  # a URL that yields no metadata is refused before the model loads
    task_manager = TaskManager(include_path=str(include_path) if include_path else None)
    check_task_names(task_manager, tasks)
    lm = MeCoHFLM(
        pretrained=str(model_dir),
        device=device,
        batch_size=batch_size,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        metadata=metadata,
    )
    runs = run_conditions(lm, tasks, task_urls, task_manager, conditions, num_fewshot, limit)
    rows = harness_table(runs, tasks, task_urls or urls)
    write_harness_outputs(rows, runs, out_dir)
    return rows
