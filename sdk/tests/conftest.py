"""Plugins the suites run against: the rendered templates and the test doubles."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from kernel_core.contracts.records import PluginKind
from kernel_core_sdk.scaffold import create_plugin

RenderedPlugin = Callable[[PluginKind], ModuleType]


@pytest.fixture(scope="session")
def rendered_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderedPlugin]:
    """``rendered_plugin(kind)``: the entry-point module of that kind's template, rendered as
    plugin ``tmpl-<kind>`` and put on ``sys.path`` (and so on the suites' subprocesses' path)."""
    root = tmp_path_factory.mktemp("templates")
    modules: dict[PluginKind, ModuleType] = {}
    with pytest.MonkeyPatch.context() as patch:

        def render(kind: PluginKind) -> ModuleType:
            if kind not in modules:
                package = create_plugin(kind, f"tmpl-{kind.value}", root)
                patch.syspath_prepend(str(package))
                modules[kind] = importlib.import_module(f"kernel_core_tmpl_{kind.value.replace('-', '_')}.plugin")
            return modules[kind]

        yield render


@pytest.fixture(scope="session")
def doubles() -> Iterator[Callable[[str], ModuleType]]:
    """``doubles(package)``: the entry-point module of a test double under ``doubles/``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).parent / "doubles"))
        yield lambda package: importlib.import_module(f"{package}.plugin")


def run_package_tests(packages: Sequence[Path], *options: str) -> subprocess.CompletedProcess[str]:
    """Run the tests of generated packages as their author would: pytest in a new process,
    each package importable but none installed. ``options`` go to pytest."""
    path = [str(package) for package in packages] + [p for p in sys.path if p]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *options]
        + [str(package / "tests") for package in packages],
        cwd=Path(packages[0]).parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def package_tests() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_package_tests`, as a fixture (test modules cannot import this conftest)."""
    return run_package_tests
