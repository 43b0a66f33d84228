"""Provenance: the Recipe and A1111 `parameters` text in PNGs, and import of A1111/InvokeAI PNGs.
Standard library and Pillow only."""
