"""The bulk tokenization backends: tiktoken reproduces Hugging Face exactly or is not used, and text stays text."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import synthetic_documents

from meco_callbacks.corpus.documents.tiktoken_encoding import BackendError, tiktoken_encoding_for
from meco_callbacks.corpus.documents.tokenization import HARD_STRINGS, build_tokenizer_backend, hard_strings_for

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r'\s*[\r\n]+|\s+(?!\S)|\s+'
)
EOS = '<|endoftext|>'
PLAIN_TEXTS = [d['text'] for d in synthetic_documents(300)]
TRAINING_TEXTS = PLAIN_TEXTS + list(HARD_STRINGS) * 3


def _wrap(backend, out_dir: Path, **special):
    """Save a ``tokenizers`` object as a Hugging Face tokenizer directory and load it as llm-foundry would."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=int(1e30), **special).save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(str(out_dir))


def _byte_level_bpe(pre_tokenizer, out_dir: Path, ignore_merges: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        TRAINING_TEXTS,
        trainers.BpeTrainer(
            vocab_size=1200,
            special_tokens=[EOS, '<|begin_of_text|>'],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return _wrap(backend, out_dir, eos_token=EOS, bos_token='<|begin_of_text|>')


def _split_regex_bpe(pattern: str, out_dir: Path):
    """A byte-level BPE that pre-tokenizes with ``pattern`` the way Llama-3's tokenizer.json does."""
    from tokenizers import Regex, pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior='isolated', invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return _byte_level_bpe(pre, out_dir, ignore_merges=True)


@pytest.fixture(scope='module')
def gpt2_style(tmp_path_factory):
    """GPT-2's recipe: ByteLevel pre-tokenizer with its built-in regex, merges applied (no whole-word lookup)."""
    from tokenizers import pre_tokenizers

    return _byte_level_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False), tmp_path_factory.mktemp('gpt2'), ignore_merges=False
    )


@pytest.fixture(scope='module')
def llama3_style(tmp_path_factory):
    """Llama-3's recipe: the cl100k-style Split regex, then ByteLevel without regex, merges ignored for known words."""
    return _split_regex_bpe(LLAMA3_PATTERN, tmp_path_factory.mktemp('llama3'))


def _hf_ids(tokenizer, texts):
    """Reference ids straight from transformers, as documents must be encoded (no specials, special text split)."""
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)['input_ids']


@pytest.mark.parametrize('style', ['gpt2_style', 'llama3_style'])
def test_tiktoken_ids_equal_hugging_face_on_the_hard_strings(style, request):
    tokenizer = request.getfixturevalue(style)
    backend = build_tokenizer_backend(tokenizer, 'tiktoken')
    texts = hard_strings_for(tokenizer)
    assert backend.name == 'tiktoken'
    assert backend.encode_batch(texts) == _hf_ids(tokenizer, texts)


@pytest.mark.parametrize('style', ['gpt2_style', 'llama3_style'])
def test_tiktoken_ids_equal_hugging_face_on_a_corpus(style, request):
    tokenizer = request.getfixturevalue(style)
    texts = [d['text'] for d in synthetic_documents(200, seed=7)]
    assert build_tokenizer_backend(tokenizer, 'tiktoken').encode_batch(texts) == _hf_ids(tokenizer, texts)


def test_hf_backend_equals_transformers_with_split_special_tokens(tokenizer):
    texts = ['a page about rivers', f'forum{EOS}news {EOS}', '']
    assert build_tokenizer_backend(tokenizer, 'hf').encode_batch(texts) == _hf_ids(tokenizer, texts)


def test_auto_chooses_tiktoken_and_says_what_it_verified(tokenizer):
    backend = build_tokenizer_backend(tokenizer, 'auto', sample_texts=['the model reads', 'a page'])
    assert backend.name == 'tiktoken'
    assert f'{len(hard_strings_for(tokenizer))} hard strings and 2 sample texts (21 characters)' in backend.reason


@pytest.mark.parametrize('backend_name', ['hf', 'tiktoken'])
def test_literal_eos_text_in_a_document_yields_no_eos_id_and_decodes_back(tokenizer, backend_name):
    text = f'the model reads{EOS}a page <|endoftext|> about rivers'
    ids = build_tokenizer_backend(tokenizer, backend_name).encode_batch([text])[0]
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.convert_tokens_to_ids(EOS) not in ids
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize('backend_name', ['hf', 'tiktoken'])
def test_literal_bos_text_yields_no_bos_id_with_a_llama3_style_tokenizer(llama3_style, backend_name):
    text = '<|begin_of_text|>Hello<|begin_of_text|>'
    ids = build_tokenizer_backend(llama3_style, backend_name).encode_batch([text])[0]
    assert llama3_style.bos_token_id not in ids
    assert llama3_style.decode(ids) == text


def _wordpiece(out_dir: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.WordPiece(unk_token='[UNK]'))
    backend.normalizer = normalizers.BertNormalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        PLAIN_TEXTS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=['[UNK]', '[SEP]'], show_progress=False)
    )
    return _wrap(backend, out_dir, unk_token='[UNK]', eos_token='[SEP]')


def _unigram(out_dir: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(
        PLAIN_TEXTS,
        trainers.UnigramTrainer(
            vocab_size=200, special_tokens=['<unk>', '</s>'], unk_token='<unk>', show_progress=False
        ),
    )
    return _wrap(backend, out_dir, unk_token='<unk>', eos_token='</s>')


def _whitespace_bpe(out_dir: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token='<unk>'))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        PLAIN_TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=['<unk>', '</s>'], show_progress=False)
    )
    return _wrap(backend, out_dir, unk_token='<unk>', eos_token='</s>')


@pytest.mark.parametrize(
    'build, why',
    [
        (_wordpiece, 'its model is WordPiece, not BPE'),
        (_unigram, 'its model is Unigram, not BPE'),
        (_whitespace_bpe, "its pre-tokenizer ['Whitespace'] is not ByteLevel or Split(regex) + ByteLevel"),
    ],
    ids=['wordpiece', 'unigram', 'bpe-without-byte-level'],
)
def test_auto_falls_back_to_hf_and_says_why_for_tokenizers_tiktoken_cannot_express(build, why, tmp_path, caplog):
    tokenizer = build(tmp_path)
    backend = build_tokenizer_backend(tokenizer, 'auto', sample_texts=['a page about rivers'])
    assert backend.name == 'hf'
    assert backend.reason == f'tiktoken fell back to hf: {why}'
    assert why in caplog.text
    assert backend.encode_batch(['a page about rivers']) == _hf_ids(tokenizer, ['a page about rivers'])


def test_explicit_tiktoken_fails_with_the_reason(tmp_path):
    with pytest.raises(BackendError, match='tiktoken cannot stand in for this tokenizer: its model is WordPiece'):
        build_tokenizer_backend(_wordpiece(tmp_path), 'tiktoken')


def test_auto_falls_back_when_ids_differ_and_names_the_first_differing_hard_string(tmp_path):
    # tiktoken drops the text between regex matches; Hugging Face keeps it as its own piece.
    tokenizer = _split_regex_bpe(r'\p{L}+', tmp_path)
    backend = build_tokenizer_backend(tokenizer, 'auto')
    assert backend.name == 'hf'
    assert backend.reason.startswith(
        'tiktoken fell back to hf: ids differ from hf on hard string #1 '
        "'The quick brown fox jumps over the lazy dog.' at token 1:"
    )


def test_auto_checks_the_input_sample_and_names_the_differing_text(tmp_path):
    # Only a snowman falls between matches, and no hard string has one: the sample is what catches it.
    tokenizer = _split_regex_bpe(r'\p{L}+|\p{N}+|[^\p{L}\p{N}\u2603]', tmp_path)
    backend = build_tokenizer_backend(tokenizer, 'auto', sample_texts=['a page', 'rivers \u2603 mountains'])
    assert backend.name == 'hf'
    assert "ids differ from hf on sample text #1 'rivers \u2603 mountains'" in backend.reason


def test_non_special_added_tokens_are_not_expressible(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    extended = AutoTokenizer.from_pretrained(str(tmp_path))
    extended.add_tokens(['<tool_call>'])
    with pytest.raises(BackendError, match="1 non-special added tokens \\(e.g. '<tool_call>'\\)"):
        tiktoken_encoding_for(extended)


def merges_into_eos_tokenizer(out_dir: Path):
    """A byte-level BPE whose whitespace-only split lets training merge the literal EOS text into the EOS token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r'\S+|\s+'), behavior='isolated'),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        [f'a page {EOS} about rivers'] * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=[EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return _wrap(backend, out_dir, eos_token=EOS)


def test_merges_that_rebuild_a_special_token_are_not_expressible(tmp_path):
    tokenizer = merges_into_eos_tokenizer(tmp_path)
    assert tokenizer(EOS, add_special_tokens=False, split_special_tokens=True)['input_ids'] == [tokenizer.eos_token_id]
    with pytest.raises(BackendError, match="makes the added token '<\\|endoftext\\|>', so its text can become its id"):
        tiktoken_encoding_for(tokenizer)


def test_unknown_backend_name_is_refused(tokenizer):
    with pytest.raises(BackendError, match="unknown tokenizer backend 'fast'; choose one of auto, hf, tiktoken"):
        build_tokenizer_backend(tokenizer, 'fast')


def test_verification_leaves_the_callers_tokenizer_reading_special_text_as_before(gpt2_style):
    before = gpt2_style(EOS, add_special_tokens=False)['input_ids']
    assert before == [gpt2_style.eos_token_id]
    assert build_tokenizer_backend(gpt2_style, 'auto').name == 'tiktoken'
    assert gpt2_style(EOS, add_special_tokens=False)['input_ids'] == before


def _edited(tokenizer, out_dir: Path, edit):
    """A copy of ``tokenizer`` whose tokenizer.json was changed by ``edit(spec)``."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    edit(spec)
    return _wrap(Tokenizer.from_str(json.dumps(spec)), out_dir, eos_token=EOS)


def json_model(tokenizer) -> dict:
    """The ``model`` section of the tokenizer's tokenizer.json."""
    import json

    return json.loads(tokenizer.backend_tokenizer.to_str())['model']


def test_merges_out_of_id_order_are_not_expressible(gpt2_style, tmp_path):
    model = json_model(gpt2_style)
    made = [''.join(merge.split(' ') if isinstance(merge, str) else merge) for merge in model['merges']]
    second_last, last = model['vocab'][made[-2]], model['vocab'][made[-1]]
    assert second_last < last

    def swap_the_last_two_merged_ids(spec):
        vocab = spec['model']['vocab']
        vocab[made[-2]], vocab[made[-1]] = last, second_last

    with pytest.raises(
        BackendError,
        match=f'merge #{len(made) - 1} makes token id {second_last} after id {last}: '
        'the merge order differs from the id order',
    ):
        tiktoken_encoding_for(_edited(gpt2_style, tmp_path, swap_the_last_two_merged_ids))


def test_a_vocabulary_token_outside_the_byte_level_alphabet_is_not_expressible(gpt2_style, tmp_path):
    def add_a_raw_space_token(spec):
        spec['model']['vocab']['a b'] = len(spec['model']['vocab']) + len(spec['added_tokens'])

    with pytest.raises(BackendError, match="vocabulary token 'a b' is not in the byte-level alphabet"):
        tiktoken_encoding_for(_edited(gpt2_style, tmp_path, add_a_raw_space_token))


def _xyz_tokenizer(out_dir: Path, ignore_merges: bool):
    """Bytes as ids 0-255, then merges y+z (256), x+y (257), xy+z (258): the merges alone turn "xyz" into x, yz."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    chars = bytes_to_unicode()
    vocab = {chars[byte]: byte for byte in range(256)} | {'yz': 256, 'xy': 257, 'xyz': 258}
    backend = Tokenizer(models.BPE(vocab, [('y', 'z'), ('x', 'y'), ('xy', 'z')], ignore_merges=ignore_merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS])
    return _wrap(backend, out_dir, eos_token=EOS)


def test_a_bpe_that_only_merges_and_cannot_build_a_token_falls_back_to_hf(tmp_path):
    # Issue 15 item 3: tiktoken looks "xyz" up whole (258); Hugging Face without ignore_merges only merges. No hard
    # string and no sample text holds "xyz", so only the check of the vocabulary itself can see it.
    tokenizer = _xyz_tokenizer(tmp_path, ignore_merges=False)
    backend = build_tokenizer_backend(tokenizer, 'auto', sample_texts=['a page about rivers'])
    assert backend.name == 'hf'
    assert backend.reason == (
        'tiktoken fell back to hf: its BPE model merges without looking whole pieces up (ignore_merges is false), '
        "and vocabulary token 'xyz' is not what its own merges build (['x', 'yz']), while tiktoken would give it whole"
    )
    assert backend.encode_batch(['xyz']) == _hf_ids(tokenizer, ['xyz']) == [[120, 256]]


def test_the_same_bpe_with_ignore_merges_is_run_by_tiktoken(tmp_path):
    tokenizer = _xyz_tokenizer(tmp_path, ignore_merges=True)
    backend = build_tokenizer_backend(tokenizer, 'tiktoken')
    assert backend.encode_batch(['xyz']) == _hf_ids(tokenizer, ['xyz']) == [[258]]
