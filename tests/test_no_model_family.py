"""The core holds no model family (issue #13): families are plugins, built on kernel_core.modeling."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import kernel_core

PACKAGE = Path(kernel_core.__file__).parent
#: Files that may name a transformers architecture class, and why.
ALLOWED = {
    # Converts the embedded GGUF with transformers' own LlamaForCausalLM: a model id, not a family.
    "models/embedded.py": {"LlamaForCausalLM"},
    # The `architectures` field's description gives an example value.
    "contracts/records.py": {"LlamaForCausalLM"},
}


def test_serving_modules_import_no_model_plugin() -> None:
    code = (
        "import sys\n"
        "import kernel_core.llm, kernel_core.engine.llm_engine, kernel_core.engine.components\n"
        "import kernel_core.runner.model_runner, kernel_core.modeling\n"
        "print(sorted(m for m in sys.modules if m.startswith('kernel_core_')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_core_module_names_an_architecture_class() -> None:
    classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    assert "LlamaForCausalLM" in classes and "MistralForCausalLM" in classes
    pattern = re.compile(r"\b[A-Z]\w*For(?:CausalLM|ConditionalGeneration)\b")
    found = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE).as_posix()
        names = (set(pattern.findall(file.read_text())) & classes) - ALLOWED.get(relative, set())
        if names:
            found[relative] = sorted(names)
    assert found == {}


def test_no_core_module_imports_a_plugin_package() -> None:
    """Plugins are reached through entry points only (the SDK, kernel_core_sdk, is no plugin)."""
    imports = re.compile(r"^\s*(?:from|import)\s+(kernel_core_(?!sdk\b)\w+)", re.MULTILINE)
    found = {
        file.relative_to(PACKAGE).as_posix(): imports.findall(file.read_text())
        for file in sorted(PACKAGE.rglob("*.py"))
        if imports.search(file.read_text())
    }
    assert found == {}
