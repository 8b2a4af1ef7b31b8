"""Prefix room reserved at packing: every document token is trained, and MeCo and the baseline see the same ones."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_documents, write_documents_mds
from llmfoundry.data.dataloader import build_dataloader
from streaming.base.util import clean_stale_shared_memory

from meco_callbacks.corpus.packing.packing import pack_documents
from meco_callbacks.corpus.packing.row_planning import Placement, plan_rows
from meco_callbacks.data.collator import IGNORE_INDEX
from meco_callbacks.data.dataset import MeCoPackedDataset
from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import PrefixTokens
from meco_callbacks.formats import read_dataset_info

ROW = 128


def plan(lengths: list[int], rooms: list[int], max_seq_len: int, strategy: str) -> list[list[tuple[int, ...]]]:
    """``plan_rows`` as plain tuples ``(document, start, count, room)``."""
    rows = plan_rows(np.asarray(lengths), np.asarray(rooms), max_seq_len, strategy)
    return [[(p.document, p.start, p.count, p.room) for p in row] for row in rows]


def test_streaming_with_room_starts_a_new_row_rather_than_cutting_a_document_to_nothing():
    assert plan([5, 6, 4], [2, 2, 2], 8, 'stream') == [[(0, 0, 5, 2)], [(1, 0, 6, 2)], [(2, 0, 4, 2)]]


def test_a_document_longer_than_a_row_continues_with_its_room_again():
    assert plan([12], [2], 8, 'stream') == [[(0, 0, 6, 2)], [(0, 6, 6, 2)]]


def test_a_cut_never_leaves_a_lone_eos_to_the_continuation():
    assert plan([7], [2], 8, 'stream') == [[(0, 0, 5, 2)], [(0, 5, 2, 2)]]


def test_best_fit_decreasing_places_longest_first_into_the_fullest_row_that_fits():
    assert plan([3, 6, 2, 5], [1, 1, 1, 1], 8, 'bfd') == [
        [(1, 0, 6, 1)],
        [(3, 0, 5, 1)],
        [(0, 0, 3, 1), (2, 0, 2, 1)],
    ]


def test_best_fit_decreasing_cuts_only_documents_longer_than_a_row_and_their_rest_opens_a_row():
    assert plan([14, 3], [1, 1], 8, 'bfd') == [[(0, 0, 7, 1)], [(0, 7, 7, 1)], [(1, 0, 3, 1)]]
    assert plan([10, 3], [1, 1], 8, 'bfd') == [[(0, 0, 7, 1)], [(0, 7, 3, 1), (1, 0, 3, 1)]]


def test_a_prefix_that_leaves_no_room_for_a_document_is_refused():
    with pytest.raises(ValueError, match='leaves no room for a document token'):
        plan_rows(np.asarray([3]), np.asarray([7]), 8, 'stream')
    assert Placement(0, 0, 1, 6) == plan_rows(np.asarray([1]), np.asarray([6]), 8, 'stream')[0][0]


def short_documents(n: int, seed: int) -> list[dict[str, str]]:
    """Documents of about 35 tokens from four sites (the case where unreserved packing dropped ~40%)."""
    docs = synthetic_documents(n, seed)
    rng = random.Random(seed)
    for doc in docs:
        words = doc['text'].split()
        doc['text'] = ' '.join(words[: rng.randrange(20, 40)])
    return docs


@pytest.fixture(scope='module')
def short_docs(tmp_path_factory, tokenizer) -> tuple[Path, list[dict[str, str]]]:
    docs = short_documents(600, seed=3)
    return write_documents_mds(tmp_path_factory.mktemp('short-docs'), docs, tokenizer), docs


@pytest.fixture(scope='module')
def reserved(tmp_path_factory, short_docs, tokenizer) -> Path:
    out = tmp_path_factory.mktemp('reserved') / 'packed'
    pack_documents(short_docs[0], out, ROW, progress=False, reserve_prefix=['domain'], documents_per_task=256)
    return out


def meco_loader(packed: Path, tokenizer, metadata: dict, **dataset):
    clean_stale_shared_memory()
    config = {
        'name': 'meco',
        'drop_last': False,
        'num_workers': 0,
        'prefetch_factor': None,
        'persistent_workers': False,
        'dataset': {
            'local': str(packed),
            'shuffle': True,
            'shuffle_seed': 7,
            'max_seq_len': ROW,
            'metadata': metadata,
            **dataset,
        },
    }
    return build_dataloader(config, tokenizer, 4).dataloader


def stored_rows(packed: Path) -> list[dict]:
    clean_stale_shared_memory()
    dataset = MeCoPackedDataset(max_seq_len=ROW, local=str(packed), shuffle=False, batch_size=1)
    return [dataset[i] for i in range(dataset.num_samples)]


def test_one_pass_of_the_meco_loader_shows_every_document_token_once_after_its_own_prefix(
    reserved, short_docs, tokenizer
):
    loader = meco_loader(reserved, tokenizer, {'kind': 'domain'})
    prefixes = PrefixTokens(tokenizer, MetadataConfig(kind='domain'))
    pieces: dict[str, list[tuple[bool, list[int]]]] = {}  # per document: (is a continuation, tokens)
    for raw in loader:
        batch, sources = loader.injector.inject(raw)
        ids, seq = batch['input_ids'].numpy(), batch['sequence_id'].numpy()
        for r, segments in enumerate(raw.segments):
            for s, seg in enumerate(segments):
                url = raw.urls[r][s]
                slots = ids[r][seq[r] == s]
                prefix = prefixes.for_document(url)
                assert slots[: len(prefix)].tolist() == prefix.tolist()  # the segment's own prefix, then its tokens
                assert slots[len(prefix) :].tolist() == raw.tokens[r][seg.start : seg.start + seg.length].tolist()
                pieces.setdefault(url, []).append((not seg.new_document, slots[len(prefix) :].tolist()))
    eos = tokenizer.eos_token_id
    expected = {d['url']: tokenizer(d['text'], add_special_tokens=False)['input_ids'] + [eos] for d in short_docs[1]}
    assert max(len(p) for p in pieces.values()) == 2  # a short document continues at most once at rows of 128
    assert {url: [t for _, part in sorted(p) for t in part] for url, p in pieces.items()} == expected
    assert loader.injector.stats.dropped_tokens == 0


def test_the_baseline_reads_the_same_document_tokens_batch_by_batch_with_the_room_as_padding(reserved, tokenizer):
    meco = meco_loader(reserved, tokenizer, {'kind': 'domain'})
    baseline = meco_loader(reserved, tokenizer, {'kind': 'none'})
    for raw_meco, raw_base in zip(meco, baseline, strict=True):
        out_meco, src_meco = meco.injector.inject(raw_meco)
        out_base, src_base = baseline.injector.inject(raw_base)
        doc_meco = [row[src >= 0].tolist() for row, src in zip(out_meco['input_ids'].numpy(), src_meco)]
        doc_base = [row[src >= 0].tolist() for row, src in zip(out_base['input_ids'].numpy(), src_base)]
        assert doc_meco == doc_base
        used = out_base['attention_mask'].numpy()
        assert (out_base['labels'].numpy()[~used] == IGNORE_INDEX).all()  # padding carries no loss
        seq = out_base['sequence_id'].numpy()
        for r in range(len(seq)):  # the padding has a sequence id no real token has
            assert not set(seq[r][~used[r]]) & set(seq[r][used[r]])
    assert baseline.injector.stats.padding_tokens > meco.injector.stats.padding_tokens > 0


def test_the_room_is_recorded_and_every_segment_fits_its_row(reserved, tokenizer):
    info = read_dataset_info(reserved)
    assert info['reserve_prefix']['kinds'] == ['domain']
    assert info['reserve_prefix']['template'] == 'URL: {}\n\n'
    assert info['reserve_prefix']['tokenizer_fingerprint'] == info['tokenizer']['fingerprint']
    prefixes = PrefixTokens(tokenizer, MetadataConfig(kind='domain'))
    for row in stored_rows(reserved):
        rooms = row['prefix_room'].tolist()
        assert rooms == [len(prefixes.for_document(url)) for url in row['urls']]
        assert len(row['input_ids']) + sum(rooms) <= ROW
        assert min(row['segment_lengths']) >= 1


def test_a_set_reserved_for_domain_refuses_kind_url_naming_domain(reserved, tokenizer):
    with pytest.raises(ValueError, match="room for kind\\(s\\) domain .*training uses kind 'url'"):
        meco_loader(reserved, tokenizer, {'kind': 'url'})


def test_dropping_overflowing_prefix_tokens_is_an_explicit_choice(reserved, tokenizer):
    loader = meco_loader(reserved, tokenizer, {'kind': 'url'}, prefix_overflow='drop')
    for raw in loader:
        loader.injector(raw)
    assert loader.injector.stats.dropped_tokens > 0


def test_a_set_packed_without_room_still_loads_and_says_how_much_it_drops(short_docs, tokenizer, tmp_path, caplog):
    out = tmp_path / 'plain'
    pack_documents(short_docs[0], out, ROW, progress=False)
    with caplog.at_level(logging.WARNING, logger='meco_callbacks.data.dataset'):
        loader = meco_loader(out, tokenizer, {'kind': 'domain'})
    warnings = [r.getMessage() for r in caplog.records if 'packed without prefix room' in r.getMessage()]
    assert len(warnings) == 1 and '--reserve-prefix domain' in warnings[0]
    loader.injector(next(iter(loader)))
    assert loader.injector.stats.dropped_tokens == loader.injector.stats.metadata_tokens > 0


@pytest.mark.parametrize('strategy', ['stream', 'bfd'])
def test_packing_with_room_is_byte_identical_for_one_and_two_workers(short_docs, tmp_path, strategy):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f'{strategy}-{workers}'
        pack_documents(
            short_docs[0],
            out,
            ROW,
            progress=False,
            num_workers=workers,
            reserve_prefix=['domain'],
            strategy=strategy,
            documents_per_task=100,
        )
        outs.append(out)
    names = sorted(p.relative_to(outs[0]) for p in outs[0].rglob('*') if p.is_file() and p.name != 'meco_dataset.json')
    assert names == sorted(
        p.relative_to(outs[1]) for p in outs[1].rglob('*') if p.is_file() and p.name != 'meco_dataset.json'
    )
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_best_fit_decreasing_splits_no_document_that_fits_a_row(short_docs, tokenizer, tmp_path):
    out = tmp_path / 'bfd'
    stats = pack_documents(short_docs[0], out, ROW, progress=False, reserve_prefix=['domain'], strategy='bfd')
    assert stats['documents_split'] == stats['continued_segments'] == 0
    assert stats['tokens_dropped'] == 0
    rows = stored_rows(out)
    assert sum(len(row['urls']) for row in rows) == stats['documents_packed'] == len(short_docs[1])
    assert stats['padding_tokens'] == ROW * len(rows) - sum(len(r['input_ids']) + r['prefix_room'].sum() for r in rows)


def test_a_held_out_split_by_url_hash_puts_every_document_on_exactly_one_side(short_docs, tmp_path):
    stats = pack_documents(
        short_docs[0], tmp_path / 'split', ROW, progress=False, reserve_prefix=['domain'], holdout=0.2
    )
    sides = {name: {url for row in stored_rows(tmp_path / 'split' / name) for url in row['urls']} for name in stats}
    assert sides['train'] | sides['heldout'] == {d['url'] for d in short_docs[1]}
    assert not sides['train'] & sides['heldout']
    assert 0.1 < len(sides['heldout']) / len(short_docs[1]) < 0.3
    for name, other in (('train', 'heldout'), ('heldout', 'train')):
        assert stats[name]['documents_packed'] == len(sides[name])
        assert stats[name]['documents_in_other_split'] == len(sides[other])
        assert read_dataset_info(tmp_path / 'split' / name)['split'] == {
            'name': name,
            'holdout': 0.2,
            'by': 'sha256 of the URL',
        }
    again = pack_documents(
        short_docs[0], tmp_path / 'again', ROW, progress=False, reserve_prefix=['domain'], holdout=0.2
    )
    assert again == stats  # the split is a function of the URLs alone


def test_evaluating_fewer_batches_than_a_split_has_takes_rows_from_across_it(tmp_path, tokenizer):
    from meco_callbacks.evaluation.conditional_loss import _packed_rows

    by_site = sorted(short_documents(400, seed=5), key=lambda d: d['url'].split('/')[2])  # corpus order: site by site
    documents = write_documents_mds(tmp_path / 'docs', by_site, tokenizer)
    pack_documents(documents, tmp_path / 'packed', ROW, progress=False, reserve_prefix=['domain'])
    with _packed_rows(tokenizer, tmp_path / 'packed', ROW, 4, True, max_batches=1) as batches:
        (batch,) = list(batches)
    sites = {url.split('/')[2] for row in batch for url in row['urls']}
    assert sites == {'en.wikipedia.org', 'news.example.com', 'forum.example.org', 'docs.python.org'}


def test_a_set_whose_documents_start_with_bos_refuses_a_tokenizer_that_adds_none(reserved, tokenizer, tmp_path):
    import json
    import shutil

    copy = tmp_path / 'bos-record'
    shutil.copytree(reserved, copy)
    info = json.loads((copy / 'meco_dataset.json').read_text())
    info['tokenizer']['adds_bos'] = True  # as if packed by the same vocabulary with a BOS-adding post-processor
    (copy / 'meco_dataset.json').write_text(json.dumps(info))
    with pytest.raises(ValueError, match='documents starting with BOS, but the training tokenizer .* does not add one'):
        meco_loader(copy, tokenizer, {'kind': 'domain'})
