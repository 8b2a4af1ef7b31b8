"""Corpus conversion: raw records -> document MDS (stage 1, tokenized once) -> packed MDS of training rows (stage 2)."""
