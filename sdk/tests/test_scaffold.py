"""Rendering plugin packages from the templates."""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import peft
import pytest
import tomllib

from kernel_core.contracts.records import PluginKind
from kernel_core_sdk.scaffold import TEMPLATES, TEMPLATES_DIR, ScaffoldError, create_plugin


def test_every_kind_but_model_architecture_has_a_template() -> None:
    assert set(TEMPLATES) == set(PluginKind)
    for kind, template in TEMPLATES.items():
        assert (TEMPLATES_DIR / kind.value / "${module}" / f"{template.impl_module}.py.tmpl").is_file()


@pytest.mark.parametrize("kind", sorted(TEMPLATES), ids=str)
def test_renders_a_complete_installable_package(kind: PluginKind, tmp_path: Path) -> None:
    target = create_plugin(kind, "my-thing2", tmp_path)
    assert target == tmp_path / "kernel-core-my-thing2"
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    module = "kernel_core_my_thing2"
    assert files == sorted([
        "README.md",
        "pyproject.toml",
        f"{module}/__init__.py",
        f"{module}/plugin.py",
        f"{module}/{TEMPLATES[kind].impl_module}.py",
        "tests/test_my_thing2.py",
    ])
    for name in files:
        text = (target / name).read_text()
        assert "${" not in text and "$module" not in text, f"{name} has an unrendered placeholder"
        if name.endswith(".py"):
            compile(text, name, "exec")
    project = tomllib.loads((target / "pyproject.toml").read_text())["project"]
    assert project["name"] == "kernel-core-my-thing2"
    assert project["entry-points"] == {"kernel_core": {"kernel-core-my-thing2": f"{module}.plugin"}}
    assert "Publish" in (target / "README.md").read_text()


@pytest.mark.parametrize("name", ["Upper", "under_score", "-lead", "9lives", "trailing-", "double--dash", "", "sp ace"])
def test_rejects_names_that_cannot_be_packages(name: str, tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match=re.escape(repr(name))):
        create_plugin(PluginKind.SCHEDULER_POLICY, name, tmp_path)
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    target = create_plugin(PluginKind.SCHEDULER_POLICY, "mine", tmp_path)
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ScaffoldError, match="already exists"):
        create_plugin(PluginKind.TUNER, "mine", tmp_path)
    assert (target / "notes.txt").read_text() == "keep me"
    assert (target / "kernel_core_mine" / "policy.py").exists()


def test_tuner_template_config_is_peft_compatible(tmp_path: Path) -> None:
    """Generated as `ia3`, the template's config writes only keys peft's IA3Config has (so peft
    reads its adapter_config.json without a warning), and its field names follow peft's."""
    package = create_plugin(PluginKind.TUNER, "ia3", tmp_path)
    tuner = importlib.util.spec_from_file_location("generated_ia3_tuner", package / "kernel_core_ia3" / "tuner.py")
    module = importlib.util.module_from_spec(tuner)
    tuner.loader.exec_module(module)
    data = {"peft_type": "IA3", **module.Ia3Config(target_modules=["k_proj"]).to_dict()}
    assert set(data) <= set(peft.IA3Config.__dataclass_fields__), sorted(set(data) - set(peft.IA3Config.__dataclass_fields__))
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert peft.PeftConfig.from_pretrained(str(tmp_path)).init_ia3_weights is True
