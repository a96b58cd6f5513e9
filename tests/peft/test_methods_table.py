"""docs/peft.md lists every PEFT method of the installed peft (the oracle) with its status (a
method marked done has its plugin installed; one being written may be installed before its row
says so; a row for a type the installed peft lacks says which newer peft adds it), and every
installed tuner's config has only keys its PEFT config has, so peft reads our files without
warnings."""

from __future__ import annotations

import re
from pathlib import Path

import peft
from packaging.version import Version
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import PeftType

from kernel_core.contracts.records import PluginKind
from kernel_core.peft import get_method
from kernel_core.plugins import get_plugin_manager

DOCS = Path(__file__).resolve().parents[2] / "docs" / "peft.md"


def _rows() -> dict[str, str]:
    return dict(re.findall(r"^\| `([A-Z0-9_]+)` \|.*\| ([^|]+) \|$", DOCS.read_text(), flags=re.MULTILINE))


def test_every_peft_type_has_a_row_and_done_means_installed() -> None:
    rows = _rows()
    peft_types = {t.value for t in PeftType}
    assert not peft_types - rows.keys(), f"no row for {sorted(peft_types - rows.keys())}"
    for peft_type in rows.keys() - peft_types:  # only a type a newer peft adds, saying which
        added = re.search(r"new in peft (\d+\.\d+)", rows[peft_type])
        assert added and Version(added[1]) > Version(peft.__version__), f"{peft_type} is no PeftType of peft {peft.__version__}"
    installed = {r.spec.peft_type: r.plugin.distribution.name for r in get_plugin_manager().registrations(PluginKind.TUNER)}
    for peft_type, status in rows.items():
        if status.startswith("done"):
            assert f"`{installed.get(peft_type)}`" in status, f"{peft_type} is marked done but its plugin is not installed"


def test_installed_tuner_configs_write_only_peft_keys() -> None:
    for registration in get_plugin_manager().registrations(PluginKind.TUNER):
        peft_config = PEFT_TYPE_TO_CONFIG_MAPPING.get(registration.spec.peft_type)
        if peft_config is None:
            continue
        fields = get_method(registration.name).config_class.model_fields
        ours = {name for name, field in fields.items() if not field.exclude}  # an excluded field is never written
        extra = sorted(ours - set(peft_config.__dataclass_fields__))
        assert not extra, f"{registration.name} writes keys peft's {peft_config.__name__} does not have: {extra}"
