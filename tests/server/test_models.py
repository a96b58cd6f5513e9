"""Which adapter folders ``POST /v1/adapters`` may load (the HTTP side is in test_server.py)."""

from __future__ import annotations

import pytest

from kernel_core.server.errors import APIError
from kernel_core.server.models import inside


def test_only_folders_inside_the_adapter_dir(tmp_path):
    root = tmp_path / "adapters"
    (root / "a").mkdir(parents=True)
    (root / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "secret").mkdir()
    assert inside(root, "a") == (root / "a").resolve()
    assert inside(root, str(root / "a")) == (root / "a").resolve()
    (root / "alias").symlink_to(root / "a")  # a link that stays inside is fine
    assert inside(root, "alias") == (root / "a").resolve()
    (root / "out").symlink_to(tmp_path / "secret")
    (root / "b").mkdir()
    (root / "b" / "adapter_model.safetensors").symlink_to(tmp_path / "secret" / "x")
    for path in ("../secret", str(tmp_path / "secret"), "out", "a/../../secret", "b", "missing", "a/adapter_config.json"):
        with pytest.raises(APIError) as refused:
            inside(root, path)
        assert refused.value.status == 400 and refused.value.param == "path", path


def test_a_linked_adapter_dir_is_resolved_first(tmp_path):
    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    assert inside(tmp_path / "link", "a") == (real / "a").resolve()
