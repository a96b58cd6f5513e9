"""Which plugin API targets fit which kernel-core."""

import types

import pytest

import kernel_core
from kernel_core.api_version import check_target, fitting_range, parse
from kernel_core.errors import IncompatiblePluginError


def plugin(target):
    return types.SimpleNamespace(kernel_core_api=target)


def test_our_version_is_semver():
    assert parse(kernel_core.PLUGIN_API_VERSION) == (1, 7)


@pytest.mark.parametrize("target", ["1.0", "1.0.0", "1.0.7"])
def test_same_major_older_or_equal_minor_fits(target):
    assert check_target(plugin(target), "1.0.0") == target
    assert check_target(plugin(target), "1.4.0") == target


@pytest.mark.parametrize("target", ["2.0", "0.9", "1.5"])
def test_other_major_or_newer_minor_is_refused(target):
    with pytest.raises(IncompatiblePluginError, match=rf"targets plugin API {target}.*provides 1.4.0.*1.0 to 1.4 fit"):
        check_target(plugin(target), "1.4.0")


@pytest.mark.parametrize("target", ["one", "1", 1.0])
def test_malformed_target_is_named(target):
    with pytest.raises(IncompatiblePluginError, match="is not a plugin API version"):
        check_target(plugin(target), "1.0.0")


def test_fitting_range():
    assert fitting_range("1.0.3") == "1.0"
    assert fitting_range("2.3.0") == "2.0 to 2.3"


def test_docs_and_the_plugin_template_state_the_current_version():
    """What the authoring guide tells a new author to declare is what `kcore new-plugin` writes."""
    import re
    from pathlib import Path

    from kernel_core.contracts.records import PluginKind
    from kernel_core_sdk.scaffold import template_variables

    major, minor = parse(kernel_core.PLUGIN_API_VERSION)
    current = f"{major}.{minor}"
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert re.search(r"Plugin API version: \*\*([\d.]+)\*\*", (docs / "plugins.md").read_text()).group(1) == current
    guide = re.search(r'`kernel_core_api = "([\d.]+)"` \(the current version', (docs / "writing-a-plugin.md").read_text())
    assert guide.group(1) == current
    assert {template_variables(kind, "x")["api_version"] for kind in PluginKind} == {current}
