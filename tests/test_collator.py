"""The collator as a specification: exact tokens, labels, document ids and positions of collated rows."""

import numpy as np
import pytest
import torch

from meco_callbacks.data.collator import IGNORE_INDEX, PackedCollator, PrefixInjector
from meco_callbacks.data.metadata import MetadataConfig

DOC_A = {
    'text': 'the model reads a page about rivers and mountains, then cities and music. ' * 4,
    'url': 'https://a.example/x',
}
DOC_B = {
    'text': 'music code python data training loss token batch window prefix source domain wiki news. ' * 4,
    'url': 'http://B.Example:8080/y',
}


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)['input_ids']


def two_document_row(tokenizer):
    """One packed row holding exactly DOC_A + EOS + DOC_B + EOS."""
    a = ids(tokenizer, DOC_A['text']) + [tokenizer.eos_token_id]
    b = ids(tokenizer, DOC_B['text']) + [tokenizer.eos_token_id]
    sample = {
        'input_ids': np.array(a + b),
        'segment_lengths': np.array([len(a), len(b)]),
        'continued': 0,
        'urls': [DOC_A['url'], DOC_B['url']],
        'metadata': [{}, {}],
    }
    return sample, a, b


def collate(tokenizer, samples, enabled=True, masking=True, **metadata):
    length = len(samples[0]['input_ids'])
    collator = PackedCollator(tokenizer, MetadataConfig(**metadata), length, None)
    injector = PrefixInjector(length, enabled=enabled, document_masking=masking)
    return injector(collator(samples)), injector


def test_collated_row_decodes_to_prefixed_documents_cut_to_max_seq_len(tokenizer):
    sample, a, b = two_document_row(tokenizer)
    batch, _ = collate(tokenizer, [sample])
    pa, pb = ids(tokenizer, 'URL: a.example\n\n'), ids(tokenizer, 'URL: b.example\n\n')
    expected = (pa + a + pb + b)[: len(a) + len(b)]
    assert batch['input_ids'][0].tolist() == expected
    assert tokenizer.decode(batch['input_ids'][0]).startswith(
        'URL: a.example\n\n' + DOC_A['text'] + '<|endoftext|>URL: b.example\n\nmusic'
    )


def test_disabled_prefixes_give_the_plain_documents(tokenizer):
    sample, a, b = two_document_row(tokenizer)
    batch, injector = collate(tokenizer, [sample], enabled=False)
    assert batch['input_ids'][0].tolist() == a + b
    assert injector.stats.last['metadata_tokens'] == 0 and injector.stats.last['dropped_tokens'] == 0


def test_labels_are_ignored_exactly_on_prefixes_and_document_starts(tokenizer):
    sample, a, b = two_document_row(tokenizer)
    batch, _ = collate(tokenizer, [sample])
    pa, pb = len(ids(tokenizer, 'URL: a.example\n\n')), len(ids(tokenizer, 'URL: b.example\n\n'))
    ignored = [i for i, v in enumerate(batch['labels'][0].tolist()) if v == IGNORE_INDEX]
    assert ignored == list(range(pa)) + list(range(pa + len(a), pa + len(a) + pb))
    plain, _ = collate(tokenizer, [sample], enabled=False)
    assert [i for i, v in enumerate(plain['labels'][0].tolist()) if v == IGNORE_INDEX] == [0, len(a)]


def test_without_document_start_targets_meco_trains_exactly_the_baselines_targets(tokenizer):
    sample, a, b = two_document_row(tokenizer)
    length = len(a) + len(b) + 30  # room for both prefixes: nothing cut
    sample['prefix_room'] = np.array([15, 15])
    collator = PackedCollator(tokenizer, MetadataConfig(), length, None)
    injector = PrefixInjector(length, enabled=True, document_masking=True, document_start_target=False)
    batch = injector(collator([sample]))
    pa, pb = len(ids(tokenizer, 'URL: a.example\n\n')), len(ids(tokenizer, 'URL: b.example\n\n'))
    trained = [v for v in batch['labels'][0].tolist() if v != IGNORE_INDEX]
    assert trained == a[1:] + b[1:]
    ignored = [i for i, v in enumerate(batch['labels'][0].tolist()) if v == IGNORE_INDEX]
    assert ignored[: pa + 1 + pb + 1] == list(range(pa + 1)) + list(range(pa + len(a), pa + len(a) + pb + 1))


def test_sequence_ids_and_positions_restart_exactly_at_segment_starts(tokenizer):
    sample, a, b = two_document_row(tokenizer)
    batch, _ = collate(tokenizer, [sample])
    first = len(ids(tokenizer, 'URL: a.example\n\n')) + len(a)
    length = len(a) + len(b)
    assert batch['sequence_id'][0].tolist() == [0] * first + [1] * (length - first)
    assert batch['position_ids'][0].tolist() == list(range(first)) + list(range(length - first))


def test_without_document_masking_no_sequence_ids_are_emitted(tokenizer):
    sample, _, _ = two_document_row(tokenizer)
    batch, _ = collate(tokenizer, [sample], masking=False)
    assert set(batch) == {'input_ids', 'labels', 'attention_mask'}


def test_every_metadata_token_pushes_one_document_token_off_the_row(tokenizer):
    sample, _, _ = two_document_row(tokenizer)
    batch, injector = collate(tokenizer, [sample, sample])
    per_row = len(ids(tokenizer, 'URL: a.example\n\n')) + len(ids(tokenizer, 'URL: b.example\n\n'))
    assert injector.stats.last['metadata_tokens'] == 2 * per_row
    assert injector.stats.last['dropped_tokens'] == 2 * per_row
    assert batch['input_ids'].shape == (2, len(sample['input_ids']))


def test_a_continued_document_gets_its_prefix_again_and_keeps_its_first_label(tokenizer):
    a = ids(tokenizer, DOC_A['text']) + [tokenizer.eos_token_id]
    sample = {
        'input_ids': np.array(a[3:] + a[:3]),
        'segment_lengths': np.array([len(a) - 3, 3]),
        'continued': 1,
        'urls': [DOC_A['url'], DOC_B['url']],
        'metadata': [{}, {}],
    }
    batch, _ = collate(tokenizer, [sample])
    pa = ids(tokenizer, 'URL: a.example\n\n')
    assert batch['input_ids'][0].tolist()[: len(pa) + 2] == pa + a[3:5]
    labels = batch['labels'][0].tolist()
    assert labels[: len(pa)] == [IGNORE_INDEX] * len(pa) and labels[len(pa)] == a[3]


def test_the_metadata_kind_decides_the_prefix(tokenizer):
    sample, a, _ = two_document_row(tokenizer)
    sample['metadata'] = [{'topic': 'rivers'}, {'topic': 'music'}]
    batch, _ = collate(tokenizer, [sample], kind='column:topic', template='Topic: {}\n')
    assert tokenizer.decode(batch['input_ids'][0]).startswith('Topic: rivers\nthe model reads')


def test_special_token_text_in_a_url_stays_text(tokenizer):
    sample, _, _ = two_document_row(tokenizer)
    sample['urls'] = ['https://x.example/<|endoftext|>', DOC_B['url']]
    batch, _ = collate(tokenizer, [sample], kind='url')
    first_segment = batch['input_ids'][0][batch['sequence_id'][0] == 0].tolist()
    assert first_segment.count(tokenizer.eos_token_id) == 1  # only the document's own EOS


def test_a_bos_stays_first_with_the_prefix_after_it(tokenizer):
    bos = tokenizer.eos_token_id  # this tokenizer's BOS and EOS are the same token
    doc = [bos] + ids(tokenizer, DOC_A['text']) + [tokenizer.eos_token_id]
    sample = {
        'input_ids': np.array(doc),
        'segment_lengths': np.array([len(doc)]),
        'continued': 0,
        'urls': [DOC_A['url']],
        'metadata': [{}],
    }
    collator = PackedCollator(tokenizer, MetadataConfig(), len(doc), tokenizer.bos_token_id)
    batch = PrefixInjector(len(doc), enabled=True, document_masking=True)(collator([sample]))
    pa = ids(tokenizer, 'URL: a.example\n\n')
    assert batch['input_ids'][0].tolist()[: len(pa) + 2] == [bos] + pa + doc[1:2]
    assert batch['labels'][0].tolist()[: len(pa) + 2] == [IGNORE_INDEX] * (len(pa) + 1) + doc[1:2]


def test_rows_of_the_wrong_length_are_a_clear_error(tokenizer):
    sample, _, _ = two_document_row(tokenizer)
    collator = PackedCollator(tokenizer, MetadataConfig(), len(sample['input_ids']) + 1, None)
    with pytest.raises(ValueError, match='pack the dataset with convert/pack.py'):
        collator([sample])


def reserved_row(tokenizer, extra: int = 3):
    """DOC_A + EOS + DOC_B + EOS with the room of each domain prefix, in a row ``extra`` slots longer than needed."""
    sample, a, b = two_document_row(tokenizer)
    pa, pb = ids(tokenizer, 'URL: a.example\n\n'), ids(tokenizer, 'URL: b.example\n\n')
    sample['prefix_room'] = np.array([len(pa), len(pb)])
    return sample, a, b, pa, pb, len(pa) + len(a) + len(pb) + len(b) + extra


def test_a_reserved_row_fills_each_room_with_its_prefix_and_pads_the_rest(tokenizer):
    sample, a, b, pa, pb, length = reserved_row(tokenizer)
    collator = PackedCollator(tokenizer, MetadataConfig(), length, None)
    injector = PrefixInjector(length, enabled=True, document_masking=True, pad_token_id=7)
    batch, sources = injector.inject(collator([sample]))
    used = len(pa) + len(a) + len(pb) + len(b)
    assert batch['input_ids'][0].tolist() == pa + a + pb + b + [7, 7, 7]
    assert batch['attention_mask'][0].tolist() == [True] * used + [False] * 3
    assert batch['sequence_id'][0].tolist() == [0] * (len(pa) + len(a)) + [1] * (len(pb) + len(b)) + [2] * 3
    assert batch['position_ids'][0].tolist()[-3:] == [0, 1, 2]
    assert batch['labels'][0].tolist()[-3:] == [IGNORE_INDEX] * 3
    assert sources[0].tolist() == (
        [-1] * len(pa) + list(range(len(a))) + [-1] * len(pb) + list(range(len(a), len(a) + len(b))) + [-1] * 3
    )
    assert injector.stats.last == {
        'tokens': length,
        'metadata_tokens': len(pa) + len(pb),
        'dropped_tokens': 0,
        'document_tokens': len(a) + len(b),
        'padding_tokens': 3,
    }


def test_the_baseline_reads_a_reserved_row_with_its_room_as_padding_at_the_end(tokenizer):
    sample, a, b, pa, pb, length = reserved_row(tokenizer)
    collator = PackedCollator(tokenizer, MetadataConfig(kind='none'), length, None)
    injector = PrefixInjector(length, enabled=False, document_masking=True, pad_token_id=7)
    batch = injector(collator([sample]))
    padding = length - len(a) - len(b)
    assert batch['input_ids'][0].tolist() == a + b + [7] * padding
    assert batch['attention_mask'][0].tolist() == [True] * (len(a) + len(b)) + [False] * padding
    assert injector.stats.last['padding_tokens'] == padding == len(pa) + len(pb) + 3


def test_a_reserved_row_longer_than_max_seq_len_is_a_clear_error(tokenizer):
    sample, *_, length = reserved_row(tokenizer, extra=0)
    with pytest.raises(ValueError, match='needs .* slots but max_seq_len is'):
        PackedCollator(tokenizer, MetadataConfig(), length - 1, None)([sample])


def test_the_prefix_cache_is_bounded_and_evicts_the_least_recently_used(tokenizer):
    from meco_callbacks.data.prefix import PrefixTokens

    prefixes = PrefixTokens(tokenizer, MetadataConfig(), cache_size=2)
    first = prefixes('a.example').tolist()
    prefixes('b.example')
    prefixes('a.example')  # used again: b.example is now the oldest
    prefixes('c.example')
    assert list(prefixes._cache) == ['a.example', 'c.example']
    assert prefixes('a.example').tolist() == first == ids(tokenizer, 'URL: a.example\n\n')


def hand_batch():
    """Two segments with BOS (id 0): [0 11 12] behind a 3-token prefix, [0 13] behind a 1-token prefix."""
    from meco_callbacks.data.collator import PackedBatch, Segment

    row = np.array([0, 11, 12, 0, 13])
    segments = [
        Segment(start=0, length=3, room=3, prefix=np.array([21, 22, 23]), new_document=True, starts_with_bos=True),
        Segment(start=3, length=2, room=1, prefix=np.array([24]), new_document=True, starts_with_bos=True),
    ]
    return PackedBatch(tokens=[row], segments=[segments], urls=[['https://a.example/', 'https://b.example/']])


@pytest.mark.parametrize('metadata_loss', [False, True])
def test_summary_attention_marks_the_prefix_slots_of_each_segment(metadata_loss):
    injector = PrefixInjector(
        12, enabled=True, document_masking=True, metadata_loss=metadata_loss, summary_attention=True
    )
    batch = injector(hand_batch())

    assert batch['input_ids'][0].tolist() == [0, 21, 22, 23, 11, 12, 0, 24, 13, 0, 0, 0]
    assert batch['sequence_id'][0].tolist() == [0] * 6 + [1] * 3 + [2] * 3
    assert batch['prefix_mask'].dtype == torch.bool
    assert batch['prefix_mask'][0].tolist() == [0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]


def test_full_attention_and_disabled_prefixes_add_no_prefix_mask_and_change_nothing_else():
    full = PrefixInjector(12, enabled=True, document_masking=True)(hand_batch())
    summary = PrefixInjector(12, enabled=True, document_masking=True, summary_attention=True)(hand_batch())
    cooldown = PrefixInjector(12, enabled=False, document_masking=True, summary_attention=True)(hand_batch())

    assert 'prefix_mask' not in full and 'prefix_mask' not in cooldown
    assert set(summary) == {*full, 'prefix_mask'}
    assert all(torch.equal(full[key], summary[key]) for key in full)
    assert cooldown['input_ids'][0].tolist() == [0, 11, 12, 0, 13, *[0] * 7]


def test_summary_attention_with_a_suffix_is_refused():
    with pytest.raises(ValueError, match='summary attention applies to prefixes only'):
        PrefixInjector(12, enabled=True, document_masking=True, position='suffix', summary_attention=True)
