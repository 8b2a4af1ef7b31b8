"""lm-evaluation-harness evaluation with and without a URL: what the model receives, the table, the command line.

The harness runs for real and offline on task YAMLs and JSON Lines written here, over a tiny random
``LlamaForCausalLM`` saved as an export is (``save_pretrained`` with its tokenizer).
"""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
from conftest import BOS_ID, NEWLINES_ID, REPO_ROOT, byte_ids, tiny_llama

from meco_callbacks.evaluation.harness import (
    NO_URL,
    URL,
    MeCoHFLM,
    check_task_names,
    harness_table,
    load_task_urls,
    run_conditions,
)

DOMAIN = 'quiz.example'
PREFIX = 'URL: quiz.example\n\n'
QUESTIONS = [
    ('the river is', ['red', 'blue', 'green'], 0),
    ('the city is', ['red', 'blue', 'green'], 1),
    ('the garden is', ['red', 'blue', 'green'], 2),
    ('the window is', ['red', 'blue', 'green'], 0),
    ('the music is', ['red', 'blue', 'green'], 1),
]
# The first test question behind the two training examples (sampler first_n): the harness's own prompt.
CONTEXT = 'Q: the river is\nA: red\n\nQ: the city is\nA: blue\n\nQ: the garden is\nA:'
OLMES_TASKS = [
    'mmlu',
    'arc_easy',
    'arc_challenge',
    'commonsense_qa',
    'hellaswag',
    'openbookqa',
    'piqa',
    'social_iqa',
    'winogrande',
    'truthfulqa_mc2',
]

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {data}/train.jsonl
    test: {data}/test.jsonl
training_split: train
test_split: test
fewshot_config:
  sampler: first_n
doc_to_text: "Q: {{{{question}}}}\\nA:"
"""
MC_YAML = """\
output_type: multiple_choice
doc_to_target: label
doc_to_choice: "{{choices}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""
GEN_YAML = """\
output_type: generate_until
doc_to_target: "{{choices[label]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 2
  do_sample: false
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
"""
ROLLING_YAML = """\
output_type: loglikelihood_rolling
doc_to_target: "{{question}}"
metric_list:
  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
"""


def write_tasks(directory: Path) -> Path:
    """Three local tasks over one JSON Lines set (two training examples, three test questions)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{'question': q, 'choices': c, 'label': label} for q, c, label in QUESTIONS]
    (directory / 'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows[:2]))
    (directory / 'test.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows[2:]))
    for name, body in (('toy_mc', MC_YAML), ('toy_gen', GEN_YAML), ('toy_rolling', ROLLING_YAML)):
        (directory / f'{name}.yaml').write_text(TASK_YAML.format(name=name, data=directory) + body)
    return directory


def save_tiny_llama(out: Path, tokenizer_dir: Path) -> Path:
    """A random two-layer ``LlamaForCausalLM`` with the given tokenizer, saved as an export directory."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tiny_llama(tokenizer, max_positions=256, heads=2, kv_heads=1).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class RecordingLM(MeCoHFLM):
    """``MeCoHFLM`` that keeps what reaches the model: each request's arguments and each forward's token ids."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[str, str, str, tuple]] = []  # (prefix, request type, task, arguments)
        self.inputs: list[tuple[str, list[int]]] = []  # (prefix, token ids of one forward or generation context)

    def loglikelihood(self, requests, disable_tqdm=False):
        self.requests += [(self.prefix, r.request_type, r.task_name, r.args) for r in requests]
        return super().loglikelihood(requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm=False):
        self.requests += [(self.prefix, r.request_type, r.task_name, r.args) for r in requests]
        return super().generate_until(requests, disable_tqdm)

    def _model_call(self, inps, attn_mask=None, labels=None):
        self.inputs += [(self.prefix, row) for row in inps.tolist()]
        return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        self.inputs += [(self.prefix, row) for row in context.tolist()]
        return super()._model_generate(context, max_length, stop, **generation_kwargs)


def refuse_network(*args) -> None:
    """Stands in for ``socket.connect``: any attempt to reach the network fails the test."""
    raise AssertionError(f'the harness tried to open a network connection: {args}')


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub and datasets offline, and no socket may connect."""
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(socket.socket, 'connect', refuse_network)


@pytest.fixture(scope='module')
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp('harness_tasks'))


@pytest.fixture(scope='module')
def bos_llama(tmp_path_factory: pytest.TempPathFactory, bos_tokenizer_dir: Path) -> Path:
    """A tiny Llama whose tokenizer puts BOS first and merges a lone "\\n\\n" (as Llama-3 does)."""
    return save_tiny_llama(tmp_path_factory.mktemp('bos_llama'), bos_tokenizer_dir)


@pytest.fixture(scope='module')
def harness_run(task_dir: Path, bos_llama: Path):
    """(recording model, results): the multiple-choice and generation tasks, 2-shot, in both conditions."""
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as monkeypatch:
        offline(monkeypatch)
        lm = RecordingLM(pretrained=str(bos_llama), device='cpu', batch_size=1)
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        tasks = ['toy_mc', 'toy_gen']
        runs = run_conditions(lm, tasks, dict.fromkeys(tasks, DOMAIN), manager, num_fewshot=2)
    return lm, runs


def contexts(lm: RecordingLM, prefix: str, task: str) -> list[str]:
    """The context of every request of ``task`` in the condition of ``prefix``, in the harness's order."""
    return [args[0] for p, _, name, args in lm.requests if p == prefix and name == task]


def test_no_url_condition_sends_the_harness_prompt_unchanged(harness_run):
    lm, _ = harness_run
    assert contexts(lm, '', 'toy_mc')[:3] == [CONTEXT] * 3  # one loglikelihood request per choice
    assert contexts(lm, '', 'toy_gen')[0] == CONTEXT


def test_url_prefix_comes_once_before_the_first_example_of_every_multiple_choice_request(harness_run):
    lm, _ = harness_run
    plain, conditioned = contexts(lm, '', 'toy_mc'), contexts(lm, PREFIX, 'toy_mc')
    assert len(conditioned) == len(plain) == 9  # 3 questions x 3 choices
    assert conditioned == [PREFIX + context for context in plain]
    assert conditioned[0] == PREFIX + CONTEXT
    assert all(context.count('URL:') == 1 for context in conditioned)


def test_url_prefix_reaches_generate_until_requests(harness_run):
    lm, _ = harness_run
    kinds = {kind for p, kind, name, _ in lm.requests if name == 'toy_gen'}
    assert kinds == {'generate_until'}
    assert contexts(lm, PREFIX, 'toy_gen') == [PREFIX + context for context in contexts(lm, '', 'toy_gen')]
    assert contexts(lm, PREFIX, 'toy_gen')[0] == PREFIX + CONTEXT


def test_model_receives_bos_then_the_prefix_tokenized_as_in_training(harness_run, bos_tokenizer):
    from meco_callbacks.evaluation.prompts import prompt_ids

    lm, _ = harness_run
    inputs = {prefix: [ids for p, ids in lm.inputs if p == prefix] for prefix in ('', PREFIX)}
    scored = CONTEXT + ' red'  # the first question's first choice; the model is fed all but its last token
    assert [BOS_ID, *byte_ids(scored)][:-1] in inputs['']
    # BOS, then "URL: quiz.example" and its "\n\n" as one token (NEWLINES_ID), as the loader injects it in training;
    # the joined text would have split the two newlines before "Q".
    expected = [BOS_ID, *byte_ids('URL: quiz.example'), NEWLINES_ID, *byte_ids(scored)]
    assert expected == prompt_ids(bos_tokenizer, scored, DOMAIN)
    assert expected[:-1] in inputs[PREFIX]
    assert [BOS_ID, *byte_ids(PREFIX + scored)][:-1] not in inputs[PREFIX]
    head = [BOS_ID, *byte_ids('URL: quiz.example'), NEWLINES_ID]
    assert [*head, *byte_ids(CONTEXT)] in inputs[PREFIX]  # the generation task's first context
    assert len(inputs[PREFIX]) == len(inputs['']) == 9 + 3
    assert all(ids[: len(head)] == head for ids in inputs[PREFIX])


def test_table_has_one_row_per_task_with_the_difference_url_minus_no_url(harness_run):
    _, runs = harness_run
    assert [(run['condition'], run['system_instruction'], run['tasks']) for run in runs] == [
        (NO_URL, None, ['toy_mc', 'toy_gen']),
        (URL, PREFIX, ['toy_mc', 'toy_gen']),
    ]
    rows = harness_table(runs, ['toy_mc', 'toy_gen'], dict.fromkeys(['toy_mc', 'toy_gen'], DOMAIN))
    assert [(r['task'], r['metric'], r['shots'], r['n'], r['url']) for r in rows] == [
        ('toy_mc', 'acc_norm', 2, 3, DOMAIN),
        ('toy_gen', 'exact_match', 2, 3, DOMAIN),
    ]
    mc = rows[0]
    assert mc['no_url'] == runs[0]['results']['results']['toy_mc']['acc_norm,none']
    assert mc['with_url'] == runs[1]['results']['results']['toy_mc']['acc_norm,none']
    assert all(r['delta'] == r['with_url'] - r['no_url'] for r in rows)


def test_url_condition_refuses_tasks_the_prefix_cannot_reach(harness_run, task_dir):
    from lm_eval.tasks import TaskManager

    lm, _ = harness_run
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    with pytest.raises(ValueError, match=r"\['toy_rolling'\] score whole documents"):
        run_conditions(lm, ['toy_rolling'], {'toy_rolling': DOMAIN}, manager, conditions=[URL], num_fewshot=0)


def test_unknown_task_is_named_before_the_model_loads(task_dir):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    with pytest.raises(ValueError, match=r"unknown harness task\(s\) \['siqa'\]"):
        check_task_names(manager, ['toy_mc', 'siqa'])


def test_empty_url_stops_the_url_condition_naming_the_task(tmp_path, bos_llama, monkeypatch):
    from meco_callbacks.cli.evaluate import main

    offline(monkeypatch)
    urls = tmp_path / 'urls.yaml'
    urls.write_text('tasks:\n  toy_mc:\n    url: quiz.example\n  arc_easy:\n    url:\n')
    assert load_task_urls(urls) == {'toy_mc': 'quiz.example', 'arc_easy': ''}
    with pytest.raises(ValueError, match=r"has an empty url for \['arc_easy'\]"):
        main(['harness', '--model', str(bos_llama), '--urls', str(urls), '--output', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_url_condition_refuses_a_model_trained_with_metadata_after_the_document(tmp_path, bos_llama):
    from meco_callbacks.data.metadata import MetadataConfig
    from meco_callbacks.evaluation.harness import evaluate_harness_with_urls

    suffix = MetadataConfig(position='suffix')
    with pytest.raises(ValueError, match=r"metadata.position 'suffix'"):
        evaluate_harness_with_urls(bos_llama, ['toy_mc'], {'toy_mc': DOMAIN}, tmp_path / 'out', metadata=suffix)


@pytest.mark.slow
def test_olmes_yaml_names_the_papers_ten_tasks_as_the_installed_harness_knows_them(monkeypatch):
    from lm_eval.tasks import TaskManager

    offline(monkeypatch)
    urls = load_task_urls(REPO_ROOT / 'yamls' / 'eval' / 'olmes-tasks.yaml')
    assert list(urls) == OLMES_TASKS
    assert all(urls.values())
    check_task_names(TaskManager(), list(urls))  # indexes lm_eval's task YAMLs locally; raises on any unknown name


@pytest.mark.slow
def test_command_writes_markdown_csv_and_raw_json(tmp_path, task_dir, tokenizer_dir, monkeypatch, capsys):
    from meco_callbacks.cli.evaluate import main

    offline(monkeypatch)
    model = save_tiny_llama(tmp_path / 'model', tokenizer_dir)
    urls = tmp_path / 'urls.yaml'
    urls.write_text('tasks:\n  toy_mc:\n    url: https://quiz.example/questions\n')
    out = tmp_path / 'out'
    argv = ['harness', '--model', str(model), '--urls', str(urls), '--include-path', str(task_dir)]
    main([*argv, '--num-fewshot', '2', '--limit', '2', '--output', str(out)])
    with (out / 'harness_urls.csv').open() as f:
        rows = list(csv.DictReader(f))
    assert [(r['task'], r['metric'], r['shots'], r['n'], r['url']) for r in rows] == [
        ('toy_mc', 'acc_norm', '2', '2', 'https://quiz.example/questions')
    ]
    row = rows[0]
    assert float(row['delta']) == pytest.approx(float(row['with_url']) - float(row['no_url']))
    raw = json.loads((out / 'harness_results.json').read_text())
    assert [(run['condition'], run['system_instruction']) for run in raw] == [(NO_URL, None), (URL, PREFIX)]
    assert raw[1]['results']['results']['toy_mc']['acc_norm,none'] == float(row['with_url'])
    markdown = (out / 'harness_urls.md').read_text().splitlines()
    assert markdown[0] == '| task | metric | shots | n | URL | no URL | with URL | difference (URL − no URL) |'
    assert markdown[2].startswith('| toy_mc | acc_norm | 2 | 2 | https://quiz.example/questions | ')
    assert '\n'.join(markdown) in capsys.readouterr().out
