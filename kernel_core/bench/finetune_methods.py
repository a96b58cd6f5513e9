"""``kcore bench finetune --method M``: every chosen PEFT method trained by ours (kernel-core's
plugin under ``AdapterTrainer``) and by Hugging Face ``peft`` (under the plain ``Trainer``) from the
same starting adapter, each side in its own process (:mod:`kernel_core.bench.finetune_worker`), so
s/step and peak RSS compare per method (issue 14, point 6: <= 1.0x peft's, both).

Nothing here knows a method: ``--method all`` is every installed tuner plugin whose ``peft_type``
peft also has, and a method's config is its own pydantic schema's defaults (with ``kcore
finetune``'s, :mod:`kernel_core.finetune.adapter_options`) under ``--set`` overrides, with
``task_type`` ``CAUSAL_LM`` (what is trained). One rule reads a field by name: a ``total_step``
field left unset (a budget schedule needing the run's length, as AdaLoRA's) is set to ``--steps``. peft makes the starting adapter from that config
(:mod:`kernel_core.bench.finetune_init`); both sides load it trainable, so the two loss curves are
the same computation and their largest gap is judged, except where the config draws dropout masks
(each library draws its own).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kernel_core.bench.finetune import (
    TARGET_LOSS_DIFFERENCE, TARGET_MEMORY_RATIO, TARGET_STEP_RATIO, LossCheck, run_config,
)
from kernel_core.bench.finetune_worker import OURS, PEFT, WorkerConfig
from kernel_core.bench.machine import describe_cpu
from kernel_core.bench.report import Ratio
from kernel_core.contracts.records import PluginKind, TunerSpec
from kernel_core.errors import KernelCoreError
from kernel_core.peft.config import Method, get_method

ALL = "all"
#: ``--set METHOD:KEY=VALUE`` sets KEY for that method only.
METHOD_SEPARATOR = ":"
#: The field a budget schedule reads the run's length from (AdaLoRA's, as peft names it).
RUN_LENGTH_FIELD = "total_step"
#: What the benchmark trains, as peft's users declare it: peft then wraps the model in
#: ``PeftModelForCausalLM``, whose forward goes through the method's model (AdaLoRA's adds its
#: orthogonal regulariser to the loss there; a bare ``PeftModel`` skips it and trains another loss).
TASK_TYPE = "CAUSAL_LM"


def peft_types() -> frozenset[str]:
    """The ``peft_type`` values the installed ``peft`` provides (its ``PeftType`` enum)."""
    try:
        import peft
    except ImportError as exc:
        raise KernelCoreError(f"kcore bench finetune --method compares with the 'peft' package ({exc}): pip install peft") from None
    return frozenset(member.value for member in peft.PeftType)


def installed_methods() -> list[Method]:
    """Every installed tuner plugin, by name."""
    from kernel_core.plugins import get_plugin_manager

    manager = get_plugin_manager()
    names = sorted(r.name for r in manager.registrations(PluginKind.TUNER) if isinstance(r.spec, TunerSpec))
    return [get_method(name, manager) for name in names]


def select_methods(requested: Sequence[str], provided_by_peft: Collection[str]) -> list[Method]:
    """The methods to run, in the order asked, once each: ``all`` is every installed tuner whose
    ``peft_type`` peft provides; a named one must be installed (else the installed ones are named)
    and provided by peft (else there is nothing to compare with)."""
    chosen: dict[str, Method] = {}
    for name in requested:
        if name.lower() == ALL:
            found = [m for m in installed_methods() if m.spec.peft_type in provided_by_peft]
        else:
            method = get_method(name)
            if method.spec.peft_type not in provided_by_peft:
                raise KernelCoreError(
                    f"--method {name}: peft has no {method.spec.peft_type!r} method to compare with "
                    f"(peft provides {', '.join(sorted(provided_by_peft))})"
                )
            found = [method]
        for method in found:
            chosen.setdefault(method.spec.name, method)
    return list(chosen.values())


def split_overrides(values: Mapping[str, Any], methods: Sequence[Method]) -> dict[str, dict[str, Any]]:
    """``--set`` values per method: ``KEY`` goes to every chosen method whose config has that
    field (at least one must), ``METHOD:KEY`` to that method only (it must have it)."""
    per_method: dict[str, dict[str, Any]] = {m.spec.name: {} for m in methods}
    by_name = {alias: m for m in methods for alias in (m.spec.name, m.spec.peft_type.lower())}
    for key, value in values.items():
        prefix, separator, field = key.rpartition(METHOD_SEPARATOR)
        if separator:
            method = by_name.get(prefix.lower())
            if method is None:
                raise KernelCoreError(f"--set {key}: {prefix!r} is not one of the methods run ({', '.join(per_method)})")
            targets = [method]
        else:
            targets = [m for m in methods if field in m.config_class.model_fields]
        if not targets or any(field not in m.config_class.model_fields for m in targets):
            where = ", ".join(f"{m.spec.name} ({m.config_class.__name__})" for m in (targets or methods))
            raise KernelCoreError(
                f"--set {key}: {field!r} is not a field of {where}; kcore finetune --method M --show-config lists a method's fields"
            )
        for method in targets:
            per_method[method.spec.name][field] = value
    return per_method


def method_config(method: Method, steps: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The ``adapter_config.json`` contents both sides start from: the method's defaults (and
    ``kcore finetune``'s), ``task_type`` :data:`TASK_TYPE`, the run's length where the config has a
    :data:`RUN_LENGTH_FIELD`, then ``overrides``; validated by the method's own config (a bad
    field is named)."""
    from kernel_core.finetune import adapter_options
    from kernel_core.peft.config import config_to_dict

    layers: list[tuple[str, Mapping[str, Any]]] = [("the benchmark's task", {"task_type": TASK_TYPE})]
    if RUN_LENGTH_FIELD in method.config_class.model_fields:
        layers.append(("--steps", {RUN_LENGTH_FIELD: steps}))
    layers.append(("--set", overrides))
    return config_to_dict(adapter_options.build(method.spec.name, layers))


def dropout_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's non-zero dropout fields: each library draws its own masks, so with any of them
    the two loss curves are different random experiments and their gap is not judged."""
    return {key: value for key, value in config.items() if "dropout" in key and isinstance(value, (int, float)) and value}


@dataclass(frozen=True)
class MethodComparison:
    """One method at one checkpointing setting: both sides' results, or the error that stopped it."""

    method: str
    peft_type: str
    gradient_checkpointing: bool
    config: dict[str, Any]
    ours: dict[str, Any] | None = None
    peft: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ratios(self) -> dict[str, Ratio]:
        if self.ours is None or self.peft is None:
            return {}
        return {
            "step_time": Ratio(f"{self.method}: s/step, {OURS} / peft", self.ours["seconds_per_step"],
                               self.peft["seconds_per_step"], at_most=TARGET_STEP_RATIO),
            "step_cpu_time": Ratio(f"{self.method}: CPU s/step, {OURS} / peft (shown, not judged)",
                                   self.ours["cpu_seconds_per_step"], self.peft["cpu_seconds_per_step"]),
            "peak_rss": Ratio(f"{self.method}: peak RSS, {OURS} / peft", self.ours["peak_rss_bytes"],
                              self.peft["peak_rss_bytes"], at_most=TARGET_MEMORY_RATIO),
        }

    @property
    def loss_check(self) -> LossCheck | None:
        if self.ours is None or self.peft is None:
            return None
        pairs = list(zip(self.ours["losses"], self.peft["losses"], strict=True))
        return LossCheck(f"{self.method}: max |loss {OURS} - peft| over {len(pairs)} steps", max(abs(a - b) for a, b in pairs))

    @property
    def loss_judged(self) -> bool:
        return not dropout_fields(self.config)

    @property
    def met(self) -> bool | None:
        """Both ratios within target (and, where judged, the same loss curve); None when it did not run."""
        if self.error is not None or self.ours is None:
            return None
        check = self.loss_check
        loss_ok = not self.loss_judged or (check is not None and check.met)
        return all(ratio.met for ratio in self.ratios.values() if ratio.met is not None) and loss_ok

    def to_dict(self) -> dict[str, Any]:
        check = self.loss_check
        dropout = dropout_fields(self.config)
        return {
            "method": self.method, "peft_type": self.peft_type,
            "gradient_checkpointing": self.gradient_checkpointing, "config": self.config,
            "error": self.error,
            "ratios": {key: ratio.to_dict() for key, ratio in self.ratios.items()},
            "loss_check": None if check is None else {**check.to_dict(), "judged": self.loss_judged},
            "loss_not_judged_because": None if not dropout else f"dropout {dropout}: each library draws its own masks",
            "same_trainable_parameters": None if self.ours is None or self.peft is None
            else self.ours["trainable_parameters"] == self.peft["trainable_parameters"],
            "met": self.met,
            "results": [r for r in (self.ours, self.peft) if r is not None],
        }


@dataclass(frozen=True)
class MethodsReport:
    settings: dict[str, Any]
    comparisons: list[MethodComparison]
    cpu: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "finetune", "mode": "methods", **self.settings, "cpu": self.cpu,
            "targets": {"step_time": f"<= {TARGET_STEP_RATIO:g}", "peak_rss": f"<= {TARGET_MEMORY_RATIO:g}",
                        "loss_gap": f"<= {TARGET_LOSS_DIFFERENCE:g} where judged"},
            "methods": [comparison.to_dict() for comparison in self.comparisons],
        }


def benchmark_methods(
    template: WorkerConfig, methods: Sequence[Method], overrides: Mapping[str, Mapping[str, Any]],
    gradient_checkpointing: Iterable[bool],
) -> MethodsReport:
    """Per method: its config, the starting adapter made by peft, then at each checkpointing
    setting ours and peft, each in its own process. A method that fails is recorded with its
    error and the others still run."""
    cpu = describe_cpu()
    settings_gc = list(gradient_checkpointing)
    comparisons = []
    for method in methods:
        name, peft_type = method.spec.name, method.spec.peft_type
        try:
            config = method_config(method, template.steps, overrides.get(name, {}))
        except KernelCoreError as exc:
            comparisons += [MethodComparison(name, peft_type, gc, {}, error=str(exc)) for gc in settings_gc]
            continue
        with tempfile.TemporaryDirectory(prefix=f"kcore-bench-finetune-{name}-") as folder:
            try:
                adapter = make_start_adapter(template, config, Path(folder))
            except KernelCoreError as exc:
                comparisons += [MethodComparison(name, peft_type, gc, config, error=str(exc)) for gc in settings_gc]
                continue
            for gc in settings_gc:
                base = replace(template, gradient_checkpointing=gc, adapter=str(adapter), method=name)
                try:
                    ours, theirs = (run_config(replace(base, side=side)) for side in (OURS, PEFT))
                    comparisons.append(MethodComparison(name, peft_type, gc, config, ours, theirs))
                except KernelCoreError as exc:
                    comparisons.append(MethodComparison(name, peft_type, gc, config, error=str(exc)))
    settings = {
        **{k: v for k, v in vars(template).items() if k not in ("side", "gradient_checkpointing", "nproc", "adapter",
                                                                 "method", "r", "lora_alpha")},
        "methods": [m.spec.name for m in methods],
        "gradient_checkpointing": ["on" if gc else "off" for gc in settings_gc],
        "dtype": "float32",
        "start": "one adapter made by peft at the seed, loaded trainable by both sides",
    }
    return MethodsReport(settings, comparisons, cpu)


def make_start_adapter(template: WorkerConfig, config: Mapping[str, Any], folder: Path) -> Path:
    """peft's adapter for ``config`` at the template's seed, saved under ``folder`` (in a subprocess)."""
    config_file, adapter = folder / "config.json", folder / "adapter"
    config_file.write_text(json.dumps(config))
    command = [sys.executable, "-m", "kernel_core.bench.finetune_init", "--model", template.model,
               "--config", str(config_file), "--seed", str(template.seed), "--out", str(adapter)]
    completed = subprocess.run(command, stdout=2, check=False)  # our stdout is for the report
    if completed.returncode != 0 or not (adapter / "adapter_config.json").is_file():
        raise KernelCoreError(f"peft could not make the starting adapter (exit status {completed.returncode}; its error is above)")
    return adapter


def write_json(report: MethodsReport, path: str) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
