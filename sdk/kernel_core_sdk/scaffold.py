"""Render a new plugin package from the templates (``kcore new-plugin``).

Templates live in ``templates/common`` (packaging, entry point, README, the test that runs the
kind's conformance suite) and ``templates/<kind>`` (a small working implementation). File
contents and paths are ``string.Template`` text; every file is rendered before anything is
written, so a failure leaves no half-made folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

import kernel_core
from kernel_core import api_version
from kernel_core.contracts.records import SPEC_BY_KIND, PluginKind
from kernel_core.errors import KernelCoreError
from kernel_core.plugins import REGISTRATION_HOOKS
from kernel_core_sdk import __version__ as sdk_version

TEMPLATES_DIR = Path(__file__).parent / "templates"
SUFFIX = ".tmpl"
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
HOOK_BY_KIND = {kind: hook for hook, kind in REGISTRATION_HOOKS.items()}


class ScaffoldError(KernelCoreError, ValueError):
    """The plugin cannot be generated: bad name, existing folder, or no template for the kind."""


@dataclass(frozen=True)
class KindTemplate:
    """What differs between kinds besides the implementation file in ``templates/<kind>``.

    Text fields are templates themselves, rendered with the common variables.
    """

    impl_module: str
    class_suffix: str
    suite: str
    description: str
    usage: str
    spec_fields: str = ""
    test_fixtures: str = ""


TEMPLATES: dict[PluginKind, KindTemplate] = {
    PluginKind.PLATFORM: KindTemplate(
        impl_module="platform",
        class_suffix="Platform",
        suite="PlatformConformance",
        description="A CPU-like platform at priority -10: use it with KERNEL_CORE_PLATFORM=${name}.",
        usage="Force it with `KERNEL_CORE_PLATFORM=${name}`: at priority -10 it is never chosen on its own "
        "while another platform is available. `kcore platform` shows which platform was chosen and why.",
        spec_fields="\n            priority=-10,",
        test_fixtures="""

    @pytest.fixture
    def platform_class(self) -> type:
        from ${module}.platform import ${class_name}

        return ${class_name}""",
    ),
    PluginKind.SCHEDULER_POLICY: KindTemplate(
        impl_module="policy",
        class_suffix="Policy",
        suite="SchedulerConformance",
        description="Shortest prompt first, then earliest arrival.",
        usage="Select it by name with the engine's `scheduler_policy=\"${name}\"` setting.",
    ),
    PluginKind.CACHE_MANAGER: KindTemplate(
        impl_module="cache",
        class_suffix="CacheManager",
        suite="CacheManagerConformance",
        description="A simple block allocator without prefix caching.",
        usage="Select it by name with the engine's `cache_manager=\"${name}\"` setting. To add prefix "
        "caching, implement `match_prefix`/`commit` and declare the `prefix-caching` capability in "
        "`plugin.py`: the conformance suite then checks prefix sharing too.",
    ),
    PluginKind.ATTENTION_BACKEND: KindTemplate(
        impl_module="attention",
        class_suffix="Backend",
        suite="AttentionBackendConformance",
        description="Gathers each request's paged KV and runs torch SDPA request by request.",
        usage="Select it by name with the engine's `attention_backend=\"${name}\"` setting; a platform "
        "may also name it as its `default_attention_backend`.",
    ),
    PluginKind.MOE_KERNEL: KindTemplate(
        impl_module="moe",
        class_suffix="Kernel",
        suite="MoEKernelConformance",
        description="Mixture-of-experts by a loop over experts, one SwiGLU MLP per expert.",
        usage="Select it by name with the `moe_kernel=\"${name}\"` setting. It reads int8 experts "
        "(`moe_quantization=\"int8\"`) by converting each active expert back; drop `int8` from "
        "`quantizations` in `plugin.py` if your kernel cannot, and the engine will not hand it such weights.",
        spec_fields='\n            quantizations=frozenset({"int8"}),',
    ),
    PluginKind.LORA_KERNEL: KindTemplate(
        impl_module="lora",
        class_suffix="Kernel",
        suite="LoRAKernelConformance",
        description="Batched LoRA for serving: per-token gathers of the slots' factors and two bmm, at priority -10.",
        usage="Select it by name with the `lora_kernel=\"${name}\"` setting: at priority -10 the kernel "
        "kernel-core-lora-torch registers wins otherwise. Set `device_types` in `plugin.py` to the torch device "
        "types it runs on; the conformance suite runs on the CPU unless you override its `device` fixture.",
        spec_fields='\n            device_types=frozenset({"cpu", "cuda", "xpu"}),\n            priority=-10,',
    ),
    PluginKind.TUNER: KindTemplate(
        impl_module="tuner",
        class_suffix="Tuner",
        suite="TunerConformance",
        description="A learned scale per output channel of Linear layers (IA3-like), mergeable.",
        usage="Create an adapter with `kernel_core.peft.get_config(\"${name}\", target_modules=\"all-linear\")` "
        "and `get_peft_model(model, config)`; saved adapters carry `peft_type` ${peft_type}. To serve them in "
        "the engine, name an `AdapterServing` in `TunerSpec.serving` and test it with the SDK's "
        "`AdapterServingConformance` (docs/writing-a-plugin.md, \"Serving a tuner's adapters\").",
        spec_fields='\n            peft_type="${peft_type}",',
    ),
    PluginKind.MODEL_ARCHITECTURE: KindTemplate(
        impl_module="model",
        class_suffix="Model",
        suite="ModelArchitectureConformance",
        description="A decoder on kernel_core.modeling to adapt: runs LlamaForCausalLM folders, at priority -10.",
        usage="Select it by name with the engine's `model_architecture=\"${name}\"` setting: at priority "
        "-10 the `llama` architecture of kernel-core-llama wins for the same folders otherwise. Change "
        "`architectures` in `plugin.py` and `supported_architectures` in `model.py` to the config.json "
        "names your model uses.",
        spec_fields='\n            architectures=frozenset({"LlamaForCausalLM"}),\n            priority=-10,',
        test_fixtures="""

    @pytest.fixture
    def hf_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.1,
        )""",
    ),
    PluginKind.EXECUTOR: KindTemplate(
        impl_module="executor",
        class_suffix="Executor",
        suite="ExecutorConformance",
        description="One worker in the engine's process, at priority -10.",
        usage="Select it by name with the engine's `distributed_executor=\"${name}\"` setting: at priority -10 "
        "the `uniproc` executor of kernel-core-executor-uniproc wins otherwise. To run more ranks, keep rank 0 "
        "in the engine's process (`context.create_worker(0, world_size)`), send `context.build_worker` (picklable) "
        "to a process per other rank, start the `torch.distributed` group there and send every rank the plain-data "
        "`ModelStep`s; raise `max_tensor_parallel_size` in `plugin.py` to what it runs.",
        spec_fields="\n            max_tensor_parallel_size=1,\n            priority=-10,",
    ),
}


def check_name(name: str) -> None:
    """Refuse names that cannot become a distribution, module, record and class name alike."""
    if not NAME.match(name):
        raise ScaffoldError(
            f"invalid plugin NAME {name!r}: use lowercase letters, digits and single dashes, "
            "starting with a letter (e.g. 'fair-share')"
        )


def template_variables(kind: PluginKind, name: str) -> dict[str, str]:
    """Every ``${...}`` a template may use, for plugin ``name`` of ``kind``."""
    template = TEMPLATES[kind]
    snake = name.replace("-", "_")
    camel = "".join(part.capitalize() for part in name.split("-"))
    major, minor = api_version.parse(kernel_core.PLUGIN_API_VERSION)
    variables = {
        "name": name,
        "kind": kind.value,
        "snake": snake,
        "camel": camel,
        "module": f"kernel_core_{snake}",
        "distribution": f"kernel-core-{name}",
        "class_name": camel + template.class_suffix,
        "hook": HOOK_BY_KIND[kind],
        "spec_class": SPEC_BY_KIND[kind].__name__,
        "impl_module": template.impl_module,
        "suite": template.suite,
        "peft_type": snake.upper(),
        "api_version": f"{major}.{minor}",
        "core_version": kernel_core.__version__,
        "sdk_version": sdk_version,
    }
    for field in ("description", "usage", "spec_fields", "test_fixtures"):
        variables[field] = Template(getattr(template, field)).substitute(variables)
    return variables


def render(kind: PluginKind, name: str) -> dict[Path, str]:
    """The files of the new package, by path relative to its folder."""
    check_name(name)
    variables = template_variables(kind, name)
    files: dict[Path, str] = {}
    for root in (TEMPLATES_DIR / "common", TEMPLATES_DIR / kind.value):
        for source in sorted(root.rglob(f"*{SUFFIX}")):
            relative = Template(source.relative_to(root).as_posix()).substitute(variables)
            files[Path(relative.removesuffix(SUFFIX))] = Template(source.read_text()).substitute(variables)
    return files


def create_plugin(kind: PluginKind | str, name: str, directory: Path) -> Path:
    """Write package ``kernel-core-<name>/`` under ``directory`` and return its path."""
    kind = PluginKind(kind)
    files = render(kind, name)
    target = Path(directory) / f"kernel-core-{name}"
    if target.exists():
        raise ScaffoldError(f"{target} already exists; choose another NAME or --dir")
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target
