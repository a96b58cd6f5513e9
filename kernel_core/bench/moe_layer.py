"""The MoE layer alone: each installed MoE kernel against transformers' own MoE block on the same
weights and tokens, over token counts from one (a decode step) to thousands (a prefill chunk).

The baseline is the benchmark model's MoE block built by transformers, run with its expert loop
(``experts_implementation="eager"``, the per-expert loop the issue names) and with the
implementation transformers picks by default (``grouped_mm`` where torch can dispatch it). Ours is
the router GEMM plus the kernel's ``forward``, as a model plugin calls it. Each kernel's output is
checked against the baseline's before it is timed, so a fast wrong kernel is reported, not praised.

Beside them, :data:`DENSE_FLOOR` times the same arithmetic as one GEMM pair: every (token, choice)
row through one expert's weights, with no routing, gather, loop or weighted sum. Once the GEMMs are
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
            floor = _dense_floor(block, x, config["num_experts_per_tok"])
            timings.append(LayerTiming(DENSE_FLOOR, dtype_name, tokens, median_seconds(floor)))
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


def _dense_floor(block: Any, x: Any, top_k: int) -> Callable[[], Any]:
    """Every (token, choice) row of ``x`` through the first expert's gate/up, SiLU, down: the
    layer's GEMMs as one dense pair (output not comparable, not checked)."""
    import torch
    import torch.nn.functional as F

    rows = x.repeat(top_k, 1)
    gate_up, down = block.experts.gate_up_proj[0].detach(), block.experts.down_proj[0].detach()

    @torch.inference_mode()
    def run() -> Any:
        gate, up = F.linear(rows, gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, down)

    return run


def _kernels(
    manager: PluginManager, block: Any, top_k: int, device: str
) -> Callable[[Any], dict[str, Callable[[], Any]]]:
    """For a batch ``x``: a call per installed kernel that runs on ``device``, and its int8 variant
    when the kernel consumes int8 experts."""
    import torch
    import torch.nn.functional as F

    from kernel_core.contracts.moe import quantize_int8

    router = block.gate.weight.detach()
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    quantized = (*quantize_int8(gate_up), *quantize_int8(down))
    kernels = []
    for registration in manager.registrations(PluginKind.MOE_KERNEL):
        if torch.device(device).type not in registration.spec.device_types:
            continue
        kernel = manager.load(registration)()
        kernels.append((f"kernel:{registration.spec.name}", kernel, False))
        if "int8" in registration.spec.quantizations:
            kernels.append((f"kernel:{registration.spec.name} int8", kernel, True))

    def calls(x: Any) -> dict[str, Callable[[], Any]]:
        def call(kernel: Any, int8: bool) -> Callable[[], Any]:
            @torch.inference_mode()
            def run() -> Any:
                logits = F.linear(x, router)
                if int8:
                    q_gate_up, s_gate_up, q_down, s_down = quantized
                    return kernel.forward(
                        x, logits, q_gate_up, q_down, top_k, True, w_gate_up_scale=s_gate_up, w_down_scale=s_down
                    )
                return kernel.forward(x, logits, gate_up, down, top_k, True)

            return run

        return {name: call(kernel, int8) for name, kernel, int8 in kernels}

    return calls


def _error(output: Any, reference: Any) -> float:
    return float((output.float() - reference.float()).abs().max())
