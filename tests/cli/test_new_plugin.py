"""`kcore new-plugin` writes a plugin package that installs, is discovered, and passes its tests."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import kernel_core
from kernel_core import api_version
from kernel_core.cli import main
from kernel_core.contracts.records import PluginKind


def kcore(*args: str) -> subprocess.CompletedProcess[str]:
    """The kcore command line in a fresh interpreter, as a user runs it."""
    code = "import sys; from kernel_core.cli import main; sys.exit(main(sys.argv[1:]))"
    return python("-c", code, *args)


def python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This interpreter (the one kcore installs into) in a fresh process."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_help_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["new-plugin", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(kind.value in out for kind in PluginKind)
    assert "the Llama-family forward to adapt" in out
    assert "batched LoRA for serving" in out


def test_creates_the_package_under_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", "moe-kernel", "loop-moe", "--dir", str(tmp_path)]) == 0
    package = tmp_path / "kernel-core-loop-moe"
    assert (package / "kernel_core_loop_moe" / "moe.py").is_file()
    assert f"python -m pip install -e '{package}[test]'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scheduler-policy", "My_Policy"], "invalid plugin NAME 'My_Policy'"),
    ],
)
def test_refusals_are_one_clear_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-plugin", *argv, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kcore: error: ") and message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kernel-core-taken").mkdir()
    assert main(["new-plugin", "tuner", "taken", "--dir", str(tmp_path)]) == 2
    assert "kernel-core-taken already exists" in capsys.readouterr().err
    assert not any((tmp_path / "kernel-core-taken").iterdir())


def test_asks_for_the_sdk_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "kernel_core_sdk" else find_spec(name, *a)
    )
    assert main(["new-plugin", "tuner", "scales", "--dir", str(tmp_path)]) == 2
    assert "install kernel-core-sdk" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_generated_plugin_installs_is_discovered_and_passes_its_tests(tmp_path: Path) -> None:
    name = f"sched-{uuid.uuid4().hex[:8]}"
    distribution, module = f"kernel-core-{name}", f"kernel_core_{name.replace('-', '_')}"
    created = kcore("new-plugin", "scheduler-policy", name, "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    package = tmp_path / distribution

    # --no-deps and no build isolation: kernel-core is already here, and no network is needed.
    installed = python("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(package))
    assert installed.returncode == 0, installed.stderr
    try:
        discovered = python(
            "-c",
            "import importlib_metadata\n"
            "from kernel_core.contracts.records import PluginKind\n"
            "from kernel_core.plugins import PluginManager\n"
            "points = {ep.name: ep.value for ep in importlib_metadata.entry_points(group='kernel_core')}\n"
            f"assert points.get({distribution!r}) == '{module}.plugin', points\n"
            f"chosen = PluginManager.from_environment().select(PluginKind.SCHEDULER_POLICY, {name!r})\n"
            f"assert chosen.plugin.distribution.name == {distribution!r}, chosen.plugin\n"
            "print(chosen.spec.implementation)\n",
        )
        assert discovered.returncode == 0, discovered.stderr
        assert discovered.stdout.strip().startswith(f"{module}.policy:")

        listed = kcore("plugins", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = [row for row in json.loads(listed.stdout) if row["distribution"] == distribution]
        # The template targets the running API version, major.minor.
        expected_api = "{}.{}".format(*api_version.parse(kernel_core.PLUGIN_API_VERSION))
        assert (row["name"], row["kind"], row["status"], row["api"]) == (name, "scheduler-policy", "loaded", expected_api)

        # From tmp_path, so the installed package is imported, not the source folder.
        tested = python("-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests"), cwd=tmp_path)
        assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
        assert " passed" in tested.stdout and "failed" not in tested.stdout
    finally:
        python("-m", "pip", "uninstall", "-y", "-q", distribution)
    assert python("-c", f"import {module}").returncode != 0, "uninstall left the package importable"
