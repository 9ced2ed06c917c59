"""The package version (a shared module: every layer may import it)."""

__version__ = "0.1.0"
