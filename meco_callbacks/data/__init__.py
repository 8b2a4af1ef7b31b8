"""The training data path: metadata and its prefix, the packed dataset, the collator and the ``meco`` dataloader."""
