"""Judges: who labels and scores (the LLM judge and the offline one), prompt rendering and answer parsing."""
