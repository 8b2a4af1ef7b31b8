"""Training control on Composer events: the ``metadata_conditioning`` algorithm, the ``meco_cooldown`` callback and
the ``hf_llama_checkpointer`` callback (a transformers Llama copy beside every checkpoint)."""
