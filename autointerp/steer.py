"""Kept for `from autointerp.steer import ...`: steering lives in autointerp.subject.steer."""

from autointerp.config import SteerConfig
from autointerp.subject.steer import add_edit, clamp_edit, steer

__all__ = ["SteerConfig", "add_edit", "clamp_edit", "steer"]
