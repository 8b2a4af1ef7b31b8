"""Stage 1: raw records -> document MDS (sources, readers, checks, tokenization, units, merge, the local and Spark drivers)."""
