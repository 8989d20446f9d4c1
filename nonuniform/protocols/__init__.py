"""Scipion protocols of the nonuniform plugin (each one imported here for discovery)."""

from .protocol_compare import ProtNonUniformCompareRefinements
from .protocol_local_filter import ProtNonUniformLocalFilter
from .protocol_refine import ProtNonUniformRefine3D

__all__ = ["ProtNonUniformRefine3D", "ProtNonUniformLocalFilter", "ProtNonUniformCompareRefinements"]
