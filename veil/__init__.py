"""Veil: a self-hosted edge proxy on Twisted."""

__version__ = "0.1.0"
