"""The seven steps of the dlops workflow, one module each (see dvc.yaml)."""
