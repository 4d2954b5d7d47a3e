"""Tables: ``plugin.py`` (the modality), ``infer.py`` (types, task, profile), ``prep.py`` (fitted preprocessing + its ONNX graph), ``serve.py`` (request side)."""
