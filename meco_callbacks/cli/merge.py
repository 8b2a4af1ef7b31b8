"""Merge the parts of a document conversion run as several jobs (convert/documents.py --num-jobs N).

A thin command line over ``meco_callbacks.corpus.documents.document_merge.merge_document_parts``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = """\
Join the units that the jobs of one conversion wrote under OUTPUT.partial into one document MDS at OUTPUT:
one index.json over every unit's shards, in input order, and meco_dataset.json with the summed counts.
Refuses while any unit is missing (it names them), so it is safe to run before every job has finished.
With --remote (the jobs' --remote), the units other machines uploaded count as converted, so jobs need share
only the object storage; units not uploaded yet are uploaded, then index.json, then meco_dataset.json.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the --output the jobs were given."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output', required=True, help='the --output given to convert/documents.py')
    parser.add_argument('--overwrite', action='store_true', help='replace a different dataset already at --output')
    parser.add_argument('--remote', default=None, help='the --remote given to convert/documents.py, if any')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Merge and print the dataset info as JSON; exit 2 with the reason when the merge is refused."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from meco_callbacks.corpus.documents.document_merge import merge_document_parts
    from meco_callbacks.corpus.storage.errors import ConversionError

    try:
        info = merge_document_parts(args.output, overwrite=args.overwrite, remote=args.remote)
    except (OSError, ConversionError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0
