"""Architectures (code, not weights): a registry of plain ``nn.Module`` families chosen by name,
and the LightningModule that wraps any of them (``models.lit``)."""
