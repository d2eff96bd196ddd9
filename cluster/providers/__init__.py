"""Capacity providers, one module per backend; registry.py finds them by name (and their settings models)."""
