"""Residual policies: a learned, bounded correction on top of a frozen base policy."""
