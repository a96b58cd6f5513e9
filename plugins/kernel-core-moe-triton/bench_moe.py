"""Time the MoE kernels installed for a GPU, this Triton kernel beside the others (the portable
torch kernel when installed), on the ``kcore bench moe`` model's MoE layer shapes. Not a test:
run it by hand or through ``scripts/gpu_check.sh``.

    python plugins/kernel-core-moe-triton/bench_moe.py [--device cuda] [--tokens 1 16 256 4096]

Each (kernel, dtype, int8 or not, token count) is timed with ``triton.testing.do_bench`` (median
ms, device-synchronised) after its output is compared with the first kernel's, so a fast wrong
kernel shows up; the router GEMM is not included.
"""

from __future__ import annotations

import argparse
import subprocess

import torch
from triton.testing import do_bench

from kernel_core.bench.moe_model import CONFIG
from kernel_core.contracts.moe import quantize_int8
from kernel_core.contracts.records import PluginKind
from kernel_core.plugins import get_plugin_manager

TOKENS = (1, 4, 16, 64, 256, 1024, 4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        print("nvidia-smi:", name.stdout.strip() or name.stderr.strip())
    hidden_size, intermediate = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    experts, top_k = CONFIG["num_local_experts"], CONFIG["num_experts_per_tok"]
    print(f"torch {torch.__version__}, device {device}: E={experts}, top-{top_k}, H={hidden_size}, I={intermediate}")

    manager = get_plugin_manager()
    kernels = {
        r.spec.name: (manager.load(r)(), "int8" in r.spec.quantizations)
        for r in manager.registrations(PluginKind.MOE_KERNEL)
        if device.type in r.spec.device_types
    }
    generator = torch.Generator().manual_seed(0)
    w_gate_up = torch.randn(experts, 2 * intermediate, hidden_size, generator=generator) / hidden_size**0.5
    w_down = torch.randn(experts, hidden_size, intermediate, generator=generator) / intermediate**0.5
    (q_gate_up, s_gate_up), (q_down, s_down) = quantize_int8(w_gate_up), quantize_int8(w_down)
    int8 = {"w_gate_up_scale": s_gate_up.to(device), "w_down_scale": s_down.to(device)}
    q_gate_up, q_down = q_gate_up.to(device), q_down.to(device)

    print("| dtype | experts | tokens | " + " | ".join(f"{n} ms" for n in kernels) + " | max abs diff |")
    print("|---" * (4 + len(kernels)) + "|")
    for dtype in (torch.bfloat16, torch.float32):
        weights = (w_gate_up.to(device, dtype), w_down.to(device, dtype))
        for quantized in (False, True):
            chosen = {n: k for n, (k, reads_int8) in kernels.items() if reads_int8 or not quantized}
            for tokens in args.tokens:
                x = torch.randn(tokens, hidden_size, generator=generator).to(device, dtype)
                logits = torch.randn(tokens, experts, generator=generator).to(device, dtype)
                calls = {
                    n: (lambda k=k: k.forward(x, logits, q_gate_up, q_down, top_k, **int8))
                    if quantized else (lambda k=k: k.forward(x, logits, *weights, top_k))
                    for n, k in chosen.items()
                }
                with torch.inference_mode():
                    outs = [call().float() for call in calls.values()]
                    times = [do_bench(call) for call in calls.values()]
                diff = max(float((o - outs[0]).abs().max()) for o in outs)
                cells = " | ".join(f"{t:.3f}" for t in times)
                print(f"| {str(dtype)[6:]} | {'int8' if quantized else 'full'} | {tokens} | {cells} | {diff:.2e} |")


if __name__ == "__main__":
    main()
