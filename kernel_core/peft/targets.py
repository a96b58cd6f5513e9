"""Which modules of a model an adapter wraps, with PEFT's rules, shared by every method.

``target_modules`` is a list (a name matches an entry exactly or ends with ``"." + entry``), a
regex string (full match), or ``"all-linear"`` (every linear layer but the output head);
``exclude_modules`` takes the same forms; ``layers_to_transform`` keeps only the given layer
indices, found after ``layers_pattern`` (or any ``.name.<index>.`` when none is given);
``rank_pattern``/``alpha_pattern`` override a value for the modules a pattern's suffix matches.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from torch import nn

from kernel_core.errors import KernelCoreError

ALL_LINEAR = "all-linear"
T = TypeVar("T")


class NoTargetModulesError(KernelCoreError, ValueError):
    """A config's ``target_modules`` (after exclusions and layer filters) matched no module."""


def _matches(name: str, spec: str | Sequence[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in spec)


def _layer_index(name: str, layers_pattern: str | Sequence[str] | None) -> int | None:
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or [])
    regexes = [rf".*\.{re.escape(p)}\.(\d+)\." for p in patterns] or [r".*\.[^.]*\.(\d+)\."]
    for regex in regexes:
        match = re.match(regex, name)
        if match:
            return int(match.group(1))
    return None


def linear_suffixes(model: nn.Module, linear_types: tuple[type, ...] = (nn.Linear,)) -> list[str]:
    """``"all-linear"`` as PEFT expands it: the last name part of every linear layer except the
    output head (``get_output_embeddings()``, else a module named ``lm_head``)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, linear_types) and module is not head and name.rsplit(".", 1)[-1] != "lm_head":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def select_targets(
    model: nn.Module,
    target_modules: str | Sequence[str],
    *,
    exclude_modules: str | Sequence[str] | None = None,
    layers_to_transform: int | Iterable[int] | None = None,
    layers_pattern: str | Sequence[str] | None = None,
    linear_types: tuple[type, ...] = (nn.Linear,),
) -> list[str]:
    """Names of the modules to wrap, in model order; raises when nothing matches."""
    spec: str | Sequence[str] = (
        linear_suffixes(model, linear_types) if target_modules == ALL_LINEAR else target_modules
    )
    layers = {layers_to_transform} if isinstance(layers_to_transform, int) else (
        set(layers_to_transform) if layers_to_transform is not None else None
    )
    selected = []
    for name, _ in model.named_modules():
        if not name or not _matches(name, spec):
            continue
        if exclude_modules and _matches(name, exclude_modules):
            continue
        if layers is not None and _layer_index(name, layers_pattern) not in layers:
            continue
        selected.append(name)
    if not selected:
        raise NoTargetModulesError(_no_match_message(model, target_modules))
    return selected


def _no_match_message(model: nn.Module, target_modules: str | Sequence[str]) -> str:
    """Name what was asked for and the module names that come closest."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    close = sorted({c for w in wanted for c in difflib.get_close_matches(w.rsplit(".", 1)[-1], leaves, n=3)})
    hint = f"; close module names: {', '.join(close)}" if close else f"; module names include: {', '.join(leaves[:12])}"
    return (
        f"target_modules {target_modules!r} matched no module of {type(model).__name__} "
        f"(after exclude_modules and layers_to_transform){hint}"
    )


def pattern_value(name: str, patterns: Mapping[str, T], default: T) -> T:
    """The value of the first pattern (a regex) matching the end of ``name`` at a dot boundary,
    as PEFT's ``rank_pattern``/``alpha_pattern``; else ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default
