"""Model ids and folders: the embedded default model and resolution of what users pass as ``model``."""

from kernel_core.models.embedded import EMBEDDED_MODEL_ID
from kernel_core.models.resolve import resolve_model

__all__ = ["EMBEDDED_MODEL_ID", "resolve_model"]
