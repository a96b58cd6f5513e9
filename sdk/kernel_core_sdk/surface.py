"""Whether a plugin is written as a third party would write it: every ``kernel_core`` name its
package imports is on the authoring surface this SDK re-exports (or a record from the
``kernel_core`` top level), never a private one that may change without a version bump."""

from __future__ import annotations

import ast
from pathlib import Path

import kernel_core_sdk


def private_imports(package: Path) -> list[str]:
    """``"<file>: <import>"`` for each import in ``package``'s modules (its ``*.py`` files) of a
    ``kernel_core`` module, or of a ``kernel_core`` name the SDK does not re-export."""
    private = []
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                private += [f"{source.name}: import {a.name}" for a in node.names if a.name.startswith("kernel_core.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kernel_core":
                private += [
                    f"{source.name}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if node.module != "kernel_core" and alias.name not in kernel_core_sdk.__all__
                ]
    return private
