"""Context guidance (Fan et al. 2025): logits = no_url + γ · (url − no_url) in generation, URL search and loss.

The fast tests use a tiny randomly initialised transformers ``LlamaForCausalLM`` (exact ids and numbers in, in
seconds); the slow ones the MeCo model trained on conftest's two-source corpus (the MPT fixture), where
``alpha.example`` writes "<entity> is red ..." and ``beta.example`` "<entity> glows blue ...".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ALPHA,
    BETA,
    BOS_ID,
    ENTITIES,
    NEWLINES_ID,
    byte_ids,
    tiny_llama,
    write_two_source_packed,
)

from meco_callbacks.cli import evaluate
from meco_callbacks.cli import generate as generate_cli
from meco_callbacks.cli import url_search as url_search_cli
from meco_callbacks.evaluation.conditional_loss import NO_URL, TRUE_URL, compare_conditions, mismatched_url
from meco_callbacks.evaluation.generation import generate, generation_model
from meco_callbacks.evaluation.guidance import guide
from meco_callbacks.evaluation.url_search import rank_urls, score_url

ALPHA_PREFIX = [*byte_ids(f'URL: {ALPHA}'), NEWLINES_ID]  # "URL: alpha.example\n\n" tokenized alone, as in training
PACKED_SEQ_LEN = 64


@pytest.fixture(scope='module')
def bos_llama(bos_tokenizer):
    """A tiny Llama for ``bos_tokenizer`` (BOS id 0, a byte per token)."""
    return tiny_llama(bos_tokenizer, PACKED_SEQ_LEN)


@pytest.fixture(scope='module')
def llama(tokenizer):
    """A tiny Llama for the session tokenizer, which the packed two-source data is tokenized with."""
    return tiny_llama(tokenizer, PACKED_SEQ_LEN)


@pytest.fixture(scope='module')
def held_out(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A held-out packed split of the two-source corpus (rows of 64 tokens)."""
    return write_two_source_packed(tmp_path_factory.mktemp('held_out'), tokenizer, 40, seed=99)


def last_logits(lm, ids: list[int]) -> torch.Tensor:
    """The fp32 next-token logits after ``ids``, from one full forward pass."""
    with torch.no_grad():
        return lm(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_guidance_is_exactly_the_url_logits_at_one_and_the_no_url_logits_at_zero():
    no_url, url = torch.randn(2, 3, 1000, generator=torch.Generator().manual_seed(0))

    assert torch.equal(guide(no_url, url, 1.0), url)
    assert torch.equal(guide(no_url, url, 0.0), no_url)
    torch.testing.assert_close(guide(no_url, url, 3.0), no_url + 3 * (url - no_url))


def test_guided_generation_picks_from_both_streams_logits_and_appends_the_token_to_both(bos_llama, bos_tokenizer):
    url_ids = [BOS_ID, *ALPHA_PREFIX, *byte_ids('river')]  # the prompt laid out as a training document
    no_url_ids = [BOS_ID, *byte_ids('river')]  # the same text, no prefix
    for _ in range(6):
        token = int(guide(last_logits(bos_llama, no_url_ids), last_logits(bos_llama, url_ids), 3.0).argmax())
        url_ids.append(token)
        no_url_ids.append(token)
    expected = bos_tokenizer.decode(url_ids[-6:], skip_special_tokens=True)

    assert (
        generate(bos_llama, bos_tokenizer, 'river', url=f'https://{ALPHA}/x', max_new_tokens=6, guidance=3) == expected
    )


def test_guided_greedy_generation_with_the_kv_cache_equals_recomputing_both_streams(bos_llama, bos_tokenizer):
    cached = generate(bos_llama, bos_tokenizer, 'river', ALPHA, max_new_tokens=12, guidance=3)
    recomputed = generate(bos_llama, bos_tokenizer, 'river', ALPHA, max_new_tokens=12, guidance=3, use_cache=False)

    assert cached == recomputed


@pytest.mark.parametrize('sample', [False, True])
def test_guidance_one_generates_exactly_as_plain_url_conditioning(bos_llama, bos_tokenizer, sample):
    kwargs = {'max_new_tokens': 12, 'do_sample': sample, 'temperature': 1.5, 'seed': 3}

    assert generate(bos_llama, bos_tokenizer, 'river', ALPHA, guidance=1, **kwargs) == generate(
        bos_llama, bos_tokenizer, 'river', ALPHA, **kwargs
    )


def test_guidance_zero_generates_exactly_as_the_prompt_without_a_url(bos_llama, bos_tokenizer):
    assert generate(bos_llama, bos_tokenizer, 'river', ALPHA, 12, guidance=0) == generate(
        bos_llama, bos_tokenizer, 'river', None, 12
    )


def test_guidance_without_a_url_is_an_error(bos_llama, bos_tokenizer):
    with pytest.raises(ValueError, match='guidance needs a url'):
        generate(bos_llama, bos_tokenizer, 'river', None, guidance=2)


def test_url_search_scores_the_log_softmax_of_the_guided_logits_over_the_continuation(bos_llama, bos_tokenizer):
    example = {'context': 'river', 'continuation': ' is red'}
    url_ids = [BOS_ID, *ALPHA_PREFIX, *byte_ids('river is red')]
    no_url_ids = [BOS_ID, *byte_ids('river is red')]
    with torch.no_grad():
        url_logits = bos_llama(input_ids=torch.tensor([url_ids])).logits[0, -8:-1]
        no_url_logits = bos_llama(input_ids=torch.tensor([no_url_ids])).logits[0, -8:-1]
    target = torch.tensor(byte_ids(' is red'))

    for gamma in (0.0, 2.5):
        expected = float(F.cross_entropy(guide(no_url_logits, url_logits, gamma), target))
        assert score_url(bos_llama, bos_tokenizer, [example], ALPHA, guidance=gamma).loss == pytest.approx(
            expected, abs=1e-6
        )


def test_url_search_with_guidance_one_reproduces_the_plain_scores_exactly(bos_llama, bos_tokenizer):
    examples = [{'context': entity, 'continuation': ' is red'} for entity in ENTITIES[:3]]
    candidates = [ALPHA, BETA, 'en.wikipedia.org']

    assert rank_urls(bos_llama, bos_tokenizer, examples, candidates, guidance=1) == rank_urls(
        bos_llama, bos_tokenizer, examples, candidates
    )


def test_url_search_guidance_refuses_an_example_with_nothing_before_its_continuation_without_the_url(llama, tokenizer):
    with pytest.raises(ValueError, match='dev example 1: without the URL prefix nothing precedes its continuation'):
        score_url(llama, tokenizer, [{'context': '', 'continuation': ' is red'}], ALPHA, guidance=2)


CONDITIONS = {'true_url': TRUE_URL, 'no_url': NO_URL, 'alpha_url': mismatched_url(ALPHA)}


def test_guided_loss_at_one_is_the_plain_loss_and_at_zero_the_no_url_loss_on_the_same_tokens(
    llama, tokenizer, held_out
):
    def loss(guidance):  # Llama takes no sequence_id: attention is not document-masked here
        return compare_conditions(llama, tokenizer, held_out, CONDITIONS, document_masking=False, guidance=guidance)

    plain, one, zero, two = loss(None), loss(1.0), loss(0.0), loss(2.0)

    def same(a, b):  # the same tokens, the same loss up to float summation order (batches laid out differently)
        return a['tokens'] == b['tokens'] and a['rows'] == b['rows'] and a['loss'] == pytest.approx(b['loss'], rel=1e-6)

    assert one == plain
    assert all(same(zero[name], plain['no_url']) for name in ('true_url', 'alpha_url', 'no_url'))
    assert two['no_url'] == plain['no_url']
    assert two['true_url']['tokens'] == plain['true_url']['tokens'] > 0
    assert two['true_url']['loss'] != plain['true_url']['loss']


def test_the_commands_refuse_guidance_that_is_not_a_finite_number_or_comes_without_a_url(capsys):
    model = ['--hf', 'no-such-dir']
    with pytest.raises(SystemExit):
        generate_cli.main(['--prompt', 'river', '--guidance', '2', *model])
    assert '--guidance needs --url: it weighs the prompt behind that URL' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        url_search_cli.main(['--dev', 'd.jsonl', '--candidates', 'c.txt', '--guidance', 'inf', *model])
    assert "argument --guidance: 'inf' is not a guidance scale: give a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(['loss', '--packed', 'p', '--guidance', 'strong', *model])
    assert "argument --guidance: 'strong' is not a guidance scale" in capsys.readouterr().err


def test_generate_command_prints_the_guided_continuation(bos_llama, bos_tokenizer, tmp_path, capsys):
    bos_llama.save_pretrained(tmp_path / 'hf')
    bos_tokenizer.save_pretrained(tmp_path / 'hf')
    generate_cli.main(
        ['--prompt', 'river', '--url', ALPHA, '--guidance', '2', '--max-new-tokens', '8']
        + [
            '--hf',
            str(tmp_path / 'hf'),
        ]
    )

    assert capsys.readouterr().out == generate(bos_llama, bos_tokenizer, 'river', ALPHA, 8, guidance=2) + '\n'


@pytest.mark.slow
def test_on_the_trained_model_guidance_one_and_zero_are_exact_and_the_cache_changes_nothing(trained_model):
    model, tokenizer = trained_model
    lm = generation_model(model)  # the plain MPT (llm-foundry's KV cache) sharing the MeCo model's weights

    for entity in ENTITIES[:3]:
        assert generate(lm, tokenizer, entity, BETA, 12, guidance=1) == generate(lm, tokenizer, entity, BETA, 12)
        assert generate(lm, tokenizer, entity, BETA, 12, guidance=0) == generate(lm, tokenizer, entity, None, 12)
        assert generate(lm, tokenizer, entity, BETA, 12, guidance=3) == generate(
            lm, tokenizer, entity, BETA, 12, guidance=3, use_cache=False
        )


SOURCE_MARKS = {ALPHA: ('red',), BETA: ('glow', 'blue')}


def follows_source(text: str, url: str) -> bool:
    """Whether a continuation uses its URL's source's words ("red"; "glow"/"blue") and none of the other's."""
    other = BETA if url == ALPHA else ALPHA
    return any(mark in text for mark in SOURCE_MARKS[url]) and not any(mark in text for mark in SOURCE_MARKS[other])


@pytest.mark.slow
def test_guidance_above_one_makes_sampled_text_follow_the_urls_source_more_often(trained_model):
    """40 samples (10 entities x 2 URLs x 2 seeds, temperature 1.5, 8 tokens): measured 16 follow at γ = 1, 31 at γ = 3."""
    model, tokenizer = trained_model
    lm = generation_model(model)
    prompts = [(entity, url) for entity in ENTITIES for url in (ALPHA, BETA)] * 2

    def following(gamma: float) -> int:
        return sum(
            follows_source(
                generate(lm, tokenizer, e, url, 8, do_sample=True, temperature=1.5, seed=i, guidance=gamma), url
            )
            for i, (e, url) in enumerate(prompts)
        )

    plain, guided = following(1.0), following(3.0)

    assert guided >= plain + 8, (plain, guided)


@pytest.mark.slow
def test_guided_loss_widens_the_gap_between_a_documents_own_url_and_the_other_sources(trained_model, held_out):
    """Measured on these 40 documents (500 tokens), other URL minus own URL: alpha's 1.51 nats at γ = 1, 4.07 at 2;
    beta's 1.74, 5.15. Own-URL loss rises (alpha 0.28 -> 0.44, beta 0.21 -> 0.25): guidance sharpens, not improves."""
    model, tokenizer = trained_model
    conditions = {'alpha_url': mismatched_url(ALPHA), 'beta_url': mismatched_url(BETA)}

    def per_source(guidance: float) -> dict[str, dict[str, float]]:
        results = compare_conditions(model, tokenizer, held_out, conditions, per_source=True, guidance=guidance)
        return {name: {src: r['per_source'][src]['loss'] for src in (ALPHA, BETA)} for name, r in results.items()}

    plain, guided = per_source(1.0), per_source(2.0)

    for own, own_url, other in ((ALPHA, 'alpha_url', 'beta_url'), (BETA, 'beta_url', 'alpha_url')):
        assert guided[other][own] - guided[own_url][own] > 1.5 * (plain[other][own] - plain[own_url][own])
        assert guided[own_url][own] > plain[own_url][own]
