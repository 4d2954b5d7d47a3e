"""The BentoML service (service.py), its model loading and the Bento build: what deploy packages."""
