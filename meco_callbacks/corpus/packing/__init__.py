"""Stage 2: document MDS -> packed rows (document set, row planning, the row writers, parts, the held-out split, the shard cache)."""
