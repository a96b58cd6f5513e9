"""The Triton LoRA kernel is written as a third party would write it: every kernel-core name it
imports is part of the public authoring surface the SDK re-exports (or a record), never a private
one."""

from __future__ import annotations

from pathlib import Path

from kernel_core_sdk.surface import private_imports

PACKAGE = Path(__file__).resolve().parents[1] / "kernel_core_lora_triton"


def test_only_public_kernel_core_names_are_imported() -> None:
    private = private_imports(PACKAGE)
    assert not private, f"names outside the SDK's public surface: {private}"
