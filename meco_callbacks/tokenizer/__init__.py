"""Tokenizers as part of the data: a tokenizer's fingerprint, loading by path or hub name, training a small one."""
