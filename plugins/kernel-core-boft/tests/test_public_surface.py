"""BOFT is written as a third party would write it: every kernel-core name it imports is part of
the public authoring surface the SDK re-exports (or a record), never a private one."""

from __future__ import annotations

import ast
from pathlib import Path

import kernel_core_sdk

PACKAGE = Path(__file__).resolve().parents[1] / "kernel_core_boft"


def test_only_public_kernel_core_names_are_imported() -> None:
    private = []
    for source in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                private += [f"{source.name}: import {a.name}" for a in node.names if a.name.startswith("kernel_core.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kernel_core":
                private += [
                    f"{source.name}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if node.module != "kernel_core" and alias.name not in kernel_core_sdk.__all__
                ]
    assert not private, f"names outside the SDK's public surface: {private}"
