"""IA3's side of the serving seam: a PEFT IA3 folder turned into per-projection scale vectors, the
slots those projections read, and the per-step scaling of the rows that use them.

A PEFT IA3 file holds one vector ``ia3_l`` per target module: ``[1, in]`` for a feed-forward module
(``feedforward_modules``), which scales the module's input, and ``[out, 1]`` for any other, which
scales its output (peft's ``IA3Layer.forward``; ``fan_in_fan_out`` only transposes the vector when
merging into a ``Conv1D`` weight, so unmerged it changes nothing). Each projection of the served
model gets ``inputs [max_loras, in]`` and ``outputs [max_loras, out]`` on the device, ones where a
slot's adapter leaves it alone: a module fused with others (``k_proj`` in ``qkv_proj``) scales only
its own output columns. An input-scaled module can share its GEMM's input only with modules scaling
it by the same vector, which is checked at load. Each step, only the rows whose slot holds an IA3
adapter are scaled: one gather of their scale vectors and one multiply per scaled projection (a
broadcast multiply when one adapter has every row), and projections no slot of the step scales
are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kernel_core.contracts.adapter_targets import (
    ProjectionHook, ProjectionTarget, shard_inputs, shard_outputs, unsharded_geometry,
)
from kernel_core.contracts.serving import AdapterServing, ServedAdapter, ServingContext, SlotBatch
from kernel_core.contracts.serving import refuse_foreign_tensors, refuse_shape_mismatches, refuse_unadapted_modules
from kernel_core.errors import AdapterLoadError, KernelCoreError
from kernel_core_ia3.config import is_feedforward

#: The scales' dtype whatever the model's: peft keeps IA3 vectors of a half-precision model in
#: float32 (``autocast_adapter_dtype``) and multiplies in float32.
SCALE_DTYPE = torch.float32
_PREFIX = "base_model.model."
_SUFFIX = ".ia3_l"


@dataclass
class ServedIA3(ServedAdapter):
    """One IA3 adapter laid out for the served model's projections: per target key, the input
    scale ``[in]`` and the output scale ``[out]`` (ones on columns it leaves alone), or None."""

    scales: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for pair in self.scales.values() for t in pair if t is not None)


class _Step:
    """This step's IA3 rows, shared by every projection, in the cheapest form that scales them: when
    they are every token of the step, the one slot's scales broadcast (or each token's gathered);
    otherwise those rows gathered, scaled and written back."""

    def __init__(self) -> None:
        self.set(None)

    def set(self, batch: SlotBatch | None) -> None:
        self.used: frozenset[int] = frozenset() if batch is None else frozenset(batch.slot_rows)
        self.single: int | None = None  #: the one slot of every token
        self.every: torch.Tensor | None = None  #: each token's slot, every token on an IA3 slot
        self.rows: torch.Tensor | None = None  #: else the IA3 rows, slot by slot
        self.slots: torch.Tensor | None = None  #: and the slot of each of them
        if batch is None or batch.empty:
            return
        if sum(rows.numel() for rows in batch.slot_rows.values()) == batch.token_slots.numel():
            if len(batch.slot_rows) == 1:
                self.single = next(iter(batch.slot_rows))
            else:
                self.every = batch.token_slots
        else:
            self.rows = torch.cat(list(batch.slot_rows.values()))
            self.slots = batch.token_slots.index_select(0, self.rows)

    def scale(self, values: torch.Tensor, table: torch.Tensor, in_place: bool) -> torch.Tensor:
        """``values`` ``[T, width]`` with the IA3 rows times their slot's row of ``table``: in
        place, or as a new tensor (``values`` untouched)."""
        if self.rows is not None:
            scaled = _times(values.index_select(0, self.rows), table.index_select(0, self.slots))
            return values.index_copy_(0, self.rows, scaled) if in_place else values.index_copy(0, self.rows, scaled)
        scales = table[self.single] if self.single is not None else table.index_select(0, self.every)
        if in_place and values.dtype == SCALE_DTYPE:
            return values.mul_(scales)
        scaled = _times(values, scales)
        return values.copy_(scaled) if in_place else scaled


def _times(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``values * scales`` in float32, rounded once to ``values``' dtype, as peft computes it."""
    return (values.to(SCALE_DTYPE) * scales).to(values.dtype)


class IA3Projection(ProjectionHook):
    """The scale slots of one projection, applied to this step's IA3 rows around its GEMM."""

    def __init__(self, in_features: int, out_features: int, context: ServingContext, step: _Step) -> None:
        self.inputs = torch.ones(context.max_slots, in_features, dtype=SCALE_DTYPE, device=context.device)
        self.outputs = torch.ones(context.max_slots, out_features, dtype=SCALE_DTYPE, device=context.device)
        #: Slots whose adapter scales this projection's input / output (the others hold ones).
        self.input_slots: set[int] = set()
        self.output_slots: set[int] = set()
        self.step = step

    def write(self, slot: int, scales: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        for table, vector, scaled in zip((self.inputs, self.outputs), scales, (self.input_slots, self.output_slots)):
            if vector is None:
                table[slot].fill_(1.0)
                scaled.discard(slot)
            else:
                table[slot].copy_(vector)
                scaled.add(slot)

    def before(self, x: torch.Tensor) -> torch.Tensor:
        if self.step.used.isdisjoint(self.input_slots):
            return x
        return self.step.scale(x, self.inputs, in_place=False)

    def after(self, output: torch.Tensor, x: torch.Tensor) -> None:
        if not self.step.used.isdisjoint(self.output_slots):
            self.step.scale(output, self.outputs, in_place=True)


class IA3Serving(AdapterServing):
    """Input and output scale slots on every adapter target of the model; on a sharded model each
    rank's slots hold the scales of the features its shard reads and computes."""

    supports_tensor_parallel = True

    @classmethod
    def slot_nbytes(cls, model, context: ServingContext) -> int:
        return sum(
            context.max_slots * (t.weight.shape[0] + t.weight.shape[1]) * SCALE_DTYPE.itemsize
            for t in model.adapter_targets().values()
        )

    def __init__(self, model, context: ServingContext) -> None:
        targets = model.adapter_targets()
        if not targets:
            raise KernelCoreError(f"enable_lora: the {type(model).__name__} model plugin exposes no adapter targets")
        self.targets, self.step = targets, _Step()
        self.projections: dict[str, IA3Projection] = {}
        for key, target in targets.items():
            out_features, in_features = target.weight.shape
            self.projections[key] = IA3Projection(in_features, out_features, context, self.step)
            target.hooks.append(self.projections[key])

    def write(self, slot: int, adapter: ServedAdapter) -> None:
        """Place ``adapter``'s scales, laid out for the unsharded projections, cut to each
        projection's shard (:func:`shard_inputs`, :func:`shard_outputs`)."""
        assert isinstance(adapter, ServedIA3)
        for key, projection in self.projections.items():
            target, (scale_in, scale_out) = self.targets[key], adapter.scales.get(key, (None, None))
            projection.write(slot, (
                None if scale_in is None else shard_inputs(target, scale_in),
                None if scale_out is None else shard_outputs(target, scale_out),
            ))

    def begin_step(self, batch: SlotBatch | None) -> None:
        self.step.set(batch)

    def convert(self, name: str, config, tensors: Mapping[str, torch.Tensor], where: str) -> ServedIA3:
        """Check and lay out one IA3 adapter; :class:`AdapterLoadError` names whatever the
        serving path cannot run."""
        if config.modules_to_save:
            raise AdapterLoadError(
                f"{where}: the serving path cannot run modules_to_save ({', '.join(config.modules_to_save)}); "
                "merge it into a model instead"
            )
        vectors, foreign = _vectors(tensors, where)
        owners = {module: key for key, target in self.targets.items() for module in target.parts}
        refuse_unadapted_modules(vectors, owners, where, "IA3", "embeddings, lm_head, convolutions, or a mixture-of-experts "
                                 "layer's router and routed experts")
        refuse_foreign_tensors(foreign, where, "IA3 vectors the serving path can run (saved modules are not served)")
        inputs: dict[str, dict[str, torch.Tensor]] = {}
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        mismatched: list[str] = []
        for module, vector in vectors.items():
            target = self.targets[owners[module]]
            parts, in_features = unsharded_geometry(target)  # the file's shapes, whatever this rank holds
            columns = parts[module]
            feedforward = (
                is_feedforward(module, config.feedforward_modules)
                if config.feedforward_modules is not None else vector.shape[0] == 1
            )
            shape = (1, in_features) if feedforward else (columns.stop - columns.start, 1)
            if tuple(vector.shape) != shape:
                scales = "input (feed-forward module)" if feedforward else "output"
                mismatched.append(f"{module}{_SUFFIX}: file {tuple(vector.shape)} vs model {shape}, scaling its {scales}")
                continue
            (inputs if feedforward else outputs).setdefault(owners[module], {})[module] = vector.flatten()
        refuse_shape_mismatches(mismatched, where)
        scales: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for key, target in self.targets.items():
            scale_in = self._input_scale(key, target, inputs.get(key), where)
            scale_out = None
            if key in outputs:
                parts, in_features = unsharded_geometry(target)
                if in_features != target.weight.shape[1] and getattr(target, "bias", None) is not None:
                    raise AdapterLoadError(
                        f"{where}: {', '.join(sorted(outputs[key]))} scale(s) the output of a biased projection whose "
                        "input is split by tensor parallelism: the bias is added after the ranks' sum, so the scale "
                        "cannot cover it; serve this adapter with tensor_parallel_size 1"
                    )
                scale_out = torch.ones(max(part.stop for part in parts.values()), dtype=SCALE_DTYPE)
                for module, vector in outputs[key].items():
                    scale_out[parts[module]] = vector.to(SCALE_DTYPE)
            if scale_in is not None or scale_out is not None:
                scales[key] = (scale_in, scale_out)
        return ServedIA3(scales)

    def _input_scale(
        self, key: str, target: ProjectionTarget, inputs: dict[str, torch.Tensor] | None, where: str
    ) -> torch.Tensor | None:
        """The one input scale of a projection: every module it computes must scale its (shared)
        input by the same vector, or the serving path cannot run the adapter."""
        if not inputs:
            return None
        first = next(iter(inputs.values()))
        if len(inputs) != len(target.parts) or any(not torch.equal(v, first) for v in inputs.values()):
            raise AdapterLoadError(
                f"{where}: {', '.join(sorted(inputs))} scale(s) the input (feedforward_modules), but the served "
                f"model computes {', '.join(target.parts)} in one GEMM ({key}) reading one input: an input scale "
                "is served only when every module of that GEMM scales it by the same vector"
            )
        return first.to(SCALE_DTYPE)


def _vectors(tensors: Mapping[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Module name -> its IA3 vector, from PEFT file keys, and the file keys that are none."""
    found: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for file_key, tensor in tensors.items():
        if file_key.startswith(_PREFIX) and file_key.endswith(_SUFFIX):
            found[file_key[len(_PREFIX) : -len(_SUFFIX)]] = tensor
        else:
            foreign.append(file_key)
    if not found:
        raise AdapterLoadError(f"{where}: the file holds no IA3 vectors")
    return found, foreign
