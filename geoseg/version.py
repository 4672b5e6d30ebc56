"""geoseg's version (the lowest layer: every output records it)."""

__version__ = "0.1.0"
