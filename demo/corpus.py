"""The demo's sample corpus, built from this machine alone: real text with the real URL it is published at.

Three sources, so the corpus spans several sites: the standard library's docstrings (read from its source
with ``ast``, nothing is imported; ``docs.python.org/3/library/<module>.html``), the language reference
topics of ``pydoc`` (``docs.python.org/3/reference/...``), and the long descriptions of the installed
packages (their documentation or home-page URL, else their PyPI page). Written as JSON Lines with ``text``
and ``url``, the input convert/documents.py reads.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import sys
import sysconfig
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MIN_CHARS = 200  # shorter texts (an empty docstring, a one-line description) teach nothing and are skipped
HELD_OUT_EVERY = 10  # one document in ten (chosen by a hash of its URL) is held out for evaluation


@dataclass
class CorpusStats:
    """What was built: documents per source and split, and every skipped candidate counted by reason."""

    documents: Counter = field(default_factory=Counter)
    held_out: int = 0
    chars: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            'documents': dict(self.documents),
            'held_out': self.held_out,
            'chars': self.chars,
            'skipped': dict(self.skipped),
        }


def stdlib_documents(skipped: Counter) -> Iterator[dict[str, str]]:
    """One document per standard-library module: its docstring and those of its public classes and functions."""
    root = Path(sysconfig.get_paths()['stdlib'])
    for name in sorted(sys.stdlib_module_names):
        if name.startswith('_') or name in ('this', 'antigravity', 'idlelib', 'test', 'lib2to3'):
            continue
        package = root / name
        sources = (
            [(name, package / '__init__.py')]
            + [(f'{name}.{p.stem}', p) for p in sorted(package.glob('*.py')) if not p.stem.startswith('_')]
            if (package / '__init__.py').is_file()
            else [(name, root / f'{name}.py')]
        )
        for module, path in sources:
            if not path.is_file():
                skipped['stdlib: built-in module (no Python source)'] += 1
                continue
            try:
                tree = ast.parse(path.read_text(encoding='utf-8'))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                skipped['stdlib: source does not parse'] += 1
                continue
            text = module_text(module, tree)
            if len(text) < MIN_CHARS:
                skipped['stdlib: too little documentation'] += 1
                continue
            yield {'text': text, 'url': f'https://docs.python.org/3/library/{module}.html'}


def module_text(module: str, tree: ast.Module) -> str:
    """A module's documentation as plain text: its docstring, then each public class and function's."""
    parts = [f'{module}\n\n{ast.get_docstring(tree) or ""}'.strip()]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith('_'):
            doc = ast.get_docstring(node)
            if not doc:
                continue
            signature = '' if isinstance(node, ast.ClassDef) else f'({ast.unparse(node.args)})'
            parts.append(
                f'{"class " if isinstance(node, ast.ClassDef) else ""}{node.name}{signature}\n    '
                + doc.replace('\n', '\n    ')
            )
    return '\n\n'.join(parts) if len(parts) > 1 or ast.get_docstring(tree) else ''


def reference_documents(skipped: Counter) -> Iterator[dict[str, str]]:
    """The language reference topics that ``help('topic')`` shows, with the reference's search address."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        skipped['reference: pydoc_data is not installed'] += 1
        return
    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) < MIN_CHARS:
            skipped['reference: too short'] += 1
            continue
        yield {'text': text, 'url': f'https://docs.python.org/3/search.html?q={name}'}


def package_documents(skipped: Counter) -> Iterator[dict[str, str]]:
    """The long description of each installed distribution, at its documentation or home page."""
    seen: set[str] = set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata['Name'] or '').lower()):
        name = dist.metadata['Name']
        if not name or name.lower() in seen:
            skipped['packages: duplicate or nameless distribution'] += 1
            continue
        seen.add(name.lower())
        text = (dist.metadata.get_payload() or dist.metadata.get('Description') or '').strip()
        if len(text) < MIN_CHARS:
            skipped['packages: no long description'] += 1
            continue
        yield {'text': text, 'url': package_url(dist.metadata)}


def package_url(metadata: importlib.metadata.PackageMetadata) -> str:
    """Documentation URL, else home page, else the PyPI page: where the description is published."""
    project_urls = {}
    for entry in metadata.get_all('Project-URL') or []:
        label, _, url = entry.partition(',')
        project_urls[label.strip().lower()] = url.strip()
    for label in ('documentation', 'docs', 'homepage', 'home'):
        if project_urls.get(label, '').startswith('http'):
            return project_urls[label]
    home = (metadata.get('Home-page') or '').strip()
    return home if home.startswith('http') else f'https://pypi.org/project/{metadata["Name"]}/'


def is_held_out(url: str) -> bool:
    """Whether a document belongs to the held-out split (a stable hash of its URL)."""
    return zlib.crc32(url.encode('utf-8')) % HELD_OUT_EVERY == 0


def build_demo_corpus(out_dir: str | Path, max_docs: int | None = None) -> CorpusStats:
    """Write ``train.jsonl`` and ``heldout.jsonl`` (``text``, ``url``) and ``corpus.json`` (the stats) in ``out_dir``.

    Sources are interleaved so that any ``max_docs`` prefix still spans every site.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats()
    sources = {
        'docs.python.org/3/library': stdlib_documents(stats.skipped),
        'docs.python.org/3/reference': reference_documents(stats.skipped),
        'installed packages': package_documents(stats.skipped),
    }
    written = 0
    with (
        open(out / 'train.jsonl', 'w', encoding='utf-8') as train,
        open(out / 'heldout.jsonl', 'w', encoding='utf-8') as held_out,
    ):
        while sources and (max_docs is None or written < max_docs):
            for name, documents in list(sources.items()):
                doc = next(documents, None)
                if doc is None:
                    del sources[name]
                    continue
                held = is_held_out(doc['url'])
                (held_out if held else train).write(json.dumps(doc, ensure_ascii=False) + '\n')
                stats.documents[name] += 1
                stats.held_out += held
                stats.chars += len(doc['text'])
                written += 1
                if max_docs is not None and written >= max_docs:
                    break
    (out / 'corpus.json').write_text(json.dumps(stats.as_dict(), indent=2) + '\n')
    log.info(
        'Demo corpus: %d documents (%s), %d held out, %.1f MB of text, skipped %s; in %s',
        written,
        dict(stats.documents),
        stats.held_out,
        stats.chars / 1e6,
        dict(stats.skipped),
        out,
    )
    return stats
