"""Images as fixed-shape arrays: ``plugin.py`` (training side), ``serve.py`` (request side)."""
