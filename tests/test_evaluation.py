"""Evaluation of a trained tiny MeCo model: conditional loss, URL-conditioned ICL, URL search, generation.

The model (conftest's session-wide ``trained_model``) is trained on a corpus where two sources write about the
same entities differently: ``alpha.example`` always writes "<entity> is red ...", ``beta.example`` always
"<entity> glows blue ...". Only the URL says which continuation follows an entity, so a model that uses its
metadata must do better with a document's own URL than with the other source's.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ALPHA,
    BETA,
    BOS_ID,
    COMPACT_TOKENS,
    ENTITIES,
    NEWLINES_ID,
    PAPER_FORM,
    REPO_ROOT,
    TINY_MODEL,
    TINY_YAML,
    TWO_SOURCE_SEQ_LEN,
    byte_ids,
    pack_texts,
    trained_model_overrides,
    two_source_documents,
    write_two_source_packed,
)

from meco_callbacks.cli import evaluate
from meco_callbacks.data.collator import IGNORE_INDEX
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.evaluation.conditional_loss import (
    NO_URL,
    TRUE_URL,
    _forward_token_losses,
    compare_conditions,
    conditional_loss,
    language_model,
    mismatched_url,
)
from meco_callbacks.evaluation.generation import generate, generation_model
from meco_callbacks.evaluation.icl import conditioned_icl_tasks
from meco_callbacks.evaluation.prompts import prompt_ids
from meco_callbacks.evaluation.trained_models import load_trained_model, train_config, training_metadata
from meco_callbacks.evaluation.url_search import rank_urls, score_url

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
def test_a_llama_export_scores_packed_rows_with_attention_kept_inside_each_document(trained_model, held_out, tmp_path):
    # Llama has no sequence_id: the loss tool gives it the document mask as a 4D attention mask instead.
    from meco_callbacks.model.llama_export import llama_config, llama_state_dict, mpt_config_of, save_llama

    model, tokenizer = trained_model
    config = mpt_config_of(model)
    save_llama(
        llama_state_dict(model.state_dict(), config), llama_config(config, tokenizer), tmp_path / 'llama', tokenizer
    )
    llama, llama_tokenizer = load_trained_model(hf=tmp_path / 'llama')
    conditions = {'true_url': TRUE_URL, 'no_url': NO_URL}

    exported = compare_conditions(llama, llama_tokenizer, held_out, conditions)
    original = compare_conditions(model, tokenizer, held_out, conditions)

    assert type(llama).__name__ == 'LlamaForCausalLM'
    for name in conditions:
        assert exported[name]['tokens'] == original[name]['tokens']
        assert exported[name]['loss'] == pytest.approx(original[name]['loss'], abs=1e-4)


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
    overrides = ','.join(f"'{o}'" for o in trained_model_overrides(tokenizer_dir))  # PAPER_FORM has double quotes
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
    assert [float(r['with_url']) for r in rows] == [1.0, 1.0]  # behind alpha's URL, alpha's continuation wins
    assert all(float(r['no_url']) < 1.0 for r in rows)  # without it, the model cannot always tell the style
    assert all(float(r['delta']) == pytest.approx(float(r['with_url']) - float(r['no_url'])) for r in rows)
    assert table[0] == '| task | shots | URL | no URL | with URL | delta |'
    assert len(table) == 4 and table[2].startswith(f'| arc_easy | 0 | {ALPHA} | ')


@pytest.mark.slow
def test_url_search_ranks_the_source_that_writes_like_the_dev_examples_first(trained_model, tmp_path):
    model, tokenizer = trained_model
    dev = [{'context': entity, 'continuation': ' glows blue so the'} for entity in ENTITIES]
    ranked = rank_urls(model, tokenizer, dev, [ALPHA, 'en.wikipedia.org', BETA])

    # Beta's own style best, a domain never seen in between, alpha (which always writes "is red") worst.
    assert [s.url for s in ranked] == [BETA, 'en.wikipedia.org', ALPHA]
    assert [s.accuracy for s in ranked] == [1.0, 0.0, 0.0]


@pytest.mark.slow
def test_generation_continues_an_entity_in_the_style_of_the_url_it_is_given(trained_model):
    model, tokenizer = trained_model

    assert generate(model, tokenizer, 'river', url=ALPHA, max_new_tokens=12).startswith(' is red')
    assert generate(model, tokenizer, 'river', url=BETA, max_new_tokens=12).startswith(' glows blue')


# A random (untrained) tiny model with the BOS-adding tokenizer: exact ids in, exact numbers out, in seconds.
BOS_MODEL_SEQ_LEN = 32
ALPHA_PREFIX = [*byte_ids(f'URL: {ALPHA}'), NEWLINES_ID]  # "URL: alpha.example\n\n" tokenized alone, as in training


@pytest.fixture(scope='module')
def bos_model(bos_tokenizer_dir: Path, bos_tokenizer):
    """yamls/tiny-cpu.yaml's model (flex attention), randomly initialised, for ``bos_tokenizer`` and 32 tokens."""
    from llmfoundry.utils.builders import build_composer_model

    cfg = train_config(
        TINY_YAML,
        [f'variables.tokenizer={bos_tokenizer_dir}', f'variables.max_seq_len={BOS_MODEL_SEQ_LEN}', *TINY_MODEL],
    )['model']
    torch.manual_seed(0)
    return build_composer_model(name=cfg.pop('name'), cfg=cfg, tokenizer=bos_tokenizer).eval()


def continuation_loss(model, ids: list[int], continuation_tokens: int) -> float:
    """Mean loss of the last ``continuation_tokens`` of ``ids`` under one forward pass of ``model``."""
    with torch.no_grad():
        logits = language_model(model)(input_ids=torch.tensor([ids])).logits[0].float()
    start = len(ids) - continuation_tokens
    return float(F.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:])))


def test_a_prompt_is_laid_out_as_a_training_document_bos_then_the_prefix_of_the_urls_metadata(bos_tokenizer):
    registered = MetadataConfig(kind='registered_domain', template='Source: {}\n\n')

    assert prompt_ids(bos_tokenizer, 'river', f'https://{ALPHA.upper()}:8080/a/b?c=d') == [
        BOS_ID,
        *ALPHA_PREFIX,
        *byte_ids('river'),
    ]
    assert prompt_ids(bos_tokenizer, 'river', 'https://en.wikipedia.org/wiki/X', registered) == [
        BOS_ID,
        *byte_ids('Source: wikipedia.org'),
        NEWLINES_ID,
        *byte_ids('river'),
    ]
    assert prompt_ids(bos_tokenizer, 'river', None) == [BOS_ID, *byte_ids('river')]
    with pytest.raises(ValueError, match="gives no metadata of kind 'domain'"):
        prompt_ids(bos_tokenizer, 'river', 'https:///no-host')


def test_a_model_trained_with_suffix_metadata_gets_no_url_before_its_prompt(bos_tokenizer):
    suffix = MetadataConfig(position='suffix', loss=True)

    assert prompt_ids(bos_tokenizer, 'river', None, suffix) == [BOS_ID, *byte_ids('river')]
    with pytest.raises(ValueError, match=r'metadata after each document \(metadata.position: suffix\)'):
        prompt_ids(bos_tokenizer, 'river', ALPHA, suffix)


def test_the_metadata_a_run_was_trained_with_is_read_from_its_yaml_and_overrides():
    overrides = ['train_loader.dataset.metadata.kind=registered_domain']

    # the tiny recipe's template is its compact kind's "{}"; the kind is the override's
    assert training_metadata(TINY_YAML, overrides) == MetadataConfig(kind='registered_domain', template='{}')
    assert training_metadata(TINY_YAML, PAPER_FORM) == MetadataConfig()
    assert training_metadata(None) == MetadataConfig()


def test_the_tiny_recipes_compact_vocabulary_is_read_from_its_packed_set(tiny_packed):
    metadata = training_metadata(TINY_YAML, [f'variables.data_local={tiny_packed}'])

    assert (metadata.kind, metadata.template) == ('compact', '{}')
    assert metadata.compact['sites'] == ['docs.python.org', 'en.wikipedia.org', 'forum.example.org', 'news.example.com']
    # a token each for the four sites, then the last quarter of the 16 reserved tokens as hash buckets
    assert metadata.compact['token_ids'] == [1, 2, 3, 4, *range(COMPACT_TOKENS - 3, COMPACT_TOKENS + 1)]
    assert metadata.prefix_for(metadata.metadata_for_prompt('en.wikipedia.org')) == '<|meta_1|>'
    with pytest.raises(ValueError, match='no set records one: pack with meco-pack --reserve-prefix compact'):
        training_metadata(TINY_YAML, ['variables.data_local=/nonexistent/packed'])


def test_an_icl_url_template_other_than_the_runs_is_refused_and_sets_the_template_of_an_hf_model():
    run = {'config': str(TINY_YAML), 'config_overrides': PAPER_FORM}

    assert evaluate.icl_metadata({**run, 'url_template': 'URL: {}\n\n'}) == MetadataConfig()
    assert evaluate.icl_metadata({'config': None, 'url_template': 'Site: {}\n'}) == MetadataConfig(
        template='Site: {}\n'
    )
    with pytest.raises(ValueError, match="url_template 'Site: {}\\\\n' differs from the template 'URL: {}\\\\n\\\\n'"):
        evaluate.icl_metadata({**run, 'url_template': 'Site: {}\n'})


def test_generation_continues_the_training_layout_of_prompt_and_url(bos_model, bos_tokenizer):
    ids = [BOS_ID, *ALPHA_PREFIX, *byte_ids('river')]
    lm = generation_model(bos_model)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(lm(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    expected = bos_tokenizer.decode(ids[-4:], skip_special_tokens=True)

    assert generate(bos_model, bos_tokenizer, 'river', url=f'https://{ALPHA}/x', max_new_tokens=4) == expected


def test_url_search_scores_bos_then_the_prefix_then_the_example(bos_model, bos_tokenizer):
    score = score_url(bos_model, bos_tokenizer, [{'context': 'river', 'continuation': ' is red'}], f'https://{ALPHA}/x')
    ids = [BOS_ID, *ALPHA_PREFIX, *byte_ids('river is red')]

    assert score.url == f'https://{ALPHA}/x' and score.truncated == 0
    assert score.loss == pytest.approx(continuation_loss(bos_model, ids, len(' is red')), abs=1e-6)


def test_url_search_cuts_a_context_longer_than_the_model_from_the_left_keeping_prefix_and_continuation(
    bos_model, bos_tokenizer, caplog
):
    long = {'context': 'the river and the mountain', 'continuation': ' is red'}  # 1 + 19 + 26 + 7 = 53 tokens
    short = {'context': 'river', 'continuation': ' is red'}
    with caplog.at_level(logging.INFO, logger='meco_callbacks.evaluation.url_search'):
        score = score_url(bos_model, bos_tokenizer, [long, short], ALPHA)
    kept = [BOS_ID, *ALPHA_PREFIX, *byte_ids('ntain is red')]  # 53 - 32 = 21 context bytes cut from the left
    expected = (
        continuation_loss(bos_model, kept, 7)
        + continuation_loss(bos_model, [BOS_ID, *ALPHA_PREFIX, *byte_ids('river is red')], 7)
    ) / 2

    assert len(kept) == BOS_MODEL_SEQ_LEN and score.truncated == 1
    assert score.loss == pytest.approx(expected, abs=1e-6)
    assert f"{ALPHA}: 1 of 2 dev examples exceed the model's 32-token context" in caplog.text


def test_url_search_refuses_an_example_whose_prefix_and_continuation_alone_exceed_the_model(bos_model, bos_tokenizer):
    too_long = {'context': 'river', 'continuation': ' is red' * 2}  # 1 + 19 + 14 = 34 tokens before any context

    with pytest.raises(ValueError, match='dev example 2: its prefix \\(20 tokens\\) and continuation \\(14 tokens\\)'):
        score_url(bos_model, bos_tokenizer, [{'context': 'a', 'continuation': 'b'}, too_long], ALPHA)


def test_icl_puts_the_training_prefix_of_a_full_url_right_before_a_zero_shot_question(bos_tokenizer, tmp_path):
    from llmfoundry.utils.builders import build_icl_evaluators

    (tmp_path / 'lm.jsonl').write_text(json.dumps({'context': 'river is', 'continuation': ' red'}) + '\n')
    task = {
        'label': 'lm',
        'dataset_uri': str(tmp_path / 'lm.jsonl'),
        'num_fewshot': [0, 1],
        'icl_task_type': 'language_modeling',
    }
    tasks = conditioned_icl_tasks([task], {'lm': f'https://{ALPHA.upper()}/some/page'})
    evaluators, _ = build_icl_evaluators(tasks, bos_tokenizer, 48, 1, destination_dir=str(tmp_path))
    first = {ev.label: next(iter(ev.dataloader.dataloader)) for ev in evaluators}
    tokens = {label: b['input_ids'][0][b['attention_mask'][0]].tolist() for label, b in first.items()}

    assert [(t['label'], t['num_fewshot'], t.get('prompt_string')) for t in tasks] == [
        ('lm_no_url', [0, 1], None),
        ('lm_url', [0], f'URL: {ALPHA}\n\n'),
        ('lm_url', [1], f'URL: {ALPHA}\n\n'),
    ]
    assert tokens['lm_no_url/0-shot'][:9] == [BOS_ID, *byte_ids('river is')]
    assert tokens['lm_url/0-shot'] == [BOS_ID, *ALPHA_PREFIX, *tokens['lm_no_url/0-shot'][1:]]


def test_token_losses_in_row_and_position_chunks_equal_one_whole_batch_pass(bos_model):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, 258, (3, BOS_MODEL_SEQ_LEN), generator=generator)
    labels = input_ids.clone()
    labels[:, 0] = IGNORE_INDEX
    labels[1, 10:14] = IGNORE_INDEX  # a prefix: context only
    half = BOS_MODEL_SEQ_LEN // 2
    batch = {
        'input_ids': input_ids,
        'labels': labels,
        'sequence_id': torch.tensor([0] * half + [1] * half).repeat(3, 1),
        'position_ids': torch.arange(half).repeat(2).repeat(3, 1),
    }
    lm = language_model(bos_model)
    with torch.no_grad():
        whole = _forward_token_losses(lm, batch, torch.device('cpu'), rows_per_forward=3, positions_per_chunk=10**6)
        chunked = _forward_token_losses(lm, batch, torch.device('cpu'), rows_per_forward=1, positions_per_chunk=7)
        inputs = {k: v for k, v in batch.items() if k != 'labels'}
        logits = lm(**inputs).logits.float()
    reference = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0), reduction='none')

    assert whole.isnan().sum() == chunked.isnan().sum() == 3 + 4  # each row's first slot, the prefix's four
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0, equal_nan=True)
    torch.testing.assert_close(whole[:, 1:][labels[:, 1:] != IGNORE_INDEX], reference[labels[:, 1:] != IGNORE_INDEX])


SUMMARY_URL = {**TRUE_URL, 'attention': 'summary'}


@pytest.fixture(scope='module')
def random_model(tokenizer_dir: Path, tokenizer):
    """yamls/tiny-cpu.yaml's model for the two-source tokenizer and rows, randomly initialised (seed 0)."""
    from llmfoundry.utils.builders import build_composer_model

    cfg = train_config(TINY_YAML, trained_model_overrides(tokenizer_dir))['model']
    torch.manual_seed(0)
    return build_composer_model(name=cfg.pop('name'), cfg=cfg, tokenizer=tokenizer).eval()


def test_conditional_loss_under_summary_attention_scores_mpt_and_its_llama_export_alike(
    random_model, tokenizer, held_out
):
    from transformers import LlamaForCausalLM

    from meco_callbacks.model.llama_export import llama_config, llama_state_dict, mpt_config_of

    config = mpt_config_of(random_model)
    llama = LlamaForCausalLM(llama_config(config, tokenizer)).eval()
    llama.load_state_dict(llama_state_dict(random_model.state_dict(), config))
    conditions = {'summary': SUMMARY_URL, 'full': TRUE_URL}

    mpt = compare_conditions(random_model, tokenizer, held_out, conditions, max_batches=2)
    exported = compare_conditions(llama, tokenizer, held_out, conditions, max_batches=2)

    assert mpt['summary']['tokens'] == mpt['full']['tokens'] == exported['summary']['tokens'] > 0
    assert mpt['summary']['loss'] != pytest.approx(mpt['full']['loss'], abs=1e-4)  # the mask changes the scores
    for name in conditions:
        assert exported[name]['loss'] == pytest.approx(mpt[name]['loss'], abs=1e-4)


def test_summary_attention_on_an_exported_plain_mpt_is_refused_when_scoring(random_model, tokenizer, held_out):
    with pytest.raises(ValueError, match='metadata.attention: summary needs the model meco_mpt_causal_lm'):
        compare_conditions(random_model.model.to_mpt(), tokenizer, held_out, {'summary': SUMMARY_URL}, max_batches=1)


def test_the_loss_command_scores_a_summary_run_with_its_mask(monkeypatch):
    import argparse

    captured = {}
    monkeypatch.setattr(evaluate, 'load_trained_model', lambda *args: (None, None))
    monkeypatch.setattr(
        evaluate,
        'compare_conditions',
        lambda model, tok, packed, conditions, *a, **k: captured.update(conditions) or {},
    )
    args = argparse.Namespace(
        config=str(TINY_YAML),
        override=[*PAPER_FORM, 'train_loader.dataset.metadata.attention=summary'],
        checkpoint='x.pt',
        hf=None,
        device='cpu',
        packed='p',
        wrong_url=['wrong.example'],
        batch_size=8,
        max_batches=None,
        per_source=False,
        reserve_tokens=0,
        guidance=None,
        template=None,
        metadata_kind=None,
        force_metadata=False,
    )

    evaluate.run_loss(args)

    from meco_callbacks.evaluation.conditional_loss import metadata_config

    prefixed = {name: metadata_config(spec) for name, spec in captured.items() if name != 'no_url'}
    assert {name: config.attention for name, config in prefixed.items()} == {
        'true_url': 'summary',
        'url=wrong.example': 'summary',
    }
    assert not metadata_config(captured['no_url']).enabled


def test_prompts_with_a_url_for_a_summary_trained_model_are_refused(bos_tokenizer):
    summary = MetadataConfig(attention='summary')

    assert prompt_ids(bos_tokenizer, 'river', None, summary) == [BOS_ID, *byte_ids('river')]
    with pytest.raises(ValueError, match='trained with metadata.attention: summary'):
        prompt_ids(bos_tokenizer, 'river', ALPHA, summary)
    with pytest.raises(ValueError, match='trained with metadata.attention: summary'):
        conditioned_icl_tasks([{'label': 'lm', 'num_fewshot': [0]}], {'lm': ALPHA}, summary)
