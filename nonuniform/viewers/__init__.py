"""Scipion viewers of the nonuniform plugin (each one imported here for discovery)."""

from .viewer_compare import NonUniformCompareViewer
from .viewer_local_filter import NonUniformLocalFilterViewer
from .viewer_refine import NonUniformRefineViewer

__all__ = ["NonUniformRefineViewer", "NonUniformLocalFilterViewer", "NonUniformCompareViewer"]
