"""The README's "Your own data, start to finish" block runs as written, on a corpus the test writes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, synthetic_documents


def first_hour_commands() -> list[str]:
    """The commands between the README's first-hour markers, one per line."""
    readme = (REPO_ROOT / 'README.md').read_text()
    block = re.search(r'<!-- first-hour -->\n```bash\n(.*?)```\n<!-- /first-hour -->', readme, re.S)
    assert block, 'the README lost its first-hour block'
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_first_hour_block_names_every_step():
    programs = [' '.join(shlex.split(command)[:2]) for command in first_hour_commands()]
    assert programs == [
        'python convert/train_tokenizer.py',
        'python convert/documents.py',
        'python convert/pack.py',
        'composer train.py',
        'composer train.py',
        'python recipes/evaluate.py',
        'python recipes/evaluate.py',
        'python recipes/plot.py',
        'python recipes/generate.py',
    ]


@pytest.mark.slow
def test_the_first_hour_runs_as_written(tmp_path: Path):
    for name in ('convert', 'recipes', 'yamls', 'train.py'):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    with (tmp_path / 'corpus.jsonl').open('w') as f:
        for doc in synthetic_documents(3000, seed=11):
            f.write(json.dumps(doc) + '\n')
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    env['OMP_NUM_THREADS'] = '1'
    outputs = []
    for command in first_hour_commands():
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f'{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
        outputs.append(done.stdout)
    meco_loss = json.loads(outputs[5])
    assert set(meco_loss) == {'true_url', 'no_url', 'url=wrong.example'}
    assert meco_loss['true_url']['tokens'] == meco_loss['no_url']['tokens'] > 0
    baseline_loss = json.loads(outputs[6])
    assert {name: r['tokens'] for name, r in baseline_loss.items()} == {
        name: r['tokens'] for name, r in meco_loss.items()
    }
    assert (tmp_path / 'loss.png').stat().st_size > 0
    assert (tmp_path / 'runs' / 'meco-tiny-cpu' / 'huggingface' / 'ba40' / 'config.json').is_file()
    assert outputs[8].strip()
