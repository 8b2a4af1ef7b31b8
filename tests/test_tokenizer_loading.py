"""A tokenizer that is not where the user said: the error names the path and what belongs there (issue 15 item 15)."""

from __future__ import annotations

import json

import pytest

from meco_callbacks.cli.documents import main as convert_main
from meco_callbacks.tokenizer.loading import TokenizerNotFound, check_tokenizer_location, load_tokenizer

EXPECTED = (
    'a tokenizer directory holds tokenizer.json (a fast tokenizer) or tokenizer_config.json with its vocabulary '
    'files, as save_pretrained or meco-train-tokenizer writes them'
)


def test_a_missing_directory_is_named_with_what_was_expected_there(tmp_path):
    with pytest.raises(TokenizerNotFound) as missing:
        load_tokenizer(tmp_path / 'tokenizr')
    assert str(missing.value) == (
        f'tokenizer directory {tmp_path}/tokenizr does not exist; {EXPECTED} '
        '(or name a Hugging Face hub tokenizer, e.g. meta-llama/Meta-Llama-3-8B)'
    )


def test_a_directory_without_tokenizer_files_lists_what_it_holds(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(TokenizerNotFound) as empty:
        load_tokenizer(tmp_path)
    assert str(empty.value) == f"tokenizer directory {tmp_path} holds no tokenizer (it has ['config.json']); {EXPECTED}"


def test_a_file_is_not_a_tokenizer_directory(tmp_path, tokenizer_dir):
    with pytest.raises(
        TokenizerNotFound, match=r"tokenizer '.*tokenizer.json' is a file, not a directory; a tokenizer"
    ):
        check_tokenizer_location(tokenizer_dir / 'tokenizer.json')


def test_a_hub_name_that_cannot_be_loaded_says_both_places_were_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # offline (conftest): the hub cannot have it, and neither can this directory
    with pytest.raises(TokenizerNotFound) as unknown:
        load_tokenizer('no-such-org/no-such-tokenizer')
    assert str(unknown.value).startswith(
        f"tokenizer 'no-such-org/no-such-tokenizer' is not a local directory (there is no "
        f'{tmp_path}/no-such-org/no-such-tokenizer) and could not be loaded from the Hugging Face hub ('
    )
    assert str(unknown.value).endswith(f'); {EXPECTED}')


def test_a_saved_tokenizer_loads_by_path(tokenizer_dir, tokenizer):
    loaded = load_tokenizer(tokenizer_dir, require_fast=True)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.is_fast


def test_the_conversion_command_stops_with_the_message_and_exit_code_2(tmp_path, capsys):
    source = tmp_path / 'docs.jsonl'
    source.write_text(json.dumps({'text': 'a page', 'url': 'https://a.org'}) + '\n')
    code = convert_main([str(source), '--output', str(tmp_path / 'out'), '--tokenizer', str(tmp_path / 'tok')])
    assert code == 2
    assert capsys.readouterr().err == f'error: tokenizer directory {tmp_path}/tok does not exist; {EXPECTED} ' + (
        '(or name a Hugging Face hub tokenizer, e.g. meta-llama/Meta-Llama-3-8B)\n'
    )
    assert not (tmp_path / 'out').exists()


def test_evaluation_names_a_missing_tokenizer_directory_of_the_run(tmp_path):
    from conftest import TINY_YAML

    from meco_callbacks.evaluation.trained_models import load_composer_checkpoint

    with pytest.raises(TokenizerNotFound, match=f'tokenizer directory {tmp_path}/missing does not exist'):
        load_composer_checkpoint(TINY_YAML, tmp_path / 'latest-rank0.pt', [f'variables.tokenizer={tmp_path}/missing'])
