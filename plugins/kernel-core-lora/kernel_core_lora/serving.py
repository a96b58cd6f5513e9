"""LoRA's side of the serving seam: a PEFT LoRA folder turned into what each fused projection of
the served model adds, the stacked slots those projections read, and the batched kernel call.

For a projection fusing ``P`` Hugging Face modules, an adapter becomes ``A [P * R, in]`` and
``B [out, P * R]`` (``R`` = ``max_lora_rank``): module ``i`` owns rows ``i*R .. i*R + r`` of ``A``
and the same columns of ``B`` (its output rows only), with its scaling folded into ``B``. Ranks
below ``R`` and modules the adapter leaves alone stay zero, so one kernel call serves them all.
Each projection gets ``A [max_loras, P * R, in]`` and ``B [max_loras, out, P * R]`` on the device;
the kernel (``kernel_core_lora_kernels``, chosen by the ``lora_kernel`` setting or by priority)
adds ``(x @ A[s].T) @ B[s].T`` for each token's slot ``s``. Everything the serving path cannot
run is refused in :meth:`LoraServing.convert`, by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kernel_core.contracts.adapter_targets import ProjectionTarget, shard_low_rank, unsharded_geometry
from kernel_core.contracts.lora import LoRAProjection, LoRAStep
from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.serving import AdapterServing, ServedAdapter, ServingContext, SlotBatch
from kernel_core.contracts.serving import refuse_foreign_tensors, refuse_shape_mismatches, refuse_unadapted_modules
from kernel_core.errors import AdapterLoadError, KernelCoreError
from kernel_core.peft.targets import pattern_value

_PREFIX = "base_model.model."
_FACTORS = {"lora_A.weight": 0, "lora_B.weight": 1}


@dataclass
class ServedLora(ServedAdapter):
    """One LoRA adapter laid out for the served model's fused projections."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  #: target key -> (A, B) padded to R
    rank: int

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.factors.values())


def slots_nbytes(targets: Mapping[str, ProjectionTarget], max_loras: int, max_rank: int, dtype: torch.dtype) -> int:
    """Bytes the slots take for these targets: checked before allocating."""
    return sum(
        max_loras * len(t.parts) * max_rank * (t.weight.shape[0] + t.weight.shape[1]) * dtype.itemsize
        for t in targets.values()
    )


class LoraServing(AdapterServing):
    """Stacked A/B slots on every LoRA target of the model, applied by the selected LoRA kernel;
    on a sharded model each rank's slots hold its shard of every adapter (S-LoRA's cut)."""

    supports_tensor_parallel = True

    @classmethod
    def slot_nbytes(cls, model, context: ServingContext) -> int:
        return slots_nbytes(model.adapter_targets(), context.max_slots, context.max_rank, context.dtype)

    def __init__(self, model, context: ServingContext) -> None:
        targets = model.adapter_targets()
        if not targets:
            raise KernelCoreError(f"enable_lora: the {type(model).__name__} model plugin exposes no adapter targets")
        kernel = context.select_kernel(PluginKind.LORA_KERNEL, context.settings.get("lora_kernel"))
        self.targets, self.max_rank, self.dtype = targets, context.max_rank, context.dtype
        self.step = LoRAStep()
        self.projections: dict[str, LoRAProjection] = {}
        for key, target in targets.items():
            out_features, in_features = target.weight.shape
            width = len(target.parts) * context.max_rank
            self.projections[key] = LoRAProjection(
                torch.zeros(context.max_slots, width, in_features, dtype=context.dtype, device=context.device),
                torch.zeros(context.max_slots, out_features, width, dtype=context.dtype, device=context.device),
                kernel,
                self.step,
            )
            target.hooks.append(self.projections[key])

    def write(self, slot: int, adapter: ServedAdapter) -> None:
        """Place ``adapter`` in ``slot``: its factors, laid out for the unsharded projections, cut
        to the shard each projection holds under tensor parallelism (:func:`shard_low_rank`)."""
        assert isinstance(adapter, ServedLora)
        for key, projection in self.projections.items():
            factors = adapter.factors.get(key)
            if factors is None:
                projection.lora_a[slot].zero_()
                projection.lora_b[slot].zero_()
            else:
                lora_a, lora_b = shard_low_rank(self.targets[key], factors[0][None], factors[1][None])
                projection.lora_a[slot].copy_(lora_a[0])
                projection.lora_b[slot].copy_(lora_b[0])

    def begin_step(self, batch: SlotBatch | None) -> None:
        self.step.batch = batch

    def convert(self, name: str, config, tensors: Mapping[str, torch.Tensor], where: str) -> ServedLora:
        """Check and lay out one LoRA adapter; :class:`AdapterLoadError` names whatever the
        serving path cannot run."""
        unsupported = [
            reason for reason, present in (
                ("use_dora (DoRA)", getattr(config, "use_dora", False)),
                ("modules_to_save", bool(config.modules_to_save)),
                (f"bias={getattr(config, 'bias', 'none')!r}", getattr(config, "bias", "none") != "none"),
            ) if present
        ]
        if unsupported:
            raise AdapterLoadError(
                f"{where}: the serving path cannot run {', '.join(unsupported)}; merge it into a model instead"
            )
        modules = _modules(tensors, where)
        targets, max_rank, dtype = self.targets, self.max_rank, self.dtype
        owners = {module: (key_, index) for key_, target in targets.items() for index, module in enumerate(target.parts)}
        refuse_unadapted_modules(modules, owners, where, "LoRA", "embeddings, lm_head, or a mixture-of-experts layer's "
                                 "router and routed experts")
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        mismatched: list[str] = []
        rank = 0
        for module, (lora_a, lora_b) in modules.items():
            target_key, index = owners[module]
            target = targets[target_key]
            parts, in_features = unsharded_geometry(target)  # the file's shapes, whatever this rank holds
            rows = parts[module]
            r = lora_a.shape[0]
            if r > max_rank:
                raise AdapterLoadError(f"{where}: rank {r} of {module} exceeds max_lora_rank {max_rank}")
            expected = {"lora_A": (r, in_features), "lora_B": (rows.stop - rows.start, r)}
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
                out_features = max(part.stop for part in parts.values())
                factors[target_key] = (
                    torch.zeros(width, in_features, dtype=dtype),
                    torch.zeros(out_features, width, dtype=dtype),
                )
            stacked_a, stacked_b = factors[target_key]
            start = index * max_rank
            stacked_a[start : start + r] = lora_a.to(dtype)
            stacked_b[rows, start : start + r] = (lora_b.double() * scaling).to(dtype)
            rank = max(rank, r)
        refuse_shape_mismatches(mismatched, where)
        return ServedLora(factors, rank)


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
    refuse_foreign_tensors(foreign, where, "LoRA A/B weights the serving path can run "
                           "(embedding LoRA, DoRA magnitudes, biases and saved modules are not served)")
    incomplete = sorted(module for module, pair in found.items() if None in pair)
    if incomplete:
        raise AdapterLoadError(f"{where}: lora_A or lora_B missing for {', '.join(incomplete)}")
    if not found:
        raise AdapterLoadError(f"{where}: the file holds no LoRA weights")
    return {module: (pair[0], pair[1]) for module, pair in found.items()}  # type: ignore[misc]
