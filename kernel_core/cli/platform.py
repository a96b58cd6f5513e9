"""``kcore platform``: which hardware platform was chosen, and why."""

from __future__ import annotations

import argparse
import json

from kernel_core.platforms import select_platform


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "platform",
        help="show the chosen hardware platform and why",
        description=(
            "Probe every installed platform plugin and show the one kernel-core runs on: the one "
            "named by KERNEL_CORE_PLATFORM, else the available one with the highest priority."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    choice = select_platform()
    platform = choice.platform
    memory = platform.memory_info()
    report = {
        "platform": choice.registration.name,
        "distribution": str(choice.registration.plugin.distribution),
        "reason": choice.reason,
        "device": str(platform.device()),
        "device_name": platform.device_name(),
        "device_count": platform.device_count(),
        "dtypes": [str(d).removeprefix("torch.") for d in platform.supported_dtypes()],
        "distributed_backend": platform.distributed_backend(),
        "memory_total_gib": round(memory.total_bytes / 2**30, 2),
        "memory_free_gib": round(memory.free_bytes / 2**30, 2),
        "default_attention_backend": platform.default_attention_backend,
        "default_lora_kernel": platform.default_lora_kernel or "(by priority)",
        "default_moe_kernel": platform.default_moe_kernel or "(by priority)",
        "gemm_policy": platform.linear_policy().name,
        "probed": {p.registration.name: p.detail for p in choice.probes},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key == "probed":
            print("probed:")
            for name, detail in value.items():
                print(f"  {name}: {detail}")
        else:
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0
