"""The package version (one place; the model file records it)."""

__version__ = "0.1.0"
