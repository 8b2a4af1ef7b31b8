"""Which metadata a document is conditioned on, and how it becomes a safe one-line prompt prefix.

The paper's default is the URL's absolute domain (``en.wikipedia.org``); its ablations use the full URL,
a hash of the domain, or a model-generated topic (a carried column here). Metadata is untrusted web text:
it is normalised to one bounded line before it meets the template, so it can never add a line of its own.

Three variants from later work are settings of the same block: ``drop_probability`` (mixed conditioning, Fan,
Sabolčec, Jaggi, "URLs Help, Topics Guide", arXiv 2505.16570: a document's metadata is left out with that
probability), ``position: suffix`` with ``loss: true`` (metadata after the document, trained, "Beyond URLs",
arXiv 2511.21613) and the kind ``bins:<column>`` (fine-grained quality bins, same paper; ``quality_bins.py``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import tldextract

from meco_callbacks.config_checks import check_bool, check_int, check_number, check_str, refuse
from meco_callbacks.data.compact import COMPACT_KIND, bucket_of, check_vocabulary
from meco_callbacks.data.quality_bins import bin_label, bins_column, check_edges, numeric_value

DEFAULT_TEMPLATE = 'URL: {}\n\n'
DEFAULT_MAX_CHARS = 100

_REGISTERED_DOMAIN_CACHE = 1 << 16  # distinct hosts remembered per process (a loader worker calls this per document)
_WHITESPACE = re.compile(r'\s+')
# A scheme (or none) and a netloc of letters, digits, dots and hyphens only: no credentials, port or brackets.
_PLAIN_HOST_URL = re.compile(r'(?:[A-Za-z][A-Za-z0-9+.-]*:)?//([A-Za-z0-9.-]+)(?:[/?#]|$)')
_PLAIN_KINDS = ('domain', 'url', 'registered_domain', 'hash', COMPACT_KIND, 'none')
POSITIONS = ('prefix', 'suffix')
ATTENTIONS = ('full', 'summary')  # metadata.attention: how document tokens see their prefix


def normalize_metadata(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """One line of at most ``max_chars``: control and format characters dropped, whitespace runs -> one space."""
    if text.isascii() and text.isprintable():  # the common case (hosts, URLs): nothing to drop, no per-char pass
        return _WHITESPACE.sub(' ', text).strip()[:max_chars].strip()
    kept = ''.join(
        ' ' if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in ('Cc', 'Cf', 'Cs', 'Co', 'Cn')
    )
    return _WHITESPACE.sub(' ', kept).strip()[:max_chars].strip()


def url_host(url: str, strip_www: bool = False) -> str:
    """The URL's host, lower-cased, without scheme, credentials, port or path; '' when there is none."""
    url = url.strip()
    if '://' not in url and not url.startswith('//'):
        url = '//' + url  # 'example.com/a' has no scheme but is still a host and a path
    plain = _PLAIN_HOST_URL.match(url)
    if plain:  # the common case, what urlsplit would return without its cost (a third of packing with room)
        host = plain.group(1).lower().rstrip('.')
        return host[4:] if strip_www and host.startswith('www.') else host
    try:
        host = urlsplit(url).hostname or ''
    except ValueError:  # e.g. an unbalanced '[' in an IPv6-looking netloc
        return ''
    host = host.rstrip('.')
    if strip_www and host.startswith('www.'):
        host = host[4:]
    return host


@functools.cache
def _public_suffixes() -> tldextract.TLDExtract:
    """The public-suffix list snapshot that ships with ``tldextract``: no download, no disk cache, built once."""
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


@functools.lru_cache(maxsize=_REGISTERED_DOMAIN_CACHE)
def registered_domain(host: str) -> str:
    """The registrable part of a host under the public-suffix list (``en.wikipedia.org`` -> ``wikipedia.org``).

    ICANN suffixes of the list ``tldextract`` ships (``a.b.nhs.uk`` -> ``b.nhs.uk``, ``shop.example.ltd.uk`` ->
    ``example.ltd.uk``), read offline so the same host always gives the same metadata. A host under no listed
    suffix follows the list's default rule ``*`` (its last two labels); IP addresses, single labels
    (``localhost``) and hosts that are themselves a public suffix are returned as they are.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if '.' not in host:
        return host
    parts = _public_suffixes()(host)
    if not parts.suffix:
        return '.'.join(host.split('.')[-2:])
    return f'{parts.domain}.{parts.suffix}' if parts.domain else host


def domain_hash(host: str) -> str:
    """A stable 8-hex-digit hash of the host (the paper's "URL hash" ablation); '' for no host."""
    return hashlib.sha256(host.encode('utf-8')).hexdigest()[:8] if host else ''


@dataclass(frozen=True)
class MetadataConfig:
    """The YAML ``metadata`` block of the MeCo loader.

    ``kind``: ``domain`` | ``url`` | ``registered_domain`` | ``hash`` | ``column:<name>`` | ``constant:<text>`` |
    ``bins:<column>`` | ``none``; ``template``: the prefix with one ``{}``; ``enabled``: inject prefixes (the
    cooldown callback turns this off for the last phase); ``max_chars``: cap on the metadata string;
    ``strip_www``: drop a leading ``www.`` from hosts.

    Variants: ``drop_probability`` in [0, 1): each document's metadata is left out with this probability (its
    room becomes padding), decided per document by (seed, epoch, URL, the document's tokens); ``position``:
    ``prefix`` (before the document, the paper) or ``suffix`` (after its EOS, where the document ends); ``loss``:
    train the metadata tokens too; ``bins`` (edges) or ``quantiles`` (N, edges read from the packed set) for a
    ``bins:<column>`` kind; ``compact``: the vocabulary of kind ``compact`` (``data/compact.py``: sites, tokens,
    token ids, buckets), read from the packed set when left out; ``attention``: ``full`` or ``summary``.
    """

    kind: str = 'domain'
    template: str = DEFAULT_TEMPLATE
    enabled: bool = True
    max_chars: int = DEFAULT_MAX_CHARS
    strip_www: bool = False
    drop_probability: float = 0.0
    position: str = 'prefix'
    loss: bool = False
    bins: tuple[float, ...] | None = None
    quantiles: int | None = None
    compact: Mapping[str, Any] | None = None
    # Experimental (issue 25): ``summary`` lets document tokens see their prefix only through its last token.
    attention: str = 'full'

    def __post_init__(self) -> None:
        self._check_types()
        if not (self.kind in _PLAIN_KINDS or self.kind.startswith(('column:', 'constant:', 'bins:'))):
            raise ValueError(
                f'metadata.kind {self.kind!r} is not known; use one of {", ".join(_PLAIN_KINDS)}, '
                "'column:<name>' (a column carried in the packed dataset), 'bins:<column>' (a numeric column as "
                "quality bins) or 'constant:<text>'."
            )
        if self.kind in ('column:', 'constant:', 'bins:'):
            raise ValueError(f'metadata.kind {self.kind!r} needs a name or text after the colon, e.g. column:topic.')
        self._check_variants()
        self._check_attention()
        if self.template.count('{}') != 1 or self.template.replace('{}', '').count('{') + self.template.replace(
            '{}', ''
        ).count('}'):
            raise ValueError(
                f'metadata.template must contain exactly one "{{}}" and no other braces; got {self.template!r}.'
            )
        if not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ValueError(f'metadata.max_chars must be a positive integer; got {self.max_chars!r}.')
        self._check_compact()

    def __hash__(self) -> int:  # ``compact`` is a dict (JSON-shaped, as exports write it): hashed as JSON text
        fields = [getattr(self, name) for name in self.__dataclass_fields__]
        return hash(tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in fields))

    def _check_compact(self) -> None:
        """Validate a ``compact`` vocabulary and index it (site -> token, token -> id), outside the fields."""
        if self.compact is None:
            return
        if self.kind != COMPACT_KIND:
            raise ValueError(f'metadata.compact applies to kind compact, not {self.kind!r}.')
        vocabulary = check_vocabulary(self.compact)
        object.__setattr__(self, 'compact', vocabulary)
        object.__setattr__(self, '_site_tokens', dict(zip(vocabulary['sites'], vocabulary['tokens'])))
        object.__setattr__(self, '_token_ids', dict(zip(vocabulary['tokens'], vocabulary['token_ids'])))

    def _check_types(self) -> None:
        """Each field's type, before any is used: a YAML or command-line value of the wrong type names its key."""
        check_str('metadata.kind', self.kind)
        check_str('metadata.template', self.template)
        check_bool('metadata.enabled', self.enabled)
        check_int('metadata.max_chars', self.max_chars, minimum=1)
        check_bool('metadata.strip_www', self.strip_www)
        check_number(
            'metadata.drop_probability',
            self.drop_probability,
            "a number in [0, 1) (0.1 leaves out one document's metadata in ten)",
        )
        check_str('metadata.position', self.position)
        check_bool('metadata.loss', self.loss)
        if self.bins is not None and (isinstance(self.bins, (str, Mapping)) or not hasattr(self.bins, '__iter__')):
            raise refuse('metadata.bins', self.bins, 'a list of numbers (bin edges) or null')

    def _check_variants(self) -> None:
        """Validate the variant settings (drop, position, loss, bins) with errors that name the setting."""
        p = self.drop_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(
                f"metadata.drop_probability must be a number in [0, 1) (0.1 leaves out one document's metadata in "
                f'ten); got {p!r}.'
            )
        if self.position not in POSITIONS:
            raise ValueError(f'metadata.position must be one of {", ".join(POSITIONS)}; got {self.position!r}.')
        if not isinstance(self.loss, bool):
            raise ValueError(f'metadata.loss must be true or false; got {self.loss!r}.')
        column = bins_column(self.kind)
        if column is None:
            if self.bins is not None or self.quantiles is not None:
                raise ValueError(
                    f'metadata.bins and metadata.quantiles apply to a bins:<column> kind, not {self.kind!r}.'
                )
            return
        if self.bins is None and self.quantiles is None:
            raise ValueError(
                f'metadata.kind {self.kind!r} needs metadata.bins (a list of edges) or metadata.quantiles (N, with '
                'edges computed at packing: meco-pack --bins quantiles:N).'
            )
        q = self.quantiles
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 2):
            raise ValueError(f'metadata.quantiles must be a whole number of at least 2; got {q!r}.')
        if self.bins is not None:
            object.__setattr__(self, 'bins', check_edges(self.bins, 'metadata.bins'))
            if q is not None and len(self.bins) != q - 1:
                raise ValueError(f'metadata.bins has {len(self.bins)} edges, not the {q - 1} of {q} quantiles.')

    def _check_attention(self) -> None:
        """``attention``: ``full`` (every prefix token visible, the paper) or ``summary`` (prefix only)."""
        if self.attention not in ATTENTIONS:
            raise ValueError(f'metadata.attention must be one of {", ".join(ATTENTIONS)}; got {self.attention!r}.')
        if self.attention == 'summary' and self.position != 'prefix':
            raise ValueError(
                'metadata.attention: summary lets document tokens see a prefix only through its last token; it '
                f'applies to position: prefix only, not position: {self.position}. Use attention: full with a suffix.'
            )

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> MetadataConfig:
        """Build from the YAML block, naming any unknown key (a typo must not silently change the recipe)."""
        if cfg is not None and not isinstance(cfg, Mapping):
            raise refuse('the metadata block (train_loader.dataset.metadata)', cfg, 'a mapping of settings or null')
        cfg = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f'unknown key(s) {unknown} in the metadata block; known keys: {sorted(known)}.')
        return cls(**cfg)

    @property
    def active(self) -> bool:
        """Whether this configuration can produce prefixes at all (``none`` never does)."""
        return self.kind != 'none'

    def metadata_for(self, url: str, columns: Mapping[str, Any] | None = None) -> str:
        """The normalised metadata string of one document; '' means the document gets no prefix."""
        kind = self.kind
        if kind == 'none':
            return ''
        if kind.startswith('constant:'):
            raw = kind[len('constant:') :]
        elif kind.startswith('column:'):
            value = (columns or {}).get(kind[len('column:') :])
            raw = '' if value is None else str(value)
        elif kind.startswith('bins:'):
            raw = bin_label(numeric_value(columns, kind[len('bins:') :], url), self.resolved_bins)
        elif kind == 'url':
            raw = url
        elif kind == COMPACT_KIND:
            return self.compact_token(url_host(url, self.strip_www))
        else:
            host = url_host(url, self.strip_www)
            if kind == 'domain':
                raw = host
            elif kind == 'registered_domain':
                raw = registered_domain(host) if host else ''
            else:
                raw = domain_hash(host)
        return normalize_metadata(raw, self.max_chars)

    @property
    def resolved_bins(self) -> tuple[float, ...]:
        """The bin edges of a ``bins:`` kind; an error when they are still to be read from the packed set."""
        if self.bins is None:
            raise ValueError(
                f'metadata.kind {self.kind!r} with metadata.quantiles {self.quantiles} has no edges yet: they are '
                f'read from the packed set (meco-pack --reserve-prefix {self.kind} --bins quantiles:N).'
            )
        return self.bins

    def compact_token(self, host: str) -> str:
        """Kind ``compact``: the reserved token of a host's site (its own, or its hash bucket's); '' for no host."""
        if self.compact is None:
            raise ValueError(
                'metadata.kind compact has no vocabulary yet: it is read from the packed set, which must be packed '
                'with meco-pack --reserve-prefix compact (or give the recorded one as metadata.compact).'
            )
        if not host:
            return ''
        site = registered_domain(host) if self.compact['site'] == 'registered_domain' else host
        token = self._site_tokens.get(site)  # type: ignore[attr-defined]
        if token is None:
            buckets = self.compact['buckets']
            token = self.compact['tokens'][len(self.compact['sites']) + bucket_of(site, buckets)]
        return token

    def compact_token_id(self, token: str) -> int:
        """The id of a token ``compact_token`` returned."""
        return self._token_ids[token]  # type: ignore[attr-defined]

    def metadata_for_prompt(self, url: str) -> str:
        """The metadata a training document from ``url`` was conditioned on, for an inference prompt.

        The same reduction as training (``metadata_for``: the domain of a full URL, for kind ``domain``), so a URL
        typed at inference gives the prefix the model saw. Raises where training would have put no prefix, since a
        conditioned prompt without one would silently be the unconditioned prompt.
        """
        metadata = self.metadata_for(url)
        if not metadata:
            raise ValueError(
                f'{url!r} gives no metadata of kind {self.kind!r}, so the prompt would carry no prefix; give a URL '
                'or domain such as docs.python.org (a column kind needs its value as kind constant:<value>).'
            )
        return metadata

    def prefix_for(self, metadata: str) -> str:
        """The prefix text for a metadata string ('' stays '': no prefix)."""
        return self.template.format(metadata) if metadata else ''
