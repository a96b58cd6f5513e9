"""``kcore plugins list|doctor``: what is installed, what loaded, and whether it works."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kernel_core.errors import PluginError
from kernel_core.plugins import PluginManager, PluginStatus, get_plugin_manager


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list and check installed plugins",
        description="Inspect the kernel-core plugins installed in this environment.",
    )
    commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser(
        "list",
        help="one row per registered implementation",
        description=(
            "List every plugin: name, kind, distribution, version, the plugin API it targets, "
            "and its status (loaded, failed, duplicate, not-allowed, disabled) with the error."
        ),
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    listing.set_defaults(func=run_list)
    doctor = commands.add_parser(
        "doctor",
        help="import every implementation and run cheap checks",
        description=(
            "Validate every installed plugin: import each registered implementation, check it "
            "subclasses its kind's contract, probe platforms, list the settings each plugin takes "
            "(--plugin-option), and say which attention backend, LoRA kernel and MoE kernel an engine "
            "started here gets and why. "
            "Exits 1 when anything is wrong."
        ),
    )
    doctor.set_defaults(func=run_doctor)


def rows(manager: PluginManager) -> list[dict[str, Any]]:
    """One row per registration; a plugin with none (failed, filtered) still gets one row."""
    out = []
    for info in manager.plugins:
        base = {
            "plugin": info.name,
            "distribution": info.distribution.name,
            "version": info.distribution.version,
            "api": info.target_api,
        }
        if not info.registrations:
            out.append({**base, "name": None, "kind": None, "status": str(info.status), "error": info.error})
        for reg in info.registrations:
            status = "duplicate" if reg.error else str(info.status)
            out.append({**base, "name": reg.name, "kind": str(reg.kind), "status": status, "error": reg.error})
    return sorted(out, key=lambda r: (r["kind"] or "~", r["name"] or "", r["distribution"]))


def format_table(table: list[dict[str, Any]]) -> str:
    """Align the rows under a header; errors go on their own indented line."""
    columns = ("kind", "name", "distribution", "version", "api", "status")
    cells = [[str(row[c] or "-") for c in columns] for row in table]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row, cell in zip(table, cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(cell, widths)).rstrip())
        if row["error"]:
            lines.append(f"    error: {row['error']}")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    table = rows(get_plugin_manager())
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def check(manager: PluginManager) -> list[tuple[str, str | None]]:
    """(label, problem or None) for every plugin fault and every registered implementation."""
    from kernel_core.platforms import probe

    results: list[tuple[str, str | None]] = []
    for info in manager.plugins:
        if info.status is PluginStatus.FAILED:
            results.append((f"plugin {info.name} ({info.distribution})", info.error))
        for reg in info.registrations:
            label = f"{reg.kind} {reg.name} ({info.distribution})"
            if reg.error:
                results.append((label, reg.error))
                continue
            try:
                implementation = manager.load(reg)
            except Exception as exc:  # noqa: BLE001 - report, go on with the others
                results.append((label, str(exc)))
                continue
            contract = reg.spec.load_contract()
            if not (isinstance(implementation, type) and issubclass(implementation, contract)):
                results.append((label, f"{reg.spec.implementation} does not subclass {contract.__qualname__}"))
                continue
            if reg.kind == "platform":
                label += f": {probe(manager, reg)[1].detail}"
            try:
                label += settings_lines(implementation, f"{reg.kind}.{reg.name}")
            except PluginError as exc:
                results.append((label, str(exc)))
                continue
            results.append((label, None))
    return results


def settings_lines(implementation: type, plugin: str) -> str:
    """The settings a plugin takes (plugin API 1.6), one indented line each, as ``kcore plugins
    doctor`` lists them under the plugin; empty for a plugin without ``Settings``."""
    from kernel_core.contracts.settings import describe_settings, settings_model

    model = settings_model(implementation)
    if model is None:
        return ""
    return "".join(
        f"\n      --plugin-option {plugin}.{row['field']}=... ({row['type']}, default {row['default']})"
        + (f": {row['description']}" if row["description"] else "")
        for row in describe_settings(model)
    )


def kernel_choices(manager: PluginManager) -> list[tuple[str, str | None]]:
    """(label, problem or None) of the implementation of each kernel kind an engine started here gets (by the platform's defaults, no setting given), and why; a kind with nothing
    loaded (``KERNEL_CORE_PLUGINS`` left them out) is skipped."""
    from kernel_core.contracts.records import KERNEL_KINDS
    from kernel_core.engine.selection import select_kernel
    from kernel_core.platforms import select_platform

    wanted = [kind for kind in KERNEL_KINDS if manager.registrations(kind)]
    if not wanted:
        return []
    try:
        platform = select_platform(manager).platform
    except Exception as exc:  # noqa: BLE001 - report it beside the other checks
        return [("platform for this machine", str(exc))]
    results: list[tuple[str, str | None]] = []
    for kind in wanted:
        what = str(kind).replace("-", " ")
        try:
            choice = select_kernel(manager, platform, kind, None)
        except Exception as exc:  # noqa: BLE001 - report it beside the other checks
            results.append((f"{what} for this machine", str(exc)))
            continue
        results.append((f"{what} for this machine: {choice.registration.name}, {choice.reason}", None))
    return results


def run_doctor(args: argparse.Namespace) -> int:
    manager = get_plugin_manager()
    results = [*check(manager), *kernel_choices(manager)]
    for label, problem in results:
        print(f"ok    {label}" if problem is None else f"FAIL  {label}\n      {problem}")
    failures = sum(problem is not None for _, problem in results)
    print(f"{len(results) - failures} ok, {failures} failed")
    return 1 if failures else 0
