#!/usr/bin/env bash
# Resolve pyproject.toml's pins in a scratch venv and freeze every version into requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade "pip==26.3" "setuptools==80.9.0" wheel
"$tmp/venv/bin/python" -m pip install -q ".[test]"
"$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^meco-callbacks' > requirements.lock
rm -rf "$tmp"
echo "wrote requirements.lock ($(wc -l < requirements.lock) packages)"
