"""The mixture-of-experts block a model plugin builds on (the role of vLLM's ``FusedMoE`` layer).

The block holds the router, the experts' weights stacked as the :class:`MoEKernel` contract
reads them, and an optional shared expert (Qwen2-MoE); the arithmetic is the selected kernel's.
Expert weights come in as tensors, per expert or already stacked, so the model plugin alone
knows its checkpoint's names; with ``quantization="int8"`` each expert is quantized as it
arrives and only the int8 copy and its scales are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernel_core.contracts.moe import MoEKernel, PreparedExperts, quantize_int8
from kernel_core.contracts.platform import Platform
from kernel_core.contracts.records import MOE_QUANTIZATIONS, PluginKind
from kernel_core.engine.selection import Needs, select_kernel, why_not
from kernel_core.errors import InvalidModelFolderError, PluginError, UnknownPluginError
from kernel_core.plugins import PluginManager, Registration, get_plugin_manager


@dataclass(frozen=True)
class MoEOptions:
    """What the engine hands a model plugin whose ``from_pretrained`` takes a ``moe`` keyword:
    the kernel its MoE blocks call and how they store expert weights (None: the model's dtype)."""

    kernel: MoEKernel
    quantization: str | None = None

    def __post_init__(self) -> None:
        _check_quantization(self.quantization, "quantization")

    @classmethod
    def select(
        cls,
        device: torch.device,
        *,
        kernel: str | None = None,
        quantization: str | None = None,
        manager: PluginManager | None = None,
        create: Callable[[Registration], MoEKernel] | None = None,
        platform: Platform | None = None,
    ) -> MoEOptions:
        """The kernel named ``kernel``, else ``platform``'s ``default_moe_kernel`` where it runs
        here, else the highest-priority one that runs on ``device`` and consumes ``quantization``;
        one whose ``unavailable_reason()`` gives a reason never runs. Errors name the setting
        (``moe_kernel``, ``moe_quantization``) and the kernels installed. ``create`` builds the
        chosen one (the engine's applies its ``plugin_options``); default
        :meth:`PluginManager.create`, its default settings."""
        manager = manager or get_plugin_manager()
        registration = _moe_kernel(manager, kernel, device, quantization, platform)
        return cls((create or manager.create)(registration), quantization)


def _check_quantization(value: str | None, field: str) -> None:
    if value is not None and value not in MOE_QUANTIZATIONS:
        raise ValueError(f"{field} {value!r} is not one of {sorted(MOE_QUANTIZATIONS)} or None")


def _moe_kernel(
    manager: PluginManager, name: str | None, device: torch.device, quantization: str | None, platform: Platform | None
) -> Registration:
    """The registration :meth:`MoEOptions.select` loads (see there)."""
    _check_quantization(quantization, "moe_quantization")
    installed = manager.registrations(PluginKind.MOE_KERNEL)
    described = ", ".join(
        f"{r.name} (on {'/'.join(sorted(r.spec.device_types))}; quantizations: "
        f"{'/'.join(sorted(r.spec.quantizations)) or 'none'})"
        for r in installed
    ) or "none"

    def consumes(registration: Registration) -> str | None:
        if quantization is None or quantization in registration.spec.quantizations:
            return None
        return f"it does not consume {quantization} expert weights"

    needs = Needs(device.type)

    def fits(registration: Registration) -> bool:
        return why_not(manager, registration, needs, consumes) is None

    if name is None:
        if not any(fits(r) for r in installed):
            wanted = f" with moe_quantization {quantization!r}" if quantization else ""
            unavailable = "; ".join(
                f"{r.name}: {why}" for r in installed if (why := why_not(manager, r, needs, consumes)) is not None
            )
            why = f" ({unavailable})" if unavailable else ""
            raise UnknownPluginError(f"no installed MoE kernel runs on {device.type}{wanted}; installed: {described}{why}")
        if platform is None:
            return manager.select(PluginKind.MOE_KERNEL, accept=fits)
        return select_kernel(manager, platform, PluginKind.MOE_KERNEL, None, needs, check=consumes).registration
    try:
        registration = manager.get(PluginKind.MOE_KERNEL, name)
    except UnknownPluginError:
        raise UnknownPluginError(f"moe_kernel {name!r} is not installed; installed MoE kernels: {described}") from None
    if device.type not in registration.spec.device_types:
        raise PluginError(
            f"moe_kernel {name!r} does not run on {device.type} "
            f"(it runs on {', '.join(sorted(registration.spec.device_types))})"
        )
    if quantization is not None and quantization not in registration.spec.quantizations:
        raise PluginError(
            f"moe_quantization {quantization!r}: moe_kernel {name!r} does not consume {quantization} expert "
            f"weights; installed MoE kernels: {described}"
        )
    problem = why_not(manager, registration, needs)
    if problem is not None:
        raise PluginError(f"moe_kernel {name!r} cannot run on this machine ({device.type}): {problem}")
    return registration


@dataclass(eq=False)
class ExpertWeights:
    """Every expert's SwiGLU weights, stacked: ``gate_up`` ``[E, 2 * I, H]`` (gate rows then up
    rows), ``down`` ``[E, H, I]``, in the model's dtype, or int8 with float32 scales ``[E, 2 * I]``
    and ``[E, H]`` (one per expert and output channel)."""

    gate_up: torch.Tensor
    down: torch.Tensor
    gate_up_scale: torch.Tensor | None = None
    down_scale: torch.Tensor | None = None

    @classmethod
    def from_experts(
        cls,
        experts: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        *,
        num_experts: int,
        quantization: str | None,
        dtype: torch.dtype,
        device: torch.device,
        name: str = "experts",
    ) -> ExpertWeights:
        """Stack ``(gate [I, H], up [I, H], down [H, I])`` per expert, as Hugging Face
        checkpoints store them (Mixtral's ``w1``, ``w3``, ``w2``). ``experts`` may be a generator
        reading one expert at a time: each is converted (or quantized) into its slot before the
        next is read, so peak memory stays near the stored size. ``name`` prefixes errors."""
        if num_experts < 1:
            raise InvalidModelFolderError(f"{name}: num_experts {num_experts} must be at least 1")
        stack: _Stack | None = None
        count = 0
        for expert, (gate, up, down) in enumerate(experts):
            if expert == num_experts:
                raise InvalidModelFolderError(f"{name}: more experts than num_experts ({num_experts})")
            if stack is None:
                stack = _Stack(num_experts, gate.shape, quantization, dtype, device, name)
            stack.put(expert, gate, up, down)
            count = expert + 1
        if stack is None or count != num_experts:
            raise InvalidModelFolderError(f"{name}: got {count} experts, expected num_experts ({num_experts})")
        return stack.weights()

    @classmethod
    def from_stacked(
        cls,
        gate_up: torch.Tensor,
        down: torch.Tensor,
        *,
        quantization: str | None,
        dtype: torch.dtype,
        device: torch.device,
        name: str = "experts",
    ) -> ExpertWeights:
        """From 3-D ``gate_up`` ``[E, 2 * I, H]`` and ``down`` ``[E, H, I]`` (transformers 5's
        ``gate_up_proj`` and ``down_proj``), converted or quantized one expert at a time."""
        if gate_up.dim() != 3 or gate_up.shape[1] % 2:
            raise InvalidModelFolderError(
                f"{name}: gate_up has shape {tuple(gate_up.shape)}, expected [experts, 2 * intermediate, hidden]"
            )
        intermediate = gate_up.shape[1] // 2
        expected = (gate_up.shape[0], gate_up.shape[2], intermediate)
        if tuple(down.shape) != expected:
            raise InvalidModelFolderError(
                f"{name}: down has shape {tuple(down.shape)}, expected {expected} [experts, hidden, intermediate] "
                f"to match gate_up {tuple(gate_up.shape)}"
            )
        experts = ((w[:intermediate], w[intermediate:], d) for w, d in zip(gate_up, down))
        return cls.from_experts(
            experts, num_experts=gate_up.shape[0], quantization=quantization, dtype=dtype, device=device, name=name
        )

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.gate_up.shape[2]

    @property
    def intermediate_size(self) -> int:
        return self.down.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes the expert weights occupy, scales included (for the memory a quantization saves)."""
        tensors = (self.gate_up, self.down, self.gate_up_scale, self.down_scale)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def without_storage(self) -> ExpertWeights:
        """The same shapes and dtypes as ``meta`` tensors, holding no memory (for a kernel whose
        :class:`PreparedExperts` no longer reads the stacked weights)."""
        return ExpertWeights(*(None if t is None else t.to("meta") for t in (self.gate_up, self.down, self.gate_up_scale, self.down_scale)))

    def scales(self) -> dict[str, torch.Tensor]:
        """The keyword arguments :meth:`MoEKernel.forward` takes for these weights: the scales
        when they are int8, none otherwise (kernels without int8 support never see them)."""
        if self.gate_up_scale is None or self.down_scale is None:
            return {}
        return {"w_gate_up_scale": self.gate_up_scale, "w_down_scale": self.down_scale}


class _Stack:
    """The stacked tensors :meth:`ExpertWeights.from_experts` fills, expert by expert, checking
    every expert's shapes against the first one's."""

    def __init__(
        self,
        num_experts: int,
        gate_shape: torch.Size,
        quantization: str | None,
        dtype: torch.dtype,
        device: torch.device,
        name: str,
    ) -> None:
        _check_quantization(quantization, f"{name}: quantization")
        if len(gate_shape) != 2:
            raise InvalidModelFolderError(
                f"{name}: expert 0 gate has shape {tuple(gate_shape)}, expected [intermediate, hidden]"
            )
        intermediate, hidden = gate_shape
        self.shapes = {"gate": (intermediate, hidden), "up": (intermediate, hidden), "down": (hidden, intermediate)}
        self.name = name
        self.quantized = quantization is not None
        stored = torch.int8 if self.quantized else dtype
        self.gate_up = torch.empty(num_experts, 2 * intermediate, hidden, dtype=stored, device=device)
        self.down = torch.empty(num_experts, hidden, intermediate, dtype=stored, device=device)
        if self.quantized:
            self.gate_up_scale = torch.empty(num_experts, 2 * intermediate, dtype=torch.float32, device=device)
            self.down_scale = torch.empty(num_experts, hidden, dtype=torch.float32, device=device)

    def put(self, expert: int, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        for role, tensor in (("gate", gate), ("up", up), ("down", down)):
            if tuple(tensor.shape) != self.shapes[role]:
                raise InvalidModelFolderError(
                    f"{self.name}: expert {expert} {role} has shape {tuple(tensor.shape)}, expected "
                    f"{self.shapes[role]} (from expert 0's gate [intermediate, hidden])"
                )
        intermediate = self.shapes["gate"][0]
        if not self.quantized:
            self.gate_up[expert, :intermediate].copy_(gate)
            self.gate_up[expert, intermediate:].copy_(up)
            self.down[expert].copy_(down)
            return
        gate_up, gate_up_scale = quantize_int8(torch.cat((gate, up))[None])
        down, down_scale = quantize_int8(down[None])
        self.gate_up[expert].copy_(gate_up[0])
        self.down[expert].copy_(down[0])
        self.gate_up_scale[expert].copy_(gate_up_scale[0])
        self.down_scale[expert].copy_(down_scale[0])

    def weights(self) -> ExpertWeights:
        if not self.quantized:
            return ExpertWeights(self.gate_up, self.down)
        return ExpertWeights(self.gate_up, self.down, self.gate_up_scale, self.down_scale)


class FusedMoE:
    """One mixture-of-experts layer: router logits, the kernel over the experts, plus an
    optional shared expert every token goes through (Qwen2-MoE), scaled by the sigmoid of its
    gate when one is given.

    ``router`` is ``[E, H]`` (the ``gate`` Linear of Mixtral and Qwen-MoE); ``top_k`` and
    ``renormalize`` are the config's ``num_experts_per_tok`` and ``norm_topk_prob`` (always on
    for Mixtral). ``shared_expert`` is any callable ``[T, H] -> [T, H]`` (a dense MLP of the
    modeling package), ``shared_expert_gate`` its ``[1, H]`` gate weight. ``name`` prefixes errors.
    """

    def __init__(
        self,
        router: torch.Tensor,
        experts: ExpertWeights,
        *,
        top_k: int,
        renormalize: bool,
        kernel: MoEKernel,
        shared_expert: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shared_expert_gate: torch.Tensor | None = None,
        name: str = "moe",
    ) -> None:
        num_experts, hidden = experts.num_experts, experts.hidden_size
        if not 1 <= top_k <= num_experts:
            raise InvalidModelFolderError(
                f"{name}: top_k {top_k} must be between 1 and the number of experts ({num_experts})"
            )
        if tuple(router.shape) != (num_experts, hidden):
            raise InvalidModelFolderError(
                f"{name}: router has shape {tuple(router.shape)}, expected ({num_experts}, {hidden}) [experts, hidden]"
            )
        if shared_expert_gate is not None and (shared_expert is None or tuple(shared_expert_gate.shape) != (1, hidden)):
            raise InvalidModelFolderError(
                f"{name}: shared_expert_gate (shape {tuple(shared_expert_gate.shape)}) needs a shared_expert and "
                f"shape (1, {hidden})"
            )
        self.router = router
        #: The kernel's own form of the experts (:meth:`MoEKernel.prepare`), None if it has none
        #: (a kernel of plugin API 1.3 that does not subclass :class:`MoEKernel` has no ``prepare``).
        prepare = getattr(kernel, "prepare", None)
        self.prepared: PreparedExperts | None = None if prepare is None else prepare(experts.gate_up, experts.down, **experts.scales())
        self.experts = experts if self.prepared is None or self.prepared.reads_stacked else experts.without_storage()
        self.top_k = top_k
        self.renormalize = renormalize
        self.kernel = kernel
        self.shared_expert = shared_expert
        self.shared_expert_gate = shared_expert_gate

    @property
    def nbytes(self) -> int:
        """Bytes of the routed experts' weights (what ``moe_quantization`` shrinks)."""
        return self.experts.nbytes

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, H]`` -> ``[T, H]``: each token's routed experts, plus the shared expert."""
        experts = self.experts
        prepared = {} if self.prepared is None else {"prepared": self.prepared.state}
        out = self.kernel.forward(
            hidden, F.linear(hidden, self.router), experts.gate_up, experts.down, self.top_k, self.renormalize,
            **experts.scales(), **prepared,
        )
        if self.shared_expert is None:
            return out
        shared = self.shared_expert(hidden)
        if self.shared_expert_gate is not None:
            shared = shared * torch.sigmoid(F.linear(hidden, self.shared_expert_gate))
        return out.add_(shared)
