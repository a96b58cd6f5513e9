"""Every hook spec is documented, with its exact signature, in docs/plugins.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kernel_core import hookspecs
from kernel_core.plugins import REGISTRATION_HOOKS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if name.startswith("kernel_core_") and callable(fn)
]


def signature(fn) -> str:
    """``def name(arg: Type) -> Return`` with annotations as written in the source."""
    params = ", ".join(f"{p.name}: {p.annotation}" for p in inspect.signature(fn).parameters.values())
    return f"def {fn.__name__}({params}) -> {inspect.signature(fn).return_annotation}"


def test_hookspecs_exist_for_every_kind_and_observer():
    names = {name for name, _ in HOOKS}
    assert set(REGISTRATION_HOOKS) <= names
    assert {"kernel_core_request_added", "kernel_core_request_finished", "kernel_core_step_done"} <= names


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[n for n, _ in HOOKS])
def test_hook_has_docstring_saying_when_and_firstresult(name, fn):
    doc = inspect.getdoc(fn) or ""
    assert "Called" in doc, f"{name}: say when it is called"
    assert "firstresult" in doc.replace("\n", " "), f"{name}: say whether it is firstresult"
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{name}: document parameter {param}"


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[n for n, _ in HOOKS])
def test_hook_is_documented_with_its_exact_signature(name, fn):
    text = DOCS.read_text()
    assert f"### `{name}`" in text, f"docs/plugins.md lacks a section for {name}"
    assert signature(fn) in text, f"docs/plugins.md must show `{signature(fn)}`"
