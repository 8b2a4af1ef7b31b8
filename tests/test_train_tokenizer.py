"""Training a tokenizer on your own corpus: the inputs conversion reads, a bounded sample, an honest vocabulary size.

Issue 20 item 1 (a command for a user without the hub) and issue 15 item 14 (say when the corpus cannot fill
the vocabulary asked for).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from conftest import synthetic_documents

from meco_callbacks.cli.train_tokenizer import main
from meco_callbacks.corpus.documents.sources import FieldMapping, find_sources, plan_units
from meco_callbacks.corpus.documents.text_sample import sample_texts
from meco_callbacks.tokenizer.loading import load_tokenizer

DOCS = synthetic_documents(300, seed=5)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text(''.join(json.dumps(record) + '\n' for record in records))
    return path


def run(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    """Run the command in this process: exit code, the JSON summary it printed (if any), and its stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_the_sample_takes_an_even_share_of_every_unit_and_passes_on_what_a_short_one_leaves(tmp_path):
    fields = FieldMapping()
    write_jsonl(tmp_path / 'a.jsonl', [{'text': 'a' * 100}])  # less than its share of the budget
    write_jsonl(tmp_path / 'b.jsonl', [{'text': f'{i}' + 'b' * 99} for i in range(10)])
    write_jsonl(tmp_path / 'c.jsonl', [{'text': f'{i}' + 'c' * 99} for i in range(10)])
    units = plan_units(find_sources([str(tmp_path / '*.jsonl')], fields, require_url=False).sources, 1 << 20)
    texts = sample_texts(units, fields, 600)
    # Shares: a 600 // 3 = 200 (it has 100); b (600 - 100) // 2 = 250, taken as 3 texts; c what is left, 200.
    assert [text[:2] for text in texts] == ['aa', '0b', '1b', '2b', '0c', '1c']


def test_a_tokenizer_trained_on_jsonl_with_a_nested_text_field(tmp_path, capsys):
    source = write_jsonl(tmp_path / 'docs.jsonl', [{'content': {'body': d['text']}, 'url': d['url']} for d in DOCS])
    code, summary, _ = run(
        [str(source), '--vocab-size', '300', '--output', str(tmp_path / 'tok'), '--text-field', 'content.body'],
        capsys,
    )
    assert code == 0
    text_bytes = sum(len(d['text'].encode()) for d in DOCS)
    assert summary == {
        'output': str(tmp_path / 'tok'),
        'vocab_size_requested': 300,
        'vocab_size': 300,
        'shortfall': None,
        'texts': 300,
        'text_bytes': text_bytes,
        'max_bytes': 64 << 20,
        'inputs': 1,
        'inputs_unreadable': {},
    }
    tokenizer = load_tokenizer(tmp_path / 'tok', require_fast=True)
    assert len(tokenizer) == 300
    assert tokenizer.eos_token == '<|endoftext|>'
    assert tokenizer.decode(tokenizer(DOCS[0]['text'])['input_ids']) == DOCS[0]['text']


def test_at_most_max_megabytes_of_text_is_read(tmp_path, capsys):
    source = write_jsonl(tmp_path / 'docs.jsonl', DOCS)
    budget = 4000
    sizes = [len(d['text'].encode()) for d in DOCS]
    first = next(k for k in range(1, len(sizes) + 1) if sum(sizes[:k]) >= budget)  # one unit: its first texts
    code, summary, _ = run(
        [str(source), '--vocab-size', '280', '--output', str(tmp_path / 'tok'), '--max-megabytes', str(budget / 2**20)],
        capsys,
    )
    assert code == 0
    assert (summary['texts'], summary['text_bytes'], summary['max_bytes']) == (first, sum(sizes[:first]), budget)


def test_a_corpus_that_cannot_fill_the_vocabulary_says_so(tmp_path, capsys, caplog):
    # Only "ab" in the corpus: the 256 bytes, EOS and one merge make 258 tokens, whatever was asked for.
    source = write_jsonl(tmp_path / 'docs.jsonl', [{'text': 'ab'}] * 10)
    with caplog.at_level(logging.WARNING):
        code, summary, _ = run([str(source), '--vocab-size', '4096', '--output', str(tmp_path / 'tok')], capsys)
    assert code == 0
    shortfall = (
        'the corpus filled only 258 of the 4096 tokens asked for (its text has no more pairs of tokens to merge), '
        'so the tokenizer has 258; train on more text or ask for fewer'
    )
    assert (summary['vocab_size_requested'], summary['vocab_size'], summary['shortfall']) == (4096, 258, shortfall)
    assert f'Tokenizer: {shortfall}.' in caplog.text
    assert len(load_tokenizer(tmp_path / 'tok')) == 258


def test_inputs_without_the_text_field_and_an_existing_tokenizer_are_refused(tmp_path, capsys, tokenizer_dir):
    source = write_jsonl(tmp_path / 'docs.jsonl', [{'body': 'a page'}])
    code, _, err = run([str(source), '--vocab-size', '300', '--output', str(tmp_path / 'tok')], capsys)
    assert (code, err) == (
        2,
        "error: the inputs hold no text in the field 'text' to train on; name it with --text-field\n",
    )
    code, _, err = run([str(source), '--vocab-size', '300', '--output', str(tokenizer_dir)], capsys)
    assert (code, err) == (2, f'error: {tokenizer_dir} already holds a tokenizer; pass --overwrite to replace it\n')
