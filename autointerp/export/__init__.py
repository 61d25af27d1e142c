"""Exports of a stored run: Parquet of every table, Neuronpedia's formats, OpenAI-style JSONL."""

from autointerp.config import ExportConfig
from autointerp.export.writers import FORMATS, export, read_neuronpedia_bulk

__all__ = ["FORMATS", "ExportConfig", "export", "read_neuronpedia_bulk"]
