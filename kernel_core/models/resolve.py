"""Turn what a user typed as ``model`` (a known id or a folder) into a loadable HF folder.

Only safetensors weights are accepted: a pickled ``pytorch_model.bin`` can run arbitrary code when
loaded, so it is refused rather than loaded, and no remote code is ever trusted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kernel_core.errors import InvalidModelFolderError, ModelNotFoundError
from kernel_core.models.embedded import EMBEDDED_MODEL_ID, embedded_model_path

_KNOWN_MODELS: dict[str, Callable[[], Path]] = {EMBEDDED_MODEL_ID: embedded_model_path}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """Return the HF folder (``config.json`` + ``*.safetensors``) for a model id or folder path.

    A string equal to a known id (case-insensitive) is that model, converted on first use; anything
    else, and every ``PathLike``, is a folder path.
    """
    if isinstance(model, str) and model.lower() in _KNOWN_MODELS:
        return _KNOWN_MODELS[model.lower()]()
    folder = Path(model).expanduser()
    if not folder.exists():
        known = ", ".join(sorted(_KNOWN_MODELS))
        raise ModelNotFoundError(
            f"model {os.fspath(model)!r} is neither a known model id nor an existing folder "
            f"(known ids: {known})"
        )
    if not folder.is_dir():
        raise InvalidModelFolderError(
            f"model {folder} is a file, not a folder: pass a Hugging Face model folder "
            "(config.json + *.safetensors)"
        )
    if not (folder / "config.json").is_file():
        raise InvalidModelFolderError(f"model folder {folder} has no config.json: not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickled)})" if pickled else ""
        raise InvalidModelFolderError(
            f"model folder {folder} has no *.safetensors weights{found}: kernel-core loads only "
            "safetensors, never pickled weights such as pytorch_model.bin; re-save the model with "
            "transformers' save_pretrained in an environment you trust"
        )
    return folder.resolve()
