"""Tasks (the output side of learning): one module each; see ``pipelines/plugins.py``."""
