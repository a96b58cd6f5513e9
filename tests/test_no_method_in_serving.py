"""The serving path names no PEFT method (issue 15): what an adapter becomes and what runs per step
is its tuner plugin's (``TunerSpec.serving``), and batched kernels are plugins of their own."""

from __future__ import annotations

import re
from pathlib import Path

import kernel_core

PACKAGE = Path(kernel_core.__file__).parent
#: The adapter registry, caches and slots; the engine, runner, HTTP server and LLM; the seams
#: (what a serving implements, where it acts on a model); the model-building surface.
SERVING_PATH = (
    "adapters", "engine", "runner", "server", "llm.py", "modeling",
    "contracts/serving.py", "contracts/adapter_targets.py", "contracts/model.py",
)
#: Public setting names (docs/serving.md) that keep their vLLM spelling, and the plugin API 1.3-1.4
#: names a model plugin may still offer its projections under; nothing else may say LoRA.
SETTINGS = re.compile(
    r"\b(?:enable_lora|max_loras|max_lora_rank|max_cpu_loras|lora_kernel|lora_targets|lora_projections)\b"
)
#: A method's name, its peft_type, or a branch on one.
METHOD = re.compile(r"lora|peft_type\s*[=!]=", re.IGNORECASE)


def _serving_files() -> list[Path]:
    files: list[Path] = []
    for entry in SERVING_PATH:
        path = PACKAGE / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_the_serving_path_names_no_method() -> None:
    found = {}
    for file in _serving_files():
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if METHOD.search(SETTINGS.sub("", line)):
                found[f"{file.relative_to(PACKAGE).as_posix()}:{number}"] = line.strip()
    assert found == {}
    assert len(_serving_files()) > 20  # the paths above exist: a rename must update this test


def test_no_lora_package_in_the_core() -> None:
    assert not list(PACKAGE.glob("lora/**/*.py"))


def test_the_lora_tuner_serves_lora_and_the_kernel_is_a_plugin_of_its_own() -> None:
    from kernel_core.contracts.records import PluginKind
    from kernel_core.contracts.serving import AdapterServing
    from kernel_core.plugins import get_plugin_manager

    manager = get_plugin_manager()
    tuner = manager.get(PluginKind.TUNER, "lora")
    assert issubclass(tuner.spec.load_serving(), AdapterServing)
    kernel = manager.get(PluginKind.LORA_KERNEL, "torch")
    assert kernel.plugin.distribution.name == "kernel-core-lora-torch" != tuner.plugin.distribution.name
