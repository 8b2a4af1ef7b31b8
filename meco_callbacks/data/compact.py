"""The ``compact`` metadata kind: a document's site as one reserved special token.

A long prefix (``URL: en.wikipedia.org\\n\\n``, 9-25 tokens with a small tokenizer) costs a tiny model much of
what it learns, while one informative token does not (issue 25). The MeCo paper found hashed URLs as good as real
ones (arXiv 2501.01956, 56.7 both): what matters is that documents of one source share a prefix. So the ``compact``
kind gives each of the most frequent sites of the packed set a reserved token of its own, and hashes every other
site into one of a fixed number of bucket tokens. A prefix is ``template.format(<token>)``: one token with the
template ``{}``.

- The tokens are special tokens of the tokenizer, never produced from text: ``<|meta_0|>`` ... as
  ``meco-train-tokenizer --metadata-tokens N`` adds them, else the ``<|reserved_special_token_K|>`` that hub
  tokenizers such as Llama-3 ship. A tokenizer with neither is refused, saying how to get them.
- The vocabulary is decided at packing (``meco-pack --reserve-prefix compact``) from the document counts per site
  over the whole document set, and recorded in ``meco_dataset.json`` with the reservation; the loader and the
  inference tools read it from there (or from ``metadata.compact``) into ``MetadataConfig.compact``.
- A site is the URL's host as kind ``domain`` computes it (``en.wikipedia.org``): the paper's default unit, and
  subdomains of one registrable domain are often different sources. Sites beyond the top share the bucket
  ``blake2b(site, digest_size=8)`` (big-endian) modulo the number of buckets: stable across processes and runs.
- Defaults: all the reserved tokens the tokenizer has, ``DEFAULT_BUCKETS`` (64) of them buckets, or a quarter of
  them when there are fewer than 256. With ``meco-train-tokenizer --metadata-tokens 256``: 192 sites get a token
  of their own (in web corpora the few most frequent sites hold a large share of the documents), and the long tail
  is grouped into 64 pseudo-sources, enough that a bucket is not one mixed bag, few enough that each is seen often.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

COMPACT_KIND = 'compact'
META_TOKEN = '<|meta_{}|>'
DEFAULT_METADATA_TOKENS = 256  # what the docs recommend for meco-train-tokenizer --metadata-tokens
DEFAULT_BUCKETS = 64
HASH_RULE = 'blake2b(site utf-8, digest_size=8) big-endian mod buckets'
SITE_RULES = ('domain', 'registered_domain')
VOCABULARY_KEYS = ('site', 'hash', 'buckets', 'sites', 'tokens', 'token_ids')
_RESERVED_PATTERNS = (re.compile(r'<\|meta_(\d+)\|>'), re.compile(r'<\|reserved_special_token_(\d+)\|>'))


def bucket_of(site: str, buckets: int) -> int:
    """The hash bucket of a site beyond the top (``HASH_RULE``)."""
    digest = hashlib.blake2b(site.encode('utf-8'), digest_size=8).digest()
    return int.from_bytes(digest, 'big') % buckets


def check_vocabulary(vocabulary: Mapping[str, Any]) -> dict[str, Any]:
    """A compact vocabulary as a plain dict of lists, or an error naming what is wrong with it."""
    if not isinstance(vocabulary, Mapping) or set(vocabulary) != set(VOCABULARY_KEYS):
        got = sorted(vocabulary) if isinstance(vocabulary, Mapping) else vocabulary
        raise ValueError(
            f'metadata.compact must be the vocabulary a packed set records, with keys {list(VOCABULARY_KEYS)}; got '
            f'{got!r}. Leave it out to read it from the packed set (meco-pack --reserve-prefix compact).'
        )
    plain = {
        'site': str(vocabulary['site']),
        'hash': str(vocabulary['hash']),
        'buckets': vocabulary['buckets'],
        'sites': [str(s) for s in vocabulary['sites']],
        'tokens': [str(t) for t in vocabulary['tokens']],
        'token_ids': [int(i) for i in vocabulary['token_ids']],
    }
    buckets = plain['buckets']
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f'metadata.compact.buckets must be a whole number of at least 1; got {buckets!r}.')
    if plain['site'] not in SITE_RULES or plain['hash'] != HASH_RULE:
        raise ValueError(
            f'metadata.compact records site {plain["site"]!r} and hash {plain["hash"]!r}; this version reads site '
            f'{" or ".join(SITE_RULES)} and hash {HASH_RULE!r}: repack with this version.'
        )
    size = len(plain['sites']) + buckets
    if (
        len(plain['tokens']) != size
        or len(plain['token_ids']) != size
        or len(set(plain['sites'])) != len(plain['sites'])
    ):
        raise ValueError(
            f'metadata.compact needs one token (and id) per site plus one per bucket ({size}), and distinct sites; '
            f'got {len(plain["tokens"])} tokens and {len(plain["token_ids"])} ids for {len(plain["sites"])} sites.'
        )
    return plain


def reserved_tokens(tokenizer: Any) -> list[tuple[str, int]]:
    """The tokenizer's reserved special tokens for metadata, in order: ``<|meta_K|>``, else Llama-3's reserved ones."""
    special = {
        str(token): int(token_id)
        for token_id, token in getattr(tokenizer, 'added_tokens_decoder', {}).items()
        if getattr(token, 'special', False)
    }
    for pattern in _RESERVED_PATTERNS:
        found = sorted(
            ((int(m.group(1)), token, special[token]) for token in special if (m := pattern.fullmatch(token))),
        )
        if found:
            return [(token, token_id) for _, token, token_id in found]
    raise ValueError(
        f'tokenizer {getattr(tokenizer, "name_or_path", "?")!r} has no reserved special tokens for the compact '
        'metadata kind: train one with meco-train-tokenizer --metadata-tokens 256 (adds <|meta_0|> ... '
        '<|meta_255|>), or use a tokenizer that ships reserved special tokens (Llama-3: <|reserved_special_token_K|>).'
    )


def build_vocabulary(
    site_counts: Mapping[str, int], tokenizer: Any, buckets: int | None = None, site: str = 'domain'
) -> dict[str, Any]:
    """The vocabulary of a document set: its most frequent sites a token each, the last ``buckets`` tokens buckets.

    Sites are ranked by document count, ties by name, so the same counts always give the same vocabulary.
    """
    available = reserved_tokens(tokenizer)
    if buckets is None:
        buckets = DEFAULT_BUCKETS if len(available) >= 4 * DEFAULT_BUCKETS else max(1, len(available) // 4)
    if not 1 <= buckets <= len(available):
        raise ValueError(
            f'the compact kind needs 1 to {len(available)} hash buckets (the tokenizer has {len(available)} reserved '
            f'tokens); got {buckets}.'
        )
    ranked = sorted(site_counts.items(), key=lambda item: (-item[1], item[0]))
    top = [name for name, _ in ranked[: len(available) - buckets]]
    chosen = available[: len(top)] + available[len(available) - buckets :]
    return check_vocabulary(
        {
            'site': site,
            'hash': HASH_RULE,
            'buckets': buckets,
            'sites': top,
            'tokens': [token for token, _ in chosen],
            'token_ids': [token_id for _, token_id in chosen],
        }
    )


def site_counts(sites: Iterable[str]) -> Counter[str]:
    """Documents per site ('' is no site: such documents get no prefix and are not counted)."""
    return Counter(s for s in sites if s)


def packing_vocabulary(
    kinds: Sequence[str], ranges: Sequence[Any], tokenizer: Any, strip_www: bool, buckets: int | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(vocabulary, its stats) recorded with a reservation that names ``compact``; (None, None) otherwise.

    One pass over the planned document ranges counts documents per site, as ``quality_bins.column_values`` reads
    a column for quantile edges.
    """
    if COMPACT_KIND not in kinds:
        if buckets is not None:
            raise ValueError('--compact-buckets is given but no --reserve-prefix kind is compact.')
        return None, None
    from meco_callbacks.corpus.packing.document_set import read_range
    from meco_callbacks.data.metadata import url_host

    counts: Counter[str] = Counter()
    for task in ranges:
        counts.update(site_counts(url_host(url, strip_www) for url in read_range(task).urls))
    vocabulary = build_vocabulary(counts, tokenizer, buckets)
    documents = sum(counts.values())
    stats = {
        'documents_with_site': documents,
        'sites_seen': len(counts),
        'documents_in_top_sites': sum(counts[s] for s in vocabulary['sites']),
        'top_site_documents': [counts[s] for s in vocabulary['sites']],
    }
    return vocabulary, stats
