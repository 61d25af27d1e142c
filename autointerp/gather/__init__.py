"""Gather stage: corpus → model → SAE → per-feature examples and statistics, in one or several processes."""
