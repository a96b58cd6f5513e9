"""A PEFT LoRA folder turned into what the serving path adds per fused projection.

For a projection fusing ``P`` Hugging Face modules, an adapter becomes ``A [P * R, in]`` and
``B [out, P * R]`` (``R`` = ``max_lora_rank``): module ``i`` owns rows ``i*R .. i*R + r`` of ``A``
and the same columns of ``B`` (its output rows only), with its scaling folded into ``B``. Ranks
below ``R`` and modules the adapter leaves alone stay zero, so one kernel call serves them all.
Everything the serving path cannot run is refused here, at load time, by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from kernel_core.contracts.lora import LoRATarget
from kernel_core.errors import AdapterLoadError, KernelCoreError
from kernel_core.peft.config import config_from_dict
from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from kernel_core.peft.targets import pattern_value

_PREFIX = "base_model.model."
_FACTORS = {"lora_A.weight": 0, "lora_B.weight": 1}


@dataclass
class ServingAdapter:
    """One adapter, converted for the served model and kept in host memory."""

    name: str
    key: int  #: unique per load: the prefix cache's identity of this adapter's KV
    path: Path
    rank: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  #: target key -> (A, B) padded to R
    #: The files as they were read (see :func:`fingerprint`): a later re-read must find the same.
    fingerprint: tuple[tuple[int, int, int], ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.factors.values())


def load_serving_adapter(
    name: str, path: str | Path, key: int, targets: Mapping[str, LoRATarget], max_rank: int, dtype: torch.dtype
) -> ServingAdapter:
    """Read, check and convert one PEFT-format LoRA folder; :class:`AdapterLoadError` names
    whatever the serving path cannot run."""
    source = Path(path)
    where = f"adapter {name!r} ({source})"
    stamp = fingerprint(source)
    config_dict, tensors = read_adapter(source)
    if config_dict.get("peft_type") != "LORA":  # before parsing: its method may not be installed
        raise AdapterLoadError(f"{where}: serving runs LoRA adapters, not {config_dict.get('peft_type')!r}")
    try:
        config = config_from_dict(config_dict)
    except KernelCoreError as exc:
        raise AdapterLoadError(f"{where}: {exc}") from None
    unsupported = [
        reason for reason, present in (
            ("use_dora (DoRA)", getattr(config, "use_dora", False)),
            ("modules_to_save", bool(config.modules_to_save)),
            (f"bias={getattr(config, 'bias', 'none')!r}", getattr(config, "bias", "none") != "none"),
        ) if present
    ]
    if unsupported:
        raise AdapterLoadError(f"{where}: the serving path cannot run {', '.join(unsupported)}; merge it into a model instead")
    modules = _modules(tensors, where)
    owners = {module: (key_, index) for key_, target in targets.items() for index, module in enumerate(target.parts)}
    unserved = sorted(module for module in modules if module not in owners)
    if unserved:
        served = sorted({module.rpartition(".")[2] for module in owners})
        raise AdapterLoadError(
            f"{where}: targets module(s) {', '.join(map(repr, unserved))}, which the served model does not adapt "
            f"(its LoRA targets are the {', '.join(served)} projections of its layers; not embeddings, lm_head, "
            "or a mixture-of-experts layer's router and routed experts)"
        )
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mismatched: list[str] = []
    rank = 0
    for module, (lora_a, lora_b) in modules.items():
        target_key, index = owners[module]
        target = targets[target_key]
        rows = target.parts[module]
        r = lora_a.shape[0]
        if r > max_rank:
            raise AdapterLoadError(f"{where}: rank {r} of {module} exceeds max_lora_rank {max_rank}")
        expected = {"lora_A": (r, target.weight.shape[1]), "lora_B": (rows.stop - rows.start, r)}
        wrong = [
            f"{module}.{part}.weight: file {tuple(t.shape)} vs model {shape}"
            for (part, shape), t in zip(expected.items(), (lora_a, lora_b)) if tuple(t.shape) != shape
        ]
        if wrong or mismatched:  # every mismatched tensor is named, not only the first
            mismatched += wrong
            continue
        alpha = pattern_value(module, getattr(config, "alpha_pattern", {}), config.lora_alpha)
        scaling = alpha / (math.sqrt(r) if config.use_rslora else r)
        if target_key not in factors:
            width = len(target.parts) * max_rank
            factors[target_key] = (
                torch.zeros(width, target.weight.shape[1], dtype=dtype),
                torch.zeros(target.weight.shape[0], width, dtype=dtype),
            )
        stacked_a, stacked_b = factors[target_key]
        start = index * max_rank
        stacked_a[start : start + r] = lora_a.to(dtype)
        stacked_b[rows, start : start + r] = (lora_b.double() * scaling).to(dtype)
        rank = max(rank, r)
    if mismatched:
        shown = "; ".join(mismatched[:8]) + (f"; and {len(mismatched) - 8} more" if len(mismatched) > 8 else "")
        raise AdapterLoadError(f"{where}: shape mismatch (saved for another base model?): {shown}")
    return ServingAdapter(name, key, source, rank, factors, stamp)


def fingerprint(folder: Path) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) of the adapter's files: what tells a re-read from host-cache
    eviction that the folder changed on disk since the adapter was loaded."""
    stamps = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            stat = (folder / name).stat()
        except OSError:
            continue  # read_adapter names what is missing
        stamps.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _modules(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (A, B) from PEFT file keys; anything else in the file is refused."""
    found: dict[str, list[torch.Tensor | None]] = {}
    foreign: list[str] = []
    for file_key, tensor in tensors.items():
        module, _, tail = file_key.removeprefix(_PREFIX).rpartition(".lora_")
        factor = _FACTORS.get(f"lora_{tail}")
        if not file_key.startswith(_PREFIX) or factor is None:
            foreign.append(file_key)
        else:
            found.setdefault(module, [None, None])[factor] = tensor
    if foreign:
        shown = ", ".join(repr(key) for key in sorted(foreign)[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise AdapterLoadError(
            f"{where}: tensor(s) {shown} are not LoRA A/B weights the serving path can run "
            "(embedding LoRA, DoRA magnitudes, biases and saved modules are not served)"
        )
    incomplete = sorted(module for module, pair in found.items() if None in pair)
    if incomplete:
        raise AdapterLoadError(f"{where}: lora_A or lora_B missing for {', '.join(incomplete)}")
    if not found:
        raise AdapterLoadError(f"{where}: the file holds no LoRA weights")
    return {module: (pair[0], pair[1]) for module, pair in found.items()}  # type: ignore[misc]
