"""Evaluation of a trained tiny MeCo model: conditional loss, URL-conditioned ICL, URL search, generation.

The model (conftest's session-wide ``trained_model``) is trained on a corpus where two sources write about the
same entities differently: ``alpha.example`` always writes "<entity> is red ...", ``beta.example`` always
"<entity> glows blue ...". Only the URL says which continuation follows an entity, so a model that uses its
metadata must do better with a document's own URL than with the other source's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import (
    ALPHA,
    BETA,
    ENTITIES,
    REPO_ROOT,
    TINY_YAML,
    TWO_SOURCE_SEQ_LEN,
    pack_texts,
    trained_model_overrides,
    two_source_documents,
    write_two_source_packed,
)

from meco_callbacks.cli import evaluate
from meco_callbacks.evaluation.conditional_loss import (
    NO_URL,
    TRUE_URL,
    compare_conditions,
    conditional_loss,
    mismatched_url,
)
from meco_callbacks.evaluation.generation import generate
from meco_callbacks.evaluation.trained_models import load_trained_model
from meco_callbacks.evaluation.url_search import rank_urls

MAX_SEQ_LEN = TWO_SOURCE_SEQ_LEN


@pytest.fixture(scope='module')
def held_out(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A held-out packed split of the two-source corpus (other seed than training)."""
    return write_two_source_packed(tmp_path_factory.mktemp('held_out'), tokenizer, 120, seed=99)


@pytest.mark.slow
def test_each_source_is_predicted_better_with_its_own_url_than_with_the_other_sources(trained_model, held_out):
    model, tokenizer = trained_model
    results = compare_conditions(
        model,
        tokenizer,
        held_out,
        {'true_url': TRUE_URL, 'no_url': NO_URL, 'alpha_url': mismatched_url(ALPHA), 'beta_url': mismatched_url(BETA)},
        per_source=True,
    )
    loss = {name: {src: r['per_source'][src]['loss'] for src in (ALPHA, BETA)} for name, r in results.items()}

    assert loss['alpha_url'][ALPHA] < loss['beta_url'][ALPHA]
    assert loss['beta_url'][BETA] < loss['alpha_url'][BETA]
    assert results['true_url']['loss'] < results['no_url']['loss']


@pytest.mark.slow
def test_every_condition_is_scored_on_the_same_document_tokens(trained_model, held_out):
    model, tokenizer = trained_model
    results = compare_conditions(
        model,
        tokenizer,
        held_out,
        {'true_url': TRUE_URL, 'no_url': NO_URL, 'long_url': mismatched_url('a.much.longer.example')},
        per_source=True,
    )
    counts = {
        name: (r['tokens'], {src: s['tokens'] for src, s in r['per_source'].items()}) for name, r in results.items()
    }

    assert counts['true_url'] == counts['no_url'] == counts['long_url']
    assert results['no_url']['rows'] == len(pack_texts(two_source_documents(120, seed=99), tokenizer, MAX_SEQ_LEN))


@pytest.mark.slow
def test_an_exported_hf_directory_scores_exactly_like_the_composer_checkpoint(trained_model, held_out, tmp_path):
    model, tokenizer = trained_model
    model.model.save_pretrained(tmp_path / 'hf')
    tokenizer.save_pretrained(tmp_path / 'hf')
    hf_model, hf_tokenizer = load_trained_model(hf=tmp_path / 'hf')
    conditions = {'true_url': TRUE_URL, 'no_url': NO_URL}

    exported = compare_conditions(hf_model, hf_tokenizer, held_out, conditions)
    original = compare_conditions(model, tokenizer, held_out, conditions)

    assert type(hf_model).__name__ == 'MPTForCausalLM'
    for name in conditions:
        assert exported[name]['tokens'] == original[name]['tokens']
        assert exported[name]['loss'] == pytest.approx(original[name]['loss'], abs=1e-5)


@pytest.mark.slow
def test_separate_calls_with_one_reserve_score_the_same_tokens_and_too_small_a_reserve_is_an_error(
    trained_model, held_out
):
    model, tokenizer = trained_model
    true_url = conditional_loss(model, tokenizer, held_out, TRUE_URL, reserve_tokens=MAX_SEQ_LEN - 8)
    no_url = conditional_loss(model, tokenizer, held_out, None, reserve_tokens=MAX_SEQ_LEN - 8)

    assert true_url['tokens'] == no_url['tokens'] > 0
    with pytest.raises(ValueError, match='Raise reserve_tokens'):
        conditional_loss(model, tokenizer, held_out, TRUE_URL, reserve_tokens=1)


def write_icl_task_files(data_dir: Path) -> Path:
    """The two task files yamls/eval/icl-urls.yaml names, in llm-foundry's formats, about alpha's style."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / 'arc_easy.jsonl').write_text(
        ''.join(
            json.dumps({'query': entity, 'choices': [' is red', ' glows blue'], 'gold': 0}) + '\n'
            for entity in ENTITIES
        )
    )
    (data_dir / 'lambada_openai.jsonl').write_text(
        ''.join(
            json.dumps({'context': f'{entity} is red and the {entity}', 'continuation': ' is red'}) + '\n'
            for entity in ENTITIES
        )
    )
    return data_dir


@pytest.mark.slow
def test_the_eval_yaml_runs_each_task_with_and_without_its_url_and_writes_the_table(
    trained_checkpoint, tokenizer_dir, tmp_path
):
    data_dir = write_icl_task_files(tmp_path / 'icl')
    overrides = ','.join(f'"{o}"' for o in trained_model_overrides(tokenizer_dir))
    evaluate.main(
        [
            'icl',
            str(REPO_ROOT / 'yamls' / 'eval' / 'icl-urls.yaml'),
            f'variables.config={TINY_YAML}',
            f'variables.checkpoint={trained_checkpoint}',
            f'variables.data_dir={data_dir}',
            f'variables.output_dir={tmp_path / "out"}',
            f'config_overrides=[{overrides}]',
            f'icl_seq_len={MAX_SEQ_LEN}',
            f'urls.arc_easy={ALPHA}',
            f'urls.lambada_openai={ALPHA}',
        ]
    )
    with (tmp_path / 'out' / 'icl_urls.csv').open() as f:
        rows = list(csv.DictReader(f))
    table = (tmp_path / 'out' / 'icl_urls.md').read_text().splitlines()

    assert [(r['task'], r['shots'], r['url']) for r in rows] == [
        ('arc_easy', '0', ALPHA),
        ('lambada_openai', '0', ALPHA),
    ]
    assert all(0 <= float(r[key]) <= 1 for r in rows for key in ('no_url', 'with_url'))
    assert float(rows[0]['with_url']) == 1.0
    assert table[0] == '| task | shots | URL | no URL | with URL | delta |'
    assert len(table) == 4 and table[2].startswith(f'| arc_easy | 0 | {ALPHA} | ')


@pytest.mark.slow
def test_url_search_ranks_the_source_that_writes_like_the_dev_examples_first(trained_model, tmp_path):
    model, tokenizer = trained_model
    dev = [{'context': entity, 'continuation': ' glows blue so the'} for entity in ENTITIES]
    ranked = rank_urls(model, tokenizer, dev, ['gamma.example', ALPHA, BETA, 'en.wikipedia.org'])

    assert ranked[0].url == BETA
    assert [s.loss for s in ranked] == sorted(s.loss for s in ranked)


@pytest.mark.slow
def test_generation_continues_an_entity_in_the_style_of_the_url_it_is_given(trained_model):
    model, tokenizer = trained_model

    assert generate(model, tokenizer, 'river', url=ALPHA, max_new_tokens=12).startswith(' is red')
    assert generate(model, tokenizer, 'river', url=BETA, max_new_tokens=12).startswith(' glows blue')
