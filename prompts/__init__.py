"""The judges' prompt files, installed as the package data `autointerp.prompt_files` (see README.md here)."""
