"""Command lines: argument parsing over library functions, installed as ``meco-*`` console commands.

``convert/*.py`` and ``recipes/*.py`` call the same ``main`` functions, so both spellings behave alike.
"""
