"""Data the defaults use, installed as the package data `autointerp.data` (see LICENSES.md here)."""
