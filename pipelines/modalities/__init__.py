"""Modalities (the input side of learning): one package each; see ``pipelines/plugins.py``. Nothing heavy is imported here: the service imports the ``serve`` modules."""
