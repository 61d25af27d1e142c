"""Kept for `from autointerp.steer import ...`: steering lives in autointerp.subject.steer."""

from autointerp.subject.steer import SteerConfig, add_edit, clamp_edit, steer

__all__ = ["SteerConfig", "add_edit", "clamp_edit", "steer"]
