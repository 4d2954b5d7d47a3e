"""Architectures (code, not weights): a registry of plain ``nn.Module`` families chosen by name,
and the LightningModule that wraps any of them (``models.lit``)."""


class ModelError(ValueError):
    """Unknown architecture or bad architecture kwargs; names the params key at fault. Defined here
    (not in the registry) so that a step can catch it without loading every architecture family."""
