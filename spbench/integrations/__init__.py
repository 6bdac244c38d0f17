"""Integrations with model libraries (diffusers, transformers, lmms-eval)."""
