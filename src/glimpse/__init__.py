"""Glimpse: serve vision-language models at high concurrency."""

__all__ = ["__version__"]

__version__ = "0.1.0"
