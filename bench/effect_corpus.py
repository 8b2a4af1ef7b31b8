"""The effect benchmark's corpus: synthetic biographies where a document's site says whether it is worth learning.

After Allen-Zhu & Li, Physics of Language Models 3.3 (arXiv 2404.05405): one *useful* site writes biographies of
a fixed set of people, each person many times in varied wording (high exposure); many *junk* sites write
biographies in the same style of people who appear once each (never learnable, and their name-to-attribute
pairs contradict nothing but teach that names predict nothing). Without metadata the two kinds of document look
alike; with it the model can tell from the first tokens which documents hold facts it will see again.

Everything is a pure function of the settings and the seed, so a run can be reproduced from its summary. The
corpus is the whole training stream: trained for one pass, a useful person is seen ``useful_docs`` times and a
junk person once. ``facts.jsonl`` holds one probe per (useful person, attribute): a neutral prompt, the true
value and the candidates it is ranked among.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

FIRST = (
    'Ada Alan Alma Amos Anna Arlo Ayla Basil Bea Beck Bram Cara Cyra Dale Dana Dora Drew Edda Edie Egon Elia Elmo Enzo '
    'Esme Ezra Faye Finn Flor Gael Gia Gil Gus Hana Hugo Ida Ilse Ines Ira Ivo Jada Jago Joss Juno Kai Kira Knox Lark '
    'Leda Lev Lina Lola Luca Mara Milo Mina Nell Nico Nina Noor Odin Olga Omar Opal Otto Pia Quin Reva Rhea Rolf Rosa '
    'Ruby Saga Sami Sven Tala Teo Thea Tove Uma Una Vada Veda Vito Wren Xavi Yara Yuri Zane Zara Zeno Zia'
).split()
LAST = (
    'Abbot Acre Alder Ames Ashby Bale Barrow Birch Blythe Brook Burns Cade Carver Chase Colt Crane Dace Darby Dorn '
    'Drake Dunne Eade Ellis Esker Falk Fenn Frost Gale Garth Glenn Grove Hale Harte Heath Holt Hurst Innes Ives Jarvis '
    'Keel Kemp Kent Lacey Lake Lane Lowe Lynd Marsh Mead Moss Nash Noble Oakes Orme Pace Park Pike Pryce Quill Rand '
    'Reed Rook Rowe Sage Shaw Slade Stone Sykes Tate Thorne Tull Vale Vance Wade Ward Webb Wells Wilde Wynn York Zell'
).split()

INITIALS = ('', *(f'{c}. ' for c in 'BCDFGHJKLMNPRSTVW'))  # middle initials: enough distinct names for the junk

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    'city': tuple(
        'Lisbon Oslo Cairo Lima Quito Dakar Hanoi Perth Turin Bergen Kyoto Porto Tunis Minsk Sofia Riga Accra '
        'Lagos Cork Graz Lyon Bonn Pune Hue'.split()
    ),
    'university': tuple(
        f'{name} University'
        for name in 'Northgate Riverside Eastbrook Westmoor Highfield Lakeshore Stonebridge Redcliff Greywater '
        'Ashford Brightwell Coldharbour Dunmore Elmstead Fairhaven Glenrock Hollowell Ironwood Kingsmere '
        'Larkhill'.split()
    ),
    'major': tuple(
        'physics chemistry biology geology history philosophy economics linguistics astronomy music '
        'architecture medicine law nursing statistics sociology botany zoology ecology geography'.split()
    ),
    'employer': tuple(
        f'{name} {kind}'
        for name, kind in zip(
            'Apex Borealis Cobalt Delta Ember Fulcrum Granite Helix Indigo Juniper Keystone Lumen Meridian Nimbus '
            'Orbit Pinnacle Quartz Radiant Summit Tundra'.split(),
            ['Labs', 'Systems', 'Motors', 'Foods', 'Bank', 'Media', 'Works', 'Energy', 'Press', 'Health'] * 2,
        )
    ),
}

# Several wordings per attribute; the first is the probe's prompt (scored with no document around it).
TEMPLATES: dict[str, tuple[str, ...]] = {
    'city': ('{name} was born in {value}.', '{name} grew up in {value}.', 'The birthplace of {name} is {value}.'),
    'university': (
        '{name} graduated from {value}.',
        '{name} earned a degree at {value}.',
        '{name} spent four years at {value}.',
    ),
    'major': ('{name} studied {value}.', 'At university, {name} focused on {value}.', '{name} majored in {value}.'),
    'employer': (
        '{name} works for {value}.',
        '{name} took a job at {value}.',
        '{name} is employed by {value}.',
    ),
}

USEFUL_SITE = 'en.wikipedia.org'
JUNK_TLDS = ('com', 'net', 'org', 'info', 'co.uk', 'io')
JUNK_WORDS = (
    'daily news world local city post herald star times blog forum life talk club people story voice report gazette'
).split()


@dataclass(frozen=True)
class EffectCorpus:
    """The corpus's settings: how many useful people and how often each is written about, and how much junk."""

    people: int = 100
    useful_docs: int = 50
    junk_fraction: float = 0.75
    junk_sites: int = 24
    seed: int = 0

    def junk_documents(self) -> int:
        """Junk documents so that they hold about ``junk_fraction`` of the documents (all are alike in length)."""
        useful = self.people * self.useful_docs
        return round(useful * self.junk_fraction / (1 - self.junk_fraction))


def junk_domains(count: int, seed: int) -> list[str]:
    """``count`` distinct plausible web domains for the junk sites."""
    rng = random.Random(f'junk-domains-{seed}')
    domains: list[str] = []
    while len(domains) < count:
        name = f'{rng.choice(JUNK_WORDS)}{rng.choice(JUNK_WORDS)}{rng.randrange(10, 99)}.{rng.choice(JUNK_TLDS)}'
        if name not in domains:
            domains.append(name)
    return domains


def biography(rng: random.Random, name: str, facts: dict[str, str]) -> str:
    """One document about ``name``: every attribute once, in a random order and wording."""
    order = list(facts)
    rng.shuffle(order)
    return ' '.join(rng.choice(TEMPLATES[a]).format(name=name, value=facts[a]) for a in order)


def build_effect_corpus(out: Path, spec: EffectCorpus) -> dict:
    """Write ``corpus.jsonl`` (text, url; shuffled), ``facts.jsonl`` and ``corpus.json`` (the settings and counts)."""
    rng = random.Random(spec.seed)
    names = [f'{first} {initial}{last}' for first in FIRST for initial in INITIALS for last in LAST]
    rng.shuffle(names)
    junk_docs = spec.junk_documents()
    if spec.people + junk_docs > len(names):
        raise ValueError(f'{spec.people} people and {junk_docs} junk documents need more than {len(names)} names.')
    useful_names, junk_names = names[: spec.people], names[spec.people : spec.people + junk_docs]
    values = {a: list(v) for a, v in ATTRIBUTES.items()}

    def facts_of(_: str) -> dict[str, str]:
        return {a: rng.choice(v) for a, v in values.items()}

    useful = {name: facts_of(name) for name in useful_names}
    domains = junk_domains(spec.junk_sites, spec.seed)
    docs = []
    for p, name in enumerate(useful_names):
        for d in range(spec.useful_docs):
            url = f'https://{USEFUL_SITE}/wiki/{name.replace(" ", "_")}?rev={d}'
            docs.append({'text': biography(rng, name, useful[name]), 'url': url, 'site': USEFUL_SITE})
    for j, name in enumerate(junk_names):
        domain = domains[j % len(domains)]
        url = f'https://{domain}/people/{j}'
        docs.append({'text': biography(rng, name, facts_of(name)), 'url': url, 'site': domain})
    rng.shuffle(docs)
    out.mkdir(parents=True, exist_ok=True)
    with (out / 'corpus.jsonl').open('w') as f:
        for doc in docs:
            f.write(json.dumps(doc) + '\n')
    with (out / 'facts.jsonl').open('w') as f:
        for name, facts in useful.items():
            for attribute, value in facts.items():
                prompt = TEMPLATES[attribute][0].split('{value}')[0].format(name=name).rstrip()
                probe = {'prompt': prompt, 'answer': value, 'candidates': list(ATTRIBUTES[attribute])}
                f.write(json.dumps({'attribute': attribute, 'site': USEFUL_SITE, **probe}) + '\n')
    summary = {
        **asdict(spec),
        'documents': len(docs),
        'useful_documents': spec.people * spec.useful_docs,
        'junk_documents': junk_docs,
        'useful_site': USEFUL_SITE,
        'junk_domains': domains,
        'probes': spec.people * len(ATTRIBUTES),
    }
    (out / 'corpus.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary
