"""Training a tokenizer on your own corpus: the inputs conversion reads, a bounded sample, an honest vocabulary size.

Issue 20 item 1 (a command for a user without the hub) and issue 15 item 14 (say when the corpus cannot fill
the vocabulary asked for).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from conftest import synthetic_documents

from meco_callbacks.cli.train_tokenizer import main
from meco_callbacks.corpus.documents.sources import FieldMapping, find_sources, plan_units
from meco_callbacks.corpus.documents.text_sample import sample_texts
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import PrefixTokens
from meco_callbacks.tokenizer.loading import load_tokenizer

DOCS = synthetic_documents(300, seed=5)
DOCS4 = [
    {'url': f'https://{site}/'} for site in ('news.example.com', 'shop.sample.org', 'blog.demo.net', 'wiki.test.io')
]


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


def four_site_documents(n: int) -> list[dict]:
    """``n`` short documents spread over four sites whose names the texts never contain."""
    rng = random.Random(7)
    words = [d['text'] for d in DOCS]
    sites = ['news.example.com', 'shop.sample.org', 'blog.demo.net', 'wiki.test.io']
    return [{'text': rng.choice(words), 'url': f'https://{sites[i % 4]}/p/{i}'} for i in range(n)]


def test_learning_the_domain_prefixes_brings_them_to_8_tokens_and_reports_their_cost(tmp_path, capsys):
    # The GPT-2 splitting regex cuts "URL: news.example.com\n\n" into 8 pieces (URL, :, " news", ., example, ., com,
    # "\n\n"): learnt, each piece is one token; not learnt, the site names stay split into smaller pieces.
    source = write_jsonl(tmp_path / 'docs.jsonl', four_site_documents(2000))
    args = [str(source), '--vocab-size', '600']
    code, learnt, _ = run([*args, '--output', str(tmp_path / 'learnt'), '--prefix-kind', 'domain'], capsys)
    assert code == 0
    code, plain, _ = run([*args, '--output', str(tmp_path / 'plain')], capsys)
    assert code == 0 and 'prefixes' not in plain
    config = MetadataConfig(kind='domain')
    cost = {
        name: [len(PrefixTokens(load_tokenizer(tmp_path / name), config).for_document(d['url'])) for d in DOCS4[:4]]
        for name in ('learnt', 'plain')
    }

    assert cost['learnt'] == [8, 8, 8, 8]
    assert all(c > 8 for c in cost['plain']), cost
    report = learnt['prefixes']['domain']
    assert (report['template'], report['documents'], report['mean_tokens']) == ('URL: {}\n\n', 2000, 8.0)
    assert report['top_sites'][0] == {
        'site': 'blog.demo.net',
        'documents': 500,
        'prefix': 'URL: blog.demo.net\n\n',
        'tokens': 8,
    }
    assert [s['site'] for s in report['top_sites']] == sorted(s['site'] for s in report['top_sites'])
    assert learnt['texts'] == plain['texts'] == 2000


def test_metadata_tokens_are_added_as_specials_and_kinds_without_text_are_refused(tmp_path, capsys):
    source = write_jsonl(tmp_path / 'docs.jsonl', four_site_documents(100))
    args = [str(source), '--vocab-size', '300', '--output', str(tmp_path / 'tok')]
    code, summary, _ = run([*args, '--metadata-tokens', '4'], capsys)
    tokenizer = load_tokenizer(tmp_path / 'tok')

    assert code == 0 and summary['metadata_tokens'] == 4 and len(tokenizer) == 300
    assert [tokenizer.convert_tokens_to_ids(f'<|meta_{k}|>') for k in range(4)] == [1, 2, 3, 4]
    assert tokenizer('<|meta_2|>', split_special_tokens=True)['input_ids'] != [3]
    code, _, err = run([*args, '--overwrite', '--prefix-kind', 'compact'], capsys)
    assert code == 2 and 'compact: reserved tokens, --metadata-tokens' in err
    code, _, err = run([*args, '--overwrite', '--metadata-tokens', '43'], capsys)
    assert code == 2 and 'the 43 metadata tokens' in err


def test_prefix_kinds_are_repeatable_and_a_column_kind_reads_the_records_field(tmp_path, capsys):
    records = [{**d, 'meta': {'tag': f'T{i % 3}'}} for i, d in enumerate(four_site_documents(200))]
    records[0].pop('meta')  # no value: no prefix
    source = write_jsonl(tmp_path / 'docs.jsonl', records)
    code, summary, _ = run(
        [str(source), '--vocab-size', '400', '--output', str(tmp_path / 'tok'), '--prefix-kind', 'domain']
        + ['--prefix-kind', 'column:meta.tag', '--template', '{}\\n'],
        capsys,
    )

    assert code == 0 and sorted(summary['prefixes']) == ['column:meta.tag', 'domain']
    tag = summary['prefixes']['column:meta.tag']
    assert (tag['template'], tag['documents']) == ('{}\n', 199)
    assert tag['top_sites'][0]['prefix'] in {'T0\n', 'T1\n', 'T2\n'}
