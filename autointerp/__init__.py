"""autointerp: automated interpretability for sparse autoencoders."""

__version__ = "0.1.0"
