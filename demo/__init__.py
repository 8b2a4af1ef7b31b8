"""``make demo``: a corpus from this machine, MeCo and baseline runs, evaluation, and a report (not part of the library)."""
