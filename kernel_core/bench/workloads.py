"""The reference workloads live in one file shared with the vLLM anchor script, outside this repository,
so both engines run exactly the same prompts. This module finds that file and loads it.

``workload.py`` is a plain script beside ``anchor_vllm.py``, not a package: it is loaded by file path.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import kernel_core
from kernel_core.errors import KernelCoreError

ENV_WORKLOADS = "KERNEL_CORE_WORKLOADS"

#: Workload name -> the prompt function of ``workload.py`` that builds it (W2 runs W1's prompts).
_PROMPT_FUNCTIONS = {"W1": "prompts", "W2": "prompts", "W3": "shared_prefix_prompts"}


@dataclass(frozen=True)
class Workload:
    """The prompts of one reference workload and the greedy output length of every request."""

    name: str
    prompts: list[str]
    max_tokens: int
    #: True when neither the number of prompts nor ``max_tokens`` was shrunk: only then do the
    #: reference numbers (measured on the full workload) compare with this run.
    full: bool
    source: Path


def default_path() -> Path:
    """``<repo root>/../shared/bench/workload.py``, the repo root found from the editable install."""
    repo_root = Path(kernel_core.__file__).resolve().parents[1]
    return (repo_root.parent / "shared" / "bench" / "workload.py").resolve()


def locate(path: str | os.PathLike[str] | None = None) -> Path:
    """The workload file: ``path`` if given, else ``$KERNEL_CORE_WORKLOADS``, else :func:`default_path`."""
    if path is not None:
        chosen, how = Path(path), "--workloads"
    elif os.environ.get(ENV_WORKLOADS):
        chosen, how = Path(os.environ[ENV_WORKLOADS]), f"${ENV_WORKLOADS}"
    else:
        chosen, how = default_path(), "the default location"
    chosen = chosen.expanduser()
    if not chosen.is_file():
        raise KernelCoreError(
            f"workload file {chosen} (from {how}) does not exist: pass --workloads PATH to workload.py "
            f"or set {ENV_WORKLOADS}"
        )
    return chosen


def load(path: Path) -> ModuleType:
    """Import ``workload.py`` from its file path, without adding it to ``sys.modules``."""
    spec = importlib.util.spec_from_file_location("kernel_core_bench_workload", path)
    if spec is None or spec.loader is None:
        raise KernelCoreError(f"workload file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def workload(
    path: Path, name: str, num_prompts: int | None = None, max_tokens: int | None = None
) -> Workload:
    """Workload ``name`` (W1, W2 or W3) from the file at ``path``, optionally shrunk for a quick run.

    The prompt functions draw prompt after prompt from one seeded stream, so ``num_prompts=N`` gives
    exactly the first N prompts of the full workload.
    """
    module = load(path)
    try:
        params = dict(getattr(module, name))
        make_prompts = getattr(module, _PROMPT_FUNCTIONS[name])
    except AttributeError as exc:
        raise KernelCoreError(f"workload file {path} does not define what {name} needs: {exc}") from None
    full_size, full_tokens = params["n"], params.pop("max_tokens")
    accepted = inspect.signature(make_prompts).parameters
    params = {key: value for key, value in params.items() if key in accepted}  # W2's adapter settings
    params["n"] = num_prompts or full_size
    tokens = max_tokens or full_tokens
    return Workload(
        name=name,
        prompts=make_prompts(**params),
        max_tokens=tokens,
        full=params["n"] == full_size and tokens == full_tokens,
        source=path,
    )


@dataclass(frozen=True)
class AdapterSpec:
    """W2's LoRA adapters: how many, their rank, alpha and target modules."""

    count: int
    rank: int
    alpha: int
    targets: tuple[str, ...]


def adapter_spec(path: Path) -> AdapterSpec:
    """The adapters of W2 in the file at ``path`` (``W2 = dict(W1, adapters=8, rank=16, ...)``)."""
    try:
        params = load(path).W2
        return AdapterSpec(int(params["adapters"]), int(params["rank"]), int(params["alpha"]), tuple(params["targets"]))
    except (AttributeError, KeyError, TypeError) as exc:
        raise KernelCoreError(f"workload file {path} does not define W2's adapters: {exc!r}") from None
