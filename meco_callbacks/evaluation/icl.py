"""In-context evaluation with and without a URL prefix, through llm-foundry's ICL evaluators.

Each task runs twice: as configured (no URL) and with its URL's prefix put once in front of the whole prompt,
through the task's ``prompt_string`` (llm-foundry places it before the few-shot examples and the question), which
is where MeCo's conditional inference puts it. The prefix is built as training builds it, through
``MetadataConfig``: a full URL becomes the training-time metadata (its domain, for kind ``domain``), normalised so
it can never add a line to the prompt. llm-foundry tokenizes ``prompt_string`` on its own with the tokenizer's BOS
first, so at 0 shots the prompt's tokens are exactly a training document's ``[BOS] prefix text`` (see
``conditioned_icl_tasks`` for the example delimiter); with shots it tokenizes the prefix together with the examples.
"""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.prompts import DEFAULT_METADATA, refuse_summary_attention

log = logging.getLogger(__name__)

NO_URL_SUFFIX = '_no_url'
URL_SUFFIX = '_url'


def conditioned_icl_tasks(
    icl_tasks: Sequence[Mapping[str, Any]], urls: Mapping[str, str], metadata: MetadataConfig = DEFAULT_METADATA
) -> list[dict[str, Any]]:
    """Each task as given (``<label>_no_url``) and, one task per shot count, behind its URL's prefix (``<label>_url``).

    llm-foundry puts ``example_delimiter`` after a non-empty ``prompt_string``. At 0 shots, for a task without a
    ``prompt_string`` of its own, the URL task's delimiter is '' so the question follows the prefix directly, as a
    document follows it in training; with shots the delimiter separates the examples and follows the prefix too.
    """
    labels = [str(t.get('label')) for t in icl_tasks]
    missing = sorted(set(labels) - set(urls))
    unknown = sorted(set(urls) - set(labels))
    if missing or unknown:
        raise ValueError(
            f'the URL map must name every ICL task exactly: tasks without a URL {missing}, URLs for '
            f'unknown tasks {unknown}. Add `urls: {{<task label>: <domain>}}` entries.'
        )
    refuse_summary_attention(metadata)
    out = []
    for task in icl_tasks:
        label = str(task['label'])
        out.append({**copy.deepcopy(dict(task)), 'label': label + NO_URL_SUFFIX})
        prefix = metadata.prefix_for(metadata.metadata_for_prompt(urls[label]))
        for shots in task['num_fewshot']:
            conditioned = copy.deepcopy(dict(task))
            conditioned.update(
                label=label + URL_SUFFIX, num_fewshot=[shots], prompt_string=prefix + str(task.get('prompt_string', ''))
            )
            if shots == 0 and not task.get('prompt_string'):
                conditioned['example_delimiter'] = ''
            out.append(conditioned)
    return out


def run_icl(
    model: Any,
    tokenizer: Any,
    icl_tasks: Sequence[Mapping[str, Any]],
    icl_seq_len: int,
    device_eval_batch_size: int,
    work_dir: str | Path,
) -> dict[str, float]:
    """Run llm-foundry ICL tasks on a Composer model; returns ``{'<label>/<n>-shot': accuracy}``."""
    from composer import Trainer
    from llmfoundry.utils.builders import build_icl_evaluators

    evaluators, _ = build_icl_evaluators(
        [copy.deepcopy(dict(t)) for t in icl_tasks],
        tokenizer,
        icl_seq_len,
        device_eval_batch_size,
        destination_dir=str(work_dir),
    )
    trainer = Trainer(model=model, eval_dataloader=evaluators, progress_bar=False, log_to_console=False, loggers=[])
    trainer.eval()
    scores = {}
    for label, metrics in trainer.state.eval_metrics.items():
        for name, metric in metrics.items():
            if 'Accuracy' in name:
                scores[label] = float(metric.compute())
    trainer.close()
    return scores


def icl_table(
    icl_tasks: Sequence[Mapping[str, Any]], urls: Mapping[str, str], scores: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Rows ``{task, shots, url, no_url, with_url, delta}`` from the scores of ``conditioned_icl_tasks``."""
    rows = []
    for task in icl_tasks:
        label = str(task['label'])
        for shots in task['num_fewshot']:
            plain = scores[f'{label}{NO_URL_SUFFIX}/{shots}-shot']
            with_url = scores[f'{label}{URL_SUFFIX}/{shots}-shot']
            rows.append(
                {
                    'task': label,
                    'shots': int(shots),
                    'url': urls[label],
                    'no_url': plain,
                    'with_url': with_url,
                    'delta': with_url - plain,
                }
            )
    return rows


def write_icl_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write the task x {no URL, URL} table as ``icl_urls.md`` and ``icl_urls.csv``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = ['task', 'shots', 'url', 'no_url', 'with_url', 'delta']
    csv_path = out / 'icl_urls.csv'
    with csv_path.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ['| task | shots | URL | no URL | with URL | delta |', '|---|---:|---|---:|---:|---:|']
    lines += [
        f'| {r["task"]} | {r["shots"]} | {r["url"]} | {r["no_url"]:.4f} | {r["with_url"]:.4f} | {r["delta"]:+.4f} |'
        for r in rows
    ]
    md_path = out / 'icl_urls.md'
    md_path.write_text('\n'.join(lines) + '\n')
    log.info('wrote %s and %s', md_path, csv_path)
    return md_path, csv_path


def evaluate_icl_with_urls(
    model: Any,
    tokenizer: Any,
    icl_tasks: Sequence[Mapping[str, Any]],
    urls: Mapping[str, str],
    out_dir: str | Path,
    icl_seq_len: int,
    device_eval_batch_size: int = 4,
    metadata: MetadataConfig = DEFAULT_METADATA,
) -> list[dict[str, Any]]:
    """Run every task with and without its URL and write the Markdown and CSV table; returns its rows."""
    tasks = conditioned_icl_tasks(icl_tasks, urls, metadata)
    work = Path(out_dir) / 'icl_data'
    work.mkdir(parents=True, exist_ok=True)
    scores = run_icl(model, tokenizer, tasks, icl_seq_len, device_eval_batch_size, work)
    rows = icl_table(icl_tasks, urls, scores)
    write_icl_table(rows, out_dir)
    return rows
