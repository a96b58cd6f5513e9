"""W2's LoRA adapters, made deterministically with our own PEFT and kept on disk for reuse.

Adapter ``i`` of a set is ``get_peft_model(model, get_config("lora", r, lora_alpha, target_modules,
init_lora_weights=False))`` drawn right after ``torch.manual_seed(seed + i)``: A and B both random
(B non-zero, so every adapter changes the outputs), saved in PEFT's format (``adapter_config.json``
+ ``adapter_model.safetensors``) as folder ``a<i>`` of the set. Both our engine and the vLLM
anchor load these folders.

A set lives in ``--adapter-dir`` or, by default, in ``$KERNEL_CORE_CACHE/bench/lora-adapters/
<model>-<config hash>/r<rank>-alpha<alpha>-seed<seed>``. Its ``kcore-adapters.json`` records what
the set was made for; a folder made for another model or other settings is refused, never mixed.
Each adapter is written into hidden staging and renamed into place (:mod:`kernel_core.atomic`), so
a killed run leaves no half-written adapter that a later run would take for finished.

``--mix`` (issue 15, point 6) uses a mixed set instead (:func:`ensure_mix`): two adapters of each
kind in :data:`MIX` that an installed tuner serves, made the same way with the kind's own random
init (IA3 ``init_ia3_weights=False``; prompt and prefix tuning's random embeddings), in
``$KERNEL_CORE_CACHE/bench/mix-adapters/<model>-<config hash>/<kinds>-r<rank>-alpha<alpha>-seed<seed>``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel_core.atomic import atomic_folder, atomic_write_text, is_leftover
from kernel_core.bench.workloads import AdapterSpec
from kernel_core.errors import KernelCoreError

MANIFEST = "kcore-adapters.json"
_FORMAT = 1
_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class AdapterSet:
    """Where a set lives and the folders of its first ``len(paths)`` adapters (``a0``, ``a1``, ...)."""

    directory: Path
    paths: list[Path]
    #: How many of ``paths`` this call wrote (the rest were already there).
    created: int


def default_directory(model: Path, spec: AdapterSpec, seed: int) -> Path:
    """The cache folder of the set for ``model`` and these settings."""
    settings = f"r{spec.rank}-alpha{spec.alpha}-seed{seed}"
    return _cache_root() / "lora-adapters" / f"{model.name}-{_model_hash(model)}" / settings


def _cache_root() -> Path:
    return Path(os.environ.get("KERNEL_CORE_CACHE") or "~/.cache/kernel_core").expanduser() / "bench"


def ensure_adapters(
    model: Path, spec: AdapterSpec, count: int, seed: int = 0, directory: Path | None = None
) -> AdapterSet:
    """Adapters ``a0`` .. ``a<count-1>`` for ``model``: those on disk are reused, the missing ones made."""
    directory = (directory or default_directory(model, spec, seed)).expanduser().resolve()
    manifest = _manifest(model, spec, seed)
    _claim(directory, manifest)
    paths = [directory / f"a{i}" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not _complete(path)]
    if missing:
        _create(model, spec, seed, directory, missing)
    return AdapterSet(directory, paths, len(missing))


#: The kinds of ``--mix`` in the order requests take them, each with its tuner and config fields
#: (LoRA's rank, alpha and targets come from W2): two adapters of each kind that is served.
MIX: dict[str, tuple[str, dict[str, Any]]] = {
    "LORA": ("lora", {"lora_dropout": 0.0, "init_lora_weights": False}),
    "IA3": ("ia3", {"init_ia3_weights": False}),
    "PROMPT_TUNING": ("prompt-tuning", {"num_virtual_tokens": 20, "task_type": "CAUSAL_LM"}),
    "PREFIX_TUNING": ("prefix-tuning", {"num_virtual_tokens": 20, "task_type": "CAUSAL_LM"}),
}
MIX_PER_KIND = 2


def served_kinds() -> dict[str, str]:
    """``peft_type`` -> tuner name of every installed tuner that names an AdapterServing."""
    from kernel_core.contracts.records import PluginKind
    from kernel_core.plugins import get_plugin_manager

    registrations = get_plugin_manager().registrations(PluginKind.TUNER)
    return {r.spec.peft_type: r.spec.name for r in registrations if r.spec.serving is not None}


def ensure_mix(
    model: Path, spec: AdapterSpec, kinds: list[str], seed: int = 0, directory: Path | None = None
) -> AdapterSet:
    """:data:`MIX_PER_KIND` adapters of each of ``kinds`` (keys of :data:`MIX`) for ``model``,
    interleaved (``lora-0``, ``ia3-0``, ..., ``lora-1``, ...); those on disk are reused."""
    if directory is None:
        settings = f"{'-'.join(k.lower() for k in kinds)}-r{spec.rank}-alpha{spec.alpha}-seed{seed}"
        directory = _cache_root() / "mix-adapters" / f"{model.name}-{_model_hash(model)}" / settings
    directory = directory.expanduser().resolve()
    configs = {kind: _mix_config(kind, spec) for kind in kinds}
    manifest = {
        "format": _FORMAT, "model": model.name, "model_config_sha256": _model_hash(model), "seed": seed,
        "mix": {kind: [MIX[kind][0], fields] for kind, fields in configs.items()}, "adapter_seed": "seed + index",
    }
    _claim(directory, manifest)
    made = [(f"{kind.lower().replace('_', '-')}-{j}", kind) for j in range(MIX_PER_KIND) for kind in kinds]
    paths = [directory / name for name, _ in made]
    missing = [i for i, path in enumerate(paths) if not _complete(path)]
    if missing:
        import torch
        from transformers import AutoModelForCausalLM

        from kernel_core.peft import get_config, get_peft_model

        for i in missing:
            name, kind = made[i]
            base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                peft_model = get_peft_model(base, get_config(MIX[kind][0], **configs[kind]))
            with atomic_folder(paths[i]) as staging:
                peft_model.save_pretrained(staging)
    return AdapterSet(directory, paths, len(missing))


def _mix_config(kind: str, spec: AdapterSpec) -> dict[str, Any]:
    fields = dict(MIX[kind][1])
    if kind == "LORA":
        fields.update(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets))
    return fields


def _manifest(model: Path, spec: AdapterSpec, seed: int) -> dict[str, Any]:
    return {
        "format": _FORMAT, "model": model.name, "model_config_sha256": _model_hash(model), "rank": spec.rank,
        "alpha": spec.alpha, "targets": list(spec.targets), "seed": seed, "init_lora_weights": False,
        "adapter_i_seed": "seed + i",
    }


def _claim(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into a new or empty folder; accept a folder whose manifest matches."""
    path = directory / MANIFEST
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            found = None
        if found != manifest:
            raise KernelCoreError(
                f"adapter folder {directory} holds adapters made for other settings ({path}: {found}, wanted "
                f"{manifest}); pass another --adapter-dir or delete that folder"
            )
        return
    if directory.is_dir() and any(p for p in directory.iterdir() if not is_leftover(p)):
        raise KernelCoreError(
            f"adapter folder {directory} is not empty and has no {MANIFEST}: pass an empty or new --adapter-dir"
        )
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _FILES)


def _create(model_folder: Path, spec: AdapterSpec, seed: int, directory: Path, indices: list[int]) -> None:
    """Load the model once; wrap, draw, save and unwrap it once per missing adapter."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from kernel_core.peft import get_config, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, use_safetensors=True)
    config = get_config(
        "lora", r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules=list(spec.targets),
        init_lora_weights=False,
    )
    for i in tqdm(indices, desc=f"making LoRA adapters in {directory}", unit="adapter"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            peft_model = get_peft_model(model, config)
        with atomic_folder(directory / f"a{i}") as staging:  # replaces an incomplete one
            peft_model.save_pretrained(staging)
        model = peft_model.unload()


def _model_hash(model: Path) -> str:
    """Twelve hex digits of the model's ``config.json``: adapters fit the shapes it describes."""
    try:
        return hashlib.sha256((model / "config.json").read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise KernelCoreError(f"model folder {model} has no readable config.json: {exc}") from None
