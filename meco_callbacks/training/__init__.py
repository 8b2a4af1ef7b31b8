"""Training control on Composer events: the ``metadata_conditioning`` algorithm and the ``meco_cooldown`` callback."""
