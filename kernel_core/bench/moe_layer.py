"""The MoE layer alone: each installed MoE kernel against transformers' own MoE block on the same
weights and tokens, over token counts from one (a decode step) to thousands (a prefill chunk).

The baseline is the benchmark model's MoE block built by transformers, run with its expert loop
(``experts_implementation="eager"``, the per-expert loop the issue names) and with the
implementation transformers picks by default (``grouped_mm`` where torch can dispatch it). Ours is
the router GEMM plus the kernel's ``forward``, as a model plugin calls it. Each kernel's output is
checked against the baseline's before it is timed, so a fast wrong kernel is reported, not praised.

Beside them, :data:`DENSE_FLOOR` times the same arithmetic as one GEMM pair: every (token, choice)
row through one expert's weights, with no routing, gather, loop or weighted sum, by the fastest of
the GEMM paths torch offers here (``F.linear``; oneDNN's linear on packed weights where torch has
it, which on an AMD EPYC ran float32 at twice MKL's speed). Once the GEMMs are
compute-bound (about a thousand tokens) no kernel that computes the layer exactly with torch's GEMMs
can beat it, so the loop's time over it is the most such a kernel can gain there. Below that the
GEMMs are bound by reading every expert's weights, which the floor (one expert's) does not model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kernel_core.bench import median_seconds
from kernel_core.bench.moe_model import CONFIG, MODEL_TYPE, SEED
from kernel_core.contracts.records import PluginKind
from kernel_core.plugins import PluginManager

#: transformers' expert implementations timed as baselines: the loop first (the judged one).
HF_IMPLEMENTATIONS = ("eager", "grouped_mm")
#: The same GEMMs as one dense pair on one expert's weights: the compute floor of an exact kernel.
DENSE_FLOOR = "floor:dense-gemm"
DEFAULT_TOKEN_COUNTS = (1, 4, 16, 64, 256, 1024, 4096)


@dataclass(frozen=True)
class LayerTiming:
    """Median seconds per call of one implementation at one token count and dtype."""

    implementation: str
    dtype: str
    tokens: int
    seconds: float
    #: Largest |output - the loop's output| at this token count (None for the loop itself).
    max_abs_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark_layer(
    manager: PluginManager,
    token_counts: Sequence[int],
    dtypes: Sequence[str],
    config: dict[str, Any] = CONFIG,
    device: str = "cpu",
) -> list[LayerTiming]:
    """Every implementation at every token count and dtype, one after the other in this process,
    on the MoE block of ``config`` (default: the benchmark model's)."""
    import torch

    timings = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        block = _hf_block(config, dtype, device)
        ours = _kernels(manager, block, config["num_experts_per_tok"], device)
        generator = torch.Generator(device=device).manual_seed(SEED)
        for tokens in token_counts:
            x = torch.randn(tokens, config["hidden_size"], generator=generator, device=device).to(dtype)
            reference = None
            for implementation in HF_IMPLEMENTATIONS:
                block.experts.config._experts_implementation = implementation  # what HF's forward dispatches on
                run = _hf_call(block, x)
                output = run()
                reference = output if reference is None else reference
                error = None if implementation == HF_IMPLEMENTATIONS[0] else _error(output, reference)
                timings.append(LayerTiming(f"hf-{implementation}", dtype_name, tokens, median_seconds(run), error))
            floors = _dense_floors(block, x, config["num_experts_per_tok"])
            timings.append(LayerTiming(DENSE_FLOOR, dtype_name, tokens, min(map(median_seconds, floors))))
            for name, run in ours(x).items():
                timings.append(LayerTiming(name, dtype_name, tokens, median_seconds(run), _error(run(), reference)))
    return timings


def _hf_block(config: dict[str, Any], dtype: Any, device: str) -> Any:
    """transformers' MoE block of a one-layer model of ``config``, seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(SEED)
    hf_config = AutoConfig.for_model(MODEL_TYPE, **{**config, "num_hidden_layers": 1, "vocab_size": 128})
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype).to(device).eval()
    return model.model.layers[0].mlp


def _hf_call(block: Any, x: Any) -> Callable[[], Any]:
    import torch

    @torch.inference_mode()
    def run() -> Any:
        out = block(x[None])
        return (out[0] if isinstance(out, tuple) else out)[0]

    return run


def _dense_floors(block: Any, x: Any, top_k: int) -> list[Callable[[], Any]]:
    """Every (token, choice) row of ``x`` through the first expert's gate/up, SiLU, down: the
    layer's GEMMs as one dense pair, once per GEMM path (``F.linear``, and oneDNN's linear on
    packed weights on the CPU where torch has it); outputs not comparable, not checked."""
    import torch
    import torch.nn.functional as F

    rows = x.repeat(top_k, 1)
    gate_up, down = block.experts.gate_up_proj[0].detach(), block.experts.down_proj[0].detach()

    def pair(linear: Callable[[Any, Any], Any], w_gate_up: Any, w_down: Any) -> Callable[[], Any]:
        @torch.inference_mode()
        def run() -> Any:
            gate, up = linear(rows, w_gate_up).chunk(2, dim=-1)
            return linear(F.silu(gate) * up, w_down)

        return run

    paths = [pair(F.linear, gate_up, down)]
    mkldnn = torch.ops.mkldnn
    if x.device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight"):
        packed = [mkldnn._reorder_linear_weight(w, rows.shape[0]) for w in (gate_up, down)]
        paths.append(pair(lambda a, w: mkldnn._linear_pointwise(a, w, None, "none", [], ""), *packed))
    return paths


def _kernels(
    manager: PluginManager, block: Any, top_k: int, device: str
) -> Callable[[Any], dict[str, Callable[[], Any]]]:
    """For a batch ``x``: a call per installed kernel that runs on ``device``, and its int8 variant
    when the kernel consumes int8 experts, each through the MoE block a model plugin builds
    (:class:`~kernel_core.modeling.moe.FusedMoE`: the router GEMM, then the kernel on the experts
    the kernel prepared once, as at load)."""
    import torch

    from kernel_core.modeling.moe import ExpertWeights, FusedMoE

    router = block.gate.weight.detach()
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    layers = {}
    for registration in manager.registrations(PluginKind.MOE_KERNEL):
        if torch.device(device).type not in registration.spec.device_types:
            continue
        kernel = manager.create(registration)
        for quantization in (None, "int8") if "int8" in registration.spec.quantizations else (None,):
            experts = ExpertWeights.from_stacked(
                gate_up, down, quantization=quantization, dtype=gate_up.dtype, device=gate_up.device
            )
            name = f"kernel:{registration.spec.name}" + (f" {quantization}" if quantization else "")
            layers[name] = FusedMoE(router, experts, top_k=top_k, renormalize=True, kernel=kernel)

    def calls(x: Any) -> dict[str, Callable[[], Any]]:
        return {name: torch.inference_mode()(lambda layer=layer: layer(x)) for name, layer in layers.items()}

    return calls


def _error(output: Any, reference: Any) -> float:
    return float((output.float() - reference.float()).abs().max())
