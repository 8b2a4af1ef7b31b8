"""The metadata variants as a specification: mixed conditioning, metadata as a trained suffix, quality bins.

Exact layouts use ``bos_tokenizer`` (0 BOS, 1 EOS, 2 + b for byte b, ``NEWLINES_ID`` for a final "\\n\\n"), so a
row, its labels and its document ids can be written out token by token.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    ALPHA,
    BETA,
    BOS_ID,
    NEWLINES_ID,
    PAPER_FORM,
    TINY_YAML,
    TWO_SOURCE_SEQ_LEN,
    TWO_SOURCE_STEPS,
    byte_ids,
    synthetic_documents,
    train_tiny,
    trained_model_overrides,
    two_source_documents,
    write_documents_mds,
    write_two_source_packed,
)
from streaming.base.util import clean_stale_shared_memory

from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.data.collator import IGNORE_INDEX, PackedCollator, PrefixInjector, metadata_dropped
from meco_callbacks.data.dataloader import build_meco_loader
from meco_callbacks.data.dataset import MeCoPackedDataset
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import PrefixTokens
from meco_callbacks.data.quality_bins import bin_label, quantile_edges
from meco_callbacks.evaluation.conditional_loss import NO_URL, TRUE_URL, compare_conditions, language_model
from meco_callbacks.evaluation.trained_models import load_composer_checkpoint
from meco_callbacks.formats import DATASET_INFO_FILE

EOS = 1
KEPT_URL, DROPPED_URL = 'https://a.example/5', 'https://b.example/6'  # with A, B at seed 0, epoch 0, p = 0.5
A, B = [BOS_ID, *byte_ids('ab'), EOS], [BOS_ID, *byte_ids('xyz'), EOS]
PA, PB = [*byte_ids('URL: a.example'), NEWLINES_ID], [*byte_ids('URL: b.example'), NEWLINES_ID]
X = IGNORE_INDEX


def reserved_sample(urls=(KEPT_URL, DROPPED_URL), pieces=(A, B), rooms=(len(PA), len(PB)), continued=0, **extra):
    """One packed row of ``pieces`` with ``rooms``, as the packer writes it."""
    return {
        'input_ids': np.array([t for piece in pieces for t in piece]),
        'segment_lengths': np.array([len(p) for p in pieces]),
        'prefix_room': np.array(rooms),
        'continued': continued,
        'urls': list(urls),
        'metadata': [{} for _ in urls],
        **extra,
    }


def inject(bos_tokenizer, samples, length, **metadata):
    """The injected batch and the stored-token source of each slot, under the ``metadata`` block."""
    config = MetadataConfig(**metadata)
    collator = PackedCollator(bos_tokenizer, config, length, BOS_ID)
    injector = PrefixInjector(
        length, enabled=True, document_masking=True, pad_token_id=7, position=config.position, metadata_loss=config.loss
    )
    batch, sources = injector.inject(collator(samples))
    return {k: v[0].tolist() for k, v in batch.items()}, sources[0].tolist(), injector


LENGTH = len(A) + len(PA) + len(B) + len(PB) + 2


# Mixed conditioning (drop_probability).


def test_a_dropped_documents_room_becomes_padding_at_the_row_end_and_no_token_is_lost(bos_tokenizer):
    batch, _, injector = inject(bos_tokenizer, [reserved_sample()], LENGTH, drop_probability=0.5)

    assert batch['input_ids'] == [BOS_ID, *PA, *A[1:], *B, *[7] * (len(PB) + 2)]
    assert batch['labels'] == [X, *[X] * len(PA), *A[1:], X, *B[1:], *[X] * (len(PB) + 2)]
    assert batch['sequence_id'] == [0] * (len(A) + len(PA)) + [1] * len(B) + [2] * (len(PB) + 2)
    assert injector.stats.last['dropped_tokens'] == 0 and injector.stats.last['metadata_tokens'] == len(PA)


def test_the_drop_decision_is_a_pure_function_of_seed_epoch_url_and_the_documents_tokens():
    rng = np.random.default_rng(0)
    documents = [(f'https://site{i % 7}.example/{i}', rng.integers(0, 4096, 30)) for i in range(4000)]
    epoch0 = [metadata_dropped(0, 0, u, t, 0.1) for u, t in documents]

    assert epoch0 == [metadata_dropped(0, 0, u, t.astype(np.uint32), 0.1) for u, t in documents]  # any dtype, rank
    assert 0.08 < np.mean(epoch0) < 0.12
    assert epoch0 != [metadata_dropped(0, 1, u, t, 0.1) for u, t in documents]
    assert epoch0 != [metadata_dropped(1, 0, u, t, 0.1) for u, t in documents]
    assert not any(metadata_dropped(0, 0, u, t, 0.0) for u, t in documents)
    one_url = [metadata_dropped(0, 0, 'https://a.example/', t, 0.5) for _, t in documents[:400]]
    assert 0.4 < np.mean(one_url) < 0.6  # documents of one site (even one URL) decide independently


def test_each_piece_of_a_document_cut_across_rows_decides_on_its_own_tokens(bos_tokenizer):
    """Rows carry no document index: a continued piece is keyed on its own tokens (documented, not shared)."""
    url = 'https://a.example/1'
    head = reserved_sample(urls=(url,), pieces=([BOS_ID, *byte_ids('ab')],), rooms=(len(PA),))
    tail = reserved_sample(urls=(url,), pieces=([*byte_ids('cd'), EOS],), rooms=(len(PA),), continued=1)
    length = len(PA) + 3
    for epoch in range(4):
        rows = [inject(bos_tokenizer, [{**s, 'epoch': epoch}], length, drop_probability=0.5)[0] for s in (head, tail)]
        kept = [rows[0]['input_ids'][1 : 1 + len(PA)] == PA, rows[1]['input_ids'][: len(PA)] == PA]

        assert kept == [not metadata_dropped(0, epoch, url, s['input_ids'], 0.5) for s in (head, tail)]


SITES, PER_SITE = 6, 200


def six_site_documents():
    """6 sites x 200 short documents, each with its own URL and words."""
    rng = np.random.default_rng(5)
    words = ['alpha', 'bravo', 'delta', 'gamma', 'kilo', 'lima', 'oscar', 'papa', 'sierra', 'tango', 'zulu']
    return [
        {
            'text': ' '.join(words[k] for k in rng.integers(0, len(words), int(rng.integers(4, 20)))),
            'url': f'https://site{i % SITES}.example/page/{i}',
        }
        for i in range(SITES * PER_SITE)
    ]


def dropped_documents(batches):
    """{URL: dropped} for every document start (a segment that is not a continuation) in ``batches``."""
    return {
        urls[s]: len(seg.prefix) == 0
        for batch in batches
        for segments, urls in zip(batch.segments, batch.urls)
        for s, seg in enumerate(segments)
        if seg.new_document
    }


def test_dropout_is_per_document_every_site_loses_about_p_and_a_resumed_run_drops_the_same(tmp_path, tokenizer):
    documents = write_documents_mds(tmp_path / 'documents', six_site_documents(), tokenizer)
    pack_documents(documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['domain'])
    clean_stale_shared_memory()
    loader = build_meco_loader(tokenizer, 4, loader_dataset(tmp_path / 'packed'), num_workers=0)
    epoch = list(loader)
    dropped = dropped_documents(epoch)
    state = loader.dataset.state_dict(4 * 10, False)  # stopped after 10 batches of epoch 0
    del loader
    clean_stale_shared_memory()
    resumed = build_meco_loader(tokenizer, 4, loader_dataset(tmp_path / 'packed'), num_workers=0)
    resumed.dataset.load_state_dict(state)
    rest = list(resumed)
    del resumed
    clean_stale_shared_memory()

    assert len(dropped) == SITES * PER_SITE
    for site in range(SITES):
        of_site = [d for url, d in dropped.items() if url.startswith(f'https://site{site}.example/')]
        assert len(of_site) == PER_SITE
        assert 0.35 <= np.mean(of_site) <= 0.65, (site, np.mean(of_site))
    assert [prefixes(b) for b in epoch[10:]] == [prefixes(b) for b in rest]
    assert dropped_documents(rest) == {url: d for url, d in dropped.items() if url in dropped_documents(epoch[10:])}


def test_the_loader_makes_the_same_choices_with_any_number_of_workers_and_new_ones_each_epoch(reserved_set, tokenizer):
    one_worker = prefixed_documents(reserved_set, tokenizer, num_workers=0)
    two_workers = prefixed_documents(reserved_set, tokenizer, num_workers=2)

    assert one_worker == two_workers
    assert one_worker[0] != one_worker[1]
    assert 0.3 < np.mean(list(one_worker[0].values())) < 0.7


def test_a_resumed_epoch_makes_the_choices_of_the_uninterrupted_one(reserved_set, tokenizer):
    clean_stale_shared_memory()
    loader = build_meco_loader(tokenizer, 2, loader_dataset(reserved_set), num_workers=0)
    list(loader)
    second = list(loader)
    state = loader.dataset.state_dict(4, False)  # stopped after 2 batches of epoch 1
    del loader
    clean_stale_shared_memory()
    resumed = build_meco_loader(tokenizer, 2, loader_dataset(reserved_set), num_workers=0)
    resumed.dataset.load_state_dict(state)

    assert state['epoch'] == 1
    assert [prefixes(b) for b in second[2:]] == [prefixes(b) for b in resumed]
    clean_stale_shared_memory()


def prefixes(batch):
    """Each row's segments as (start, prefix ids): what the drop decisions made of a batch."""
    return [[(seg.start, seg.prefix.tolist()) for seg in segments] for segments in batch.segments]


@pytest.fixture
def reserved_set(tmp_path, tokenizer):
    """Synthetic documents packed with room for domains, in rows of 64."""
    documents = write_documents_mds(tmp_path / 'documents', synthetic_documents(80, seed=3), tokenizer)
    pack_documents(documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['domain'])
    return tmp_path / 'packed'


def loader_dataset(packed, **metadata):
    return {
        'local': str(packed),
        'shuffle': False,
        'max_seq_len': 64,
        'metadata': {'drop_probability': 0.5, **metadata},
    }


def prefixed_documents(packed, tokenizer, num_workers):
    """For each of two epochs, {(row tokens, segment): whether it got its prefix}."""

    clean_stale_shared_memory()
    loader = build_meco_loader(tokenizer, 2, loader_dataset(packed), num_workers=num_workers)
    epochs = [
        {
            (row.tobytes(), s): len(seg.prefix) > 0
            for batch in loader
            for row, segments in zip(batch.tokens, batch.segments)
            for s, seg in enumerate(segments)
        }
        for _ in range(2)
    ]
    del loader
    clean_stale_shared_memory()
    return epochs


# Metadata after the document (position: suffix), with or without its loss.


def test_a_suffix_follows_each_documents_eos_with_labels_only_under_loss(bos_tokenizer):
    sample = reserved_sample(urls=(KEPT_URL, 'https://b.example/4'))
    trained, _, injector = inject(bos_tokenizer, [sample], LENGTH, position='suffix', loss=True)
    untrained, sources, _ = inject(bos_tokenizer, [sample], LENGTH, position='suffix')

    assert trained['input_ids'] == untrained['input_ids'] == [*A, *PA, *B, *PB, 7, 7]
    assert trained['labels'] == [X, *A[1:], *PA, X, *B[1:], *PB, X, X]
    assert untrained['labels'] == [X, *A[1:], *[X] * len(PA), X, *B[1:], *[X] * len(PB), X, X]
    assert trained['sequence_id'] == [0] * (len(A) + len(PA)) + [1] * (len(B) + len(PB)) + [2, 2]
    assert trained['position_ids'] == [*range(len(A) + len(PA)), *range(len(B) + len(PB)), 0, 1]
    assert sources == [0, 1, 2, 3, *[-1] * len(PA), 4, 5, 6, 7, 8, *[-1] * len(PB), -1, -1]
    assert injector.stats.last['metadata_tokens'] == len(PA) + len(PB)


def test_a_suffix_goes_only_where_the_document_ends_not_after_a_piece_cut_at_the_row_end(bos_tokenizer):
    url = 'https://a.example/3'
    head = reserved_sample(urls=(url,), pieces=([BOS_ID, *byte_ids('ab')],), rooms=(len(PA),))
    tail = reserved_sample(urls=(url,), pieces=([*byte_ids('cd'), EOS],), rooms=(len(PA),), continued=1)
    length = len(PA) + 3
    (first, _, _), (second, _, _) = (
        inject(bos_tokenizer, [s], length, position='suffix', loss=True) for s in (head, tail)
    )

    assert first['input_ids'] == [BOS_ID, *byte_ids('ab'), *[7] * len(PA)]
    assert second['input_ids'] == [*byte_ids('cd'), EOS, *PA]
    assert second['labels'] == [*byte_ids('cd'), EOS, *PA]  # a continued piece: its first token is trained


def test_a_prefix_with_loss_trains_the_prefix_after_bos(bos_tokenizer):
    batch, _, _ = inject(bos_tokenizer, [reserved_sample(urls=(KEPT_URL, 'https://b.example/4'))], LENGTH, loss=True)

    assert batch['input_ids'] == [BOS_ID, *PA, *A[1:], BOS_ID, *PB, *B[1:], 7, 7]
    assert batch['labels'] == [X, *PA, *A[1:], X, *PB, *B[1:], X, X]


# Quality bins (bins:<column>).


def test_a_value_gets_its_one_based_bin_of_n_and_a_value_on_an_edge_goes_up():
    edges = (0.2, 0.5, 0.8)

    assert [bin_label(v, edges) for v in (-1.0, 0.2, 0.49, 0.5, 0.9)] == ['1/4', '2/4', '2/4', '3/4', '4/4']
    assert quantile_edges([float(v) for v in range(1, 101)], 4) == (25.75, 50.5, 75.25)


def test_a_quality_prefix_is_the_documents_bin_in_the_template(bos_tokenizer):
    quality = [*byte_ids('Quality: 3/3'), NEWLINES_ID]
    sample = reserved_sample(urls=(KEPT_URL,), pieces=(A,), rooms=(len(quality),), metadata=[{'score': '0.75'}])
    batch, _, _ = inject(
        bos_tokenizer, [sample], len(A) + len(quality), kind='bins:score', bins=[0.2, 0.5], template='Quality: {}\n\n'
    )

    assert batch['input_ids'] == [BOS_ID, *quality, *A[1:]]


@pytest.mark.parametrize('value', [None, '', 'high', 'nan', 'inf'])
def test_a_missing_or_non_numeric_quality_value_is_an_error_naming_the_document(value):
    config = MetadataConfig(kind='bins:score', bins=[0.5])
    columns = {} if value is None else {'score': value}

    with pytest.raises(ValueError, match=r"document 'https://a.example/5' has no finite number in metadata column"):
        config.metadata_for(KEPT_URL, columns)


def scored_documents(n):
    return [
        {'text': f'page {i} about rivers and music.', 'url': f'https://s{i % 3}.example/{i}', 'score': str(i / n)}
        for i in range(n)
    ]


def test_packing_records_quantile_edges_and_rooms_that_fit_each_bin_label(tmp_path, tokenizer):
    documents = write_documents_mds(tmp_path / 'docs', scored_documents(40), tokenizer, extra_columns=('score',))
    pack_documents(
        documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['bins:score'], bins='quantiles:4'
    )
    record = json.loads((tmp_path / 'packed' / DATASET_INFO_FILE).read_text())['reserve_prefix']
    config = MetadataConfig(kind='bins:score', bins=record['bins']['score']['edges'])
    prefixes = PrefixTokens(tokenizer, config)
    clean_stale_shared_memory()
    dataset = MeCoPackedDataset(max_seq_len=64, local=str(tmp_path / 'packed'), shuffle=False, batch_size=1)
    rooms = [
        (int(room), len(prefixes.for_document(url, columns)))
        for i in range(len(dataset))
        for room, url, columns in zip(dataset[i]['prefix_room'], dataset[i]['urls'], dataset[i]['metadata'])
    ]

    assert record['bins'] == {'score': {'edges': pytest.approx([0.24375, 0.4875, 0.73125]), 'quantiles': 4}}
    assert all(room == needed for room, needed in rooms) and len(rooms) >= 40
    clean_stale_shared_memory()


@pytest.mark.slow
def test_the_loss_tool_scores_a_quality_condition_with_the_edges_the_set_recorded(tmp_path, trained_model):
    model, tokenizer = trained_model
    documents = write_documents_mds(tmp_path / 'docs', scored_documents(40), tokenizer, extra_columns=('score',))
    pack_documents(
        documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['bins:score'], bins='quantiles:4'
    )
    quality = {'kind': 'bins:score', 'quantiles': 4}

    results = compare_conditions(model, tokenizer, tmp_path / 'packed', {'quality': quality, 'no_url': NO_URL})

    assert results['quality']['tokens'] == results['no_url']['tokens'] > 0
    assert results['quality']['loss'] != results['no_url']['loss']


def test_the_loader_reads_the_recorded_edges_for_quantiles_and_refuses_another_n(tmp_path, tokenizer):
    documents = write_documents_mds(tmp_path / 'docs', scored_documents(40), tokenizer, extra_columns=('score',))
    pack_documents(
        documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['bins:score'], bins='quantiles:4'
    )
    dataset = {
        'local': str(tmp_path / 'packed'),
        'shuffle': False,
        'max_seq_len': 64,
        'metadata': {'kind': 'bins:score', 'quantiles': 4, 'template': 'Quality: {}\n\n'},
    }
    clean_stale_shared_memory()
    with pytest.raises(ValueError, match='packed with prefix room for kind\\(s\\) bins:score'):
        build_meco_loader(tokenizer, 2, dataset, num_workers=0)  # the set was packed with the default template
    pack_documents(
        documents,
        tmp_path / 'quality',
        64,
        progress=False,
        reserve_prefix=['bins:score'],
        bins='quantiles:4',
        template='Quality: {}\n\n',
    )
    dataset['local'] = str(tmp_path / 'quality')
    loader = build_meco_loader(tokenizer, 2, dataset, num_workers=0)
    batch = loader.injector(next(iter(loader)))

    assert loader.collate_fn.metadata.bins == pytest.approx(quantile_edges([i / 40 for i in range(40)], 4))
    assert tokenizer.decode(batch['input_ids'][0]).startswith('Quality: 1/4\n\npage 0 about')
    del loader
    clean_stale_shared_memory()
    with pytest.raises(ValueError, match=r'training asks for edges None and quantiles 5'):
        build_meco_loader(tokenizer, 2, {**dataset, 'metadata': {**dataset['metadata'], 'quantiles': 5}})
    clean_stale_shared_memory()


def test_packing_a_document_without_a_numeric_quality_is_an_error_naming_it(tmp_path, tokenizer):
    docs = scored_documents(10)
    docs[4]['score'] = 'n/a'
    documents = write_documents_mds(tmp_path / 'docs', docs, tokenizer, extra_columns=('score',))

    with pytest.raises(ValueError, match="document 'https://s1.example/4' has no finite number .* \\(got 'n/a'\\)"):
        pack_documents(
            documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['bins:score'], bins='quantiles:4'
        )
    with pytest.raises(ValueError, match='--reserve-prefix bins:score needs the bin edges'):
        pack_documents(documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['bins:score'])


# Validation.


@pytest.mark.parametrize(
    ('block', 'message'),
    [
        ({'drop_probability': 1.0}, r'metadata.drop_probability must be a number in \[0, 1\)'),
        ({'drop_probability': -0.1}, r'metadata.drop_probability must be a number in \[0, 1\)'),
        ({'drop_probability': 'often'}, r'metadata.drop_probability must be a number in \[0, 1\)'),
        ({'position': 'middle'}, 'metadata.position must be one of prefix, suffix'),
        ({'loss': 'yes'}, 'metadata.loss must be true or false'),
        ({'kind': 'bins:score'}, 'needs metadata.bins .* or metadata.quantiles'),
        ({'kind': 'bins:'}, 'needs a name or text after the colon'),
        ({'kind': 'domain', 'bins': [0.5]}, 'apply to a bins:<column> kind'),
        ({'kind': 'bins:score', 'bins': [0.5, 0.2]}, 'metadata.bins must be a non-empty list of finite numbers'),
        ({'kind': 'bins:score', 'quantiles': 1}, 'metadata.quantiles must be a whole number of at least 2'),
        ({'kind': 'bins:score', 'quantiles': 3, 'bins': [0.5]}, 'metadata.bins has 1 edges, not the 2 of 3'),
    ],
)
def test_bad_variant_settings_are_clear_errors(block, message):
    with pytest.raises(ValueError, match=message):
        MetadataConfig.from_dict(block)


def test_the_default_block_is_todays_meco():
    config = MetadataConfig.from_dict({})

    assert (config.drop_probability, config.position, config.loss, config.bins) == (0.0, 'prefix', False, None)


# Evidence on the two-source corpus (conftest): a tiny model, the budget of conftest's MeCo run (120 steps).

DROP_PROBABILITY = 0.1  # the paper's 90/10 mix


@pytest.fixture(scope='module')
def two_source_held_out(tmp_path_factory, tokenizer):
    """A held-out packed split of the two-source corpus (another seed than training)."""
    return write_two_source_packed(tmp_path_factory.mktemp('variants_held_out'), tokenizer, 120, seed=99)


def train_two_source(run_dir, data, tokenizer_dir, *overrides):
    """Train as conftest's MeCo run does (the paper's form), plus ``overrides``; returns the checkpoint."""
    train_tiny(
        run_dir,
        data,
        tokenizer_dir,
        f'max_duration={TWO_SOURCE_STEPS}ba',
        'optimizer.weight_decay=0.0001',
        *PAPER_FORM,
        *overrides,
    )
    return run_dir / 'checkpoints' / 'latest-rank0.pt'


def url_losses(checkpoint, tokenizer_dir, held_out):
    """(loss without a URL, loss with the true URL) of a two-source model on the held-out split."""
    model, tokenizer = load_composer_checkpoint(TINY_YAML, checkpoint, trained_model_overrides(tokenizer_dir))
    results = compare_conditions(model, tokenizer, held_out, {'no_url': NO_URL, 'true_url': TRUE_URL})
    return results['no_url']['loss'], results['true_url']['loss']


@pytest.mark.slow
def test_mixed_conditioning_brings_the_loss_without_a_url_closer_to_the_loss_with_it(
    trained_checkpoint, tokenizer_dir, tokenizer, two_source_held_out, tmp_path
):
    data = write_two_source_packed(tmp_path / 'packed', tokenizer, 1200, seed=1)  # the MeCo run's data
    mixed_run = train_two_source(
        tmp_path, data, tokenizer_dir, f'train_loader.dataset.metadata.drop_probability={DROP_PROBABILITY}'
    )
    meco = url_losses(trained_checkpoint, tokenizer_dir, two_source_held_out)
    mixed = url_losses(mixed_run, tokenizer_dir, two_source_held_out)

    # Measured (no URL, URL): MeCo (1.095, 0.228), gap 0.867; mixed at p = 0.1 (0.380, 0.227), gap 0.152.
    assert mixed[0] - mixed[1] < meco[0] - meco[1] - 0.3
    assert mixed[1] < meco[1] + 0.05  # the loss with the URL is kept


@pytest.mark.slow
def test_a_model_trained_with_a_suffix_loss_names_a_documents_source_after_it(tokenizer_dir, tokenizer, tmp_path):
    """The source whose suffix ``URL: <source>\\n\\n`` has the lower loss after a held-out document is its own."""

    documents = write_documents_mds(tmp_path / 'documents', two_source_documents(1200, seed=1), tokenizer)
    pack_documents(documents, tmp_path / 'packed', TWO_SOURCE_SEQ_LEN, progress=False, reserve_prefix=['domain'])
    run = train_two_source(
        tmp_path,
        tmp_path / 'packed',
        tokenizer_dir,
        'train_loader.dataset.metadata.position=suffix',
        'train_loader.dataset.metadata.loss=true',
    )
    model, _ = load_composer_checkpoint(TINY_YAML, run, trained_model_overrides(tokenizer_dir))
    lm = language_model(model)
    suffixes = {source: ids_of(tokenizer, f'URL: {source}\n\n') for source in (ALPHA, BETA)}
    correct = []
    for doc in two_source_documents(100, seed=99):
        document = [*ids_of(tokenizer, doc['text']), tokenizer.eos_token_id]
        losses = {source: suffix_loss(lm, document, suffix) for source, suffix in suffixes.items()}
        correct.append(min(losses, key=losses.get) in doc['url'])

    assert np.mean(correct) >= 0.9  # chance is 0.5; measured 1.0 over these 100 held-out documents


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)['input_ids']


def suffix_loss(lm, document, suffix):
    """Summed loss of ``suffix`` right after ``document`` under one forward pass of ``lm``."""
    ids = document + suffix
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([ids])).logits[0].float()
    start = len(document)
    return float(F.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:]), reduction='sum'))


def test_meco_pack_takes_the_bins_and_reports_a_bad_spec_with_exit_code_2(tmp_path, tokenizer, capsys):
    from meco_callbacks.cli.pack import main

    documents = write_documents_mds(tmp_path / 'docs', scored_documents(40), tokenizer, extra_columns=('score',))
    args = [str(documents), str(tmp_path / 'packed'), '--max-seq-len', '64', '--reserve-prefix', 'bins:score']

    assert main([*args, '--bins', '0.25,0.5,0.75', '--no-progress']) == 0
    assert json.loads((tmp_path / 'packed' / DATASET_INFO_FILE).read_text())['reserve_prefix']['bins'] == {
        'score': {'edges': [0.25, 0.5, 0.75], 'quantiles': None}
    }
    assert main([*args, '--bins', 'quantiles:1', '--overwrite', '--no-progress']) == 2
    assert "--bins 'quantiles:1': quantiles:N needs a whole number N of at least 2" in capsys.readouterr().err


@pytest.mark.slow
def test_the_tiny_recipe_trains_on_quality_bins_read_from_the_packed_set(tmp_path, tokenizer, tokenizer_dir):
    documents = write_documents_mds(tmp_path / 'docs', scored_documents(200), tokenizer, extra_columns=('score',))
    pack_documents(
        documents, tmp_path / 'packed', 64, progress=False, reserve_prefix=['bins:score'], bins='quantiles:4'
    )
    records = train_tiny(
        tmp_path,
        tmp_path / 'packed',
        tokenizer_dir,
        'max_duration=10ba',
        'train_loader.dataset.metadata.kind=bins:score',
        'train_loader.dataset.metadata.quantiles=4',
        r'train_loader.dataset.metadata.template="URL: {}\n\n"',  # the packer's default template
    )

    assert len(records) == 10
    assert re.match(r'URL: [1-4]/4\n\npage \d+ about', tokenizer.decode(records[0]['first_row']))
