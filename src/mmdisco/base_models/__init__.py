"""Frozen single-modal base models behind one black-box interface, and their adapters."""

from mmdisco.base_models.base import BaseModel

__all__ = ["BaseModel"]
