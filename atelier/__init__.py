"""Atelier application layer: the command line and the studio services that join engine and gallery."""

__version__ = "0.1.0"
