"""Capacity providers, one module per backend (the registry that names them arrives with the provider seam)."""
