"""Storage shared by both stages: the part store, object storage, the output rule, the worker pool."""
