"""Text corpora: ``plugin.py`` (the modality), ``corpus.py`` (validation, profile, tokenizer fitting), ``encode.py`` (texts -> ids, shared with the service), ``serve.py`` (request side)."""
