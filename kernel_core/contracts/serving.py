"""The serving seam: how a tuner plugin's adapters are served by the engine (plugin API 1.4, additive).

A tuner plugin that can serve its adapters names an :class:`AdapterServing` subclass in its
``TunerSpec.serving``. The engine builds one instance per served kind when adapter serving is on
(``enable_lora``) and then knows nothing of the method: its registry reads a PEFT folder, finds
the serving by the folder's ``peft_type`` and asks it to :meth:`~AdapterServing.convert` the
files into a :class:`ServedAdapter` kept in host memory; its slots (``max_loras`` per engine,
shared by every kind) call :meth:`~AdapterServing.write` to place an adapter in a slot on the
device; and each step it hands every kind a :class:`SlotBatch` of the tokens whose slot holds an
adapter of that kind (:meth:`~AdapterServing.begin_step`), so the method's code inside the model
applies it. Prefix-cache keys are the registry's, one per load, whatever the kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kernel_core.errors import AdapterLoadError

#: The slot of a token that uses no adapter.
NO_SLOT = -1


@dataclass(frozen=True)
class SlotBatch:
    """Which slot each token of a step uses, in the two forms kernels want, and where it sits.

    ``token_slots`` is ``[T]`` (``NO_SLOT`` for rows this batch leaves alone). ``segments``
    lists ``(start, end, slot)`` runs of consecutive tokens sharing a slot (a request's tokens
    are consecutive), for segmented GEMMs; ``slot_rows`` gives, per slot in use, the token rows
    as a device tensor, for gather-based kernels. ``positions`` ``[T]`` is each token's position
    in its sequence (plugin API 1.5; virtual tokens count), for methods acting on some positions
    only (prompt and prefix tuning's virtual tokens).
    """

    token_slots: torch.Tensor
    segments: tuple[tuple[int, int, int], ...]
    slot_rows: dict[int, torch.Tensor]
    positions: torch.Tensor | None = None

    @classmethod
    def from_token_slots(
        cls, slots: list[int], device: torch.device, positions: torch.Tensor | None = None
    ) -> SlotBatch:
        segments: list[tuple[int, int, int]] = []
        rows: dict[int, list[int]] = {}
        for row, slot in enumerate(slots):
            if segments and segments[-1][2] == slot and segments[-1][1] == row:
                start, _, _ = segments[-1]
                segments[-1] = (start, row + 1, slot)
            else:
                segments.append((row, row + 1, slot))
            if slot != NO_SLOT:
                rows.setdefault(slot, []).append(row)
        return cls(
            token_slots=torch.tensor(slots, dtype=torch.int64, device=device),
            segments=tuple(s for s in segments if s[2] != NO_SLOT),
            slot_rows={slot: torch.tensor(r, dtype=torch.int64, device=device) for slot, r in rows.items()},
            positions=positions,
        )

    @property
    def empty(self) -> bool:
        return not self.slot_rows


class ServedAdapter(ABC):
    """One adapter converted for the served model, kept in host memory between its uses.

    The registry keeps it under a host-memory LRU (``max_cpu_loras``) and hands it back to
    :meth:`AdapterServing.write`; what it holds is the method's business."""

    #: What ``list_adapters`` reports as the adapter's rank (0 for a method without one).
    rank: int = 0
    #: Virtual tokens every request on this adapter reads before its prompt (plugin API 1.5;
    #: prompt tuning, prefix tuning): the engine puts that many placeholder tokens at positions
    #: ``0 .. V - 1``, the prompt after them (as PEFT counts them), and the kind's hooks supply
    #: their embeddings or keys and values (``SlotBatch.positions`` tells them apart). They count
    #: toward ``max_model_len`` and the KV cache; they are never reported, sampled or penalised.
    num_virtual_tokens: int = 0

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Host bytes it holds."""


@dataclass(frozen=True)
class ServingContext:
    """What the engine tells a serving when it builds it.

    ``max_slots`` is ``max_loras`` (slots numbered ``0 .. max_slots - 1``); ``max_rank`` is
    ``max_lora_rank``, the largest rank an adapter may have, for methods with ranks; ``settings``
    are the engine's settings (e.g. a method's kernel name); ``select_kernel(kind, name)`` returns
    an instance of the plugin of ``kind`` named ``name`` (None: by priority) that runs on
    ``device``, as the engine selects its own kernels."""

    max_slots: int
    max_rank: int
    dtype: torch.dtype
    device: torch.device
    settings: Mapping[str, Any]
    select_kernel: Callable[[Any, str | None], Any]


class AdapterServing(ABC):
    """How one adapter kind (one ``peft_type``) is served; the tuner plugin implements it.

    Built once per engine, after the model: ``__init__`` allocates the device slots
    (``context.max_slots`` of them) inside the model, where the method's code reads them during
    a forward. Every method may be called from the engine's thread only, except
    :meth:`convert`, which may run in another thread while the engine steps (it must not touch
    the slots)."""

    #: Whether it serves a model split by tensor parallelism (plugin API 1.7): :meth:`convert`
    #: lays adapters out for the unsharded model (``adapter_targets.unsharded_geometry``) and
    #: :meth:`write` cuts them to the rank's shard (``adapter_targets.shard_low_rank``). A kind
    #: whose serving says False is refused, by name, on an engine with ``tensor_parallel_size`` > 1.
    supports_tensor_parallel: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def slot_nbytes(cls, model: Any, context: ServingContext) -> int:
        """Device bytes ``__init__`` will allocate for ``model``: checked against free memory
        before anything is allocated; 0 when the model offers this kind nothing to adapt."""

    @abstractmethod
    def __init__(self, model: Any, context: ServingContext) -> None:
        """Allocate the slots on ``model`` (a :class:`~kernel_core.contracts.model.ModelArchitecture`);
        raise :class:`~kernel_core.errors.KernelCoreError` naming why the model cannot serve this kind."""

    @abstractmethod
    def convert(self, name: str, config: Any, tensors: Mapping[str, torch.Tensor], where: str) -> ServedAdapter:
        """Check and convert one loaded PEFT folder (its parsed config and file tensors).

        Everything the serving path cannot run is refused here, with
        :class:`~kernel_core.errors.AdapterLoadError` whose message starts with ``where`` and
        names each reason, so that a request never fails later for it."""

    @abstractmethod
    def write(self, slot: int, adapter: ServedAdapter) -> None:
        """Place ``adapter`` (one this serving converted) in ``slot`` on the device. A slot an
        adapter of another kind held before keeps stale data here: no batch sends this kind the
        rows of a slot it does not hold."""

    @abstractmethod
    def begin_step(self, batch: SlotBatch | None) -> None:
        """Before a forward: the slots of this step's tokens whose adapter is of this kind
        (other rows ``NO_SLOT``); None when no token of the step uses this kind."""

    def end_step(self) -> None:
        """After the forward (also when it failed)."""
        self.begin_step(None)


# -- refusals that servings of methods adapting the model's projections share ------------------------


def _listed(items: Sequence[str], limit: int, sep: str, more: str) -> str:
    """The first ``limit`` items joined with ``sep``, then ``more`` and how many were left out: a
    message stays readable for a file with hundreds of bad tensors."""
    return sep.join(items[:limit]) + (f"{more}{len(items) - limit} more" if len(items) > limit else "")


def refuse_foreign_tensors(foreign: Iterable[str], where: str, expected: str) -> None:
    """Refuse a file holding tensors the serving cannot place (named, the first six), ``expected``
    saying what it can: e.g. ``"scale vectors the serving path can run (saved modules are not served)"``."""
    names = sorted(foreign)
    if names:
        raise AdapterLoadError(f"{where}: tensor(s) {_listed([repr(n) for n in names], 6, ', ', ' and ')} are not {expected}")


def refuse_unadapted_modules(modules: Iterable[str], adapted: Collection[str], where: str, kind: str, excluded: str) -> None:
    """Refuse an adapter of ``kind`` whose file names modules outside ``adapted`` (the HF module
    names of the model's adapter targets' parts), naming them and the projections that are
    adapted; ``excluded`` lists what never is (e.g. ``"embeddings, lm_head, or ..."``)."""
    unadapted = sorted(module for module in modules if module not in adapted)
    if unadapted:
        served = sorted({module.rpartition(".")[2] for module in adapted})
        raise AdapterLoadError(
            f"{where}: targets module(s) {', '.join(map(repr, unadapted))}, which the served model does not adapt "
            f"(its {kind} targets are the {', '.join(served)} projections of its layers; not {excluded})"
        )


def refuse_shape_mismatches(mismatched: Sequence[str], where: str) -> None:
    """Refuse a file saved for another base model, naming its wrong-shape tensors (the first eight:
    ``"<tensor>: file <shape> vs model <shape>"`` each), all checked before refusing."""
    if mismatched:
        raise AdapterLoadError(f"{where}: shape mismatch (saved for another base model?): {_listed(mismatched, 8, '; ', '; and ')}")
