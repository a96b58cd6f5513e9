"""Finding and loading the shared workload file, and shrinking a workload for quick runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import kernel_core
from kernel_core.bench import workloads
from kernel_core.errors import KernelCoreError

SHARED = Path(kernel_core.__file__).resolve().parents[2] / "shared" / "bench" / "workload.py"
needs_shared = pytest.mark.skipif(not SHARED.is_file(), reason=f"no shared workload file at {SHARED}")


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(workloads.ENV_WORKLOADS, raising=False)


def test_default_is_beside_the_repository() -> None:
    assert workloads.default_path() == SHARED.resolve()


def test_argument_beats_environment_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env, from_arg = tmp_path / "env.py", tmp_path / "arg.py"
    from_env.write_text("")
    from_arg.write_text("")
    monkeypatch.setenv(workloads.ENV_WORKLOADS, str(from_env))
    assert workloads.locate() == from_env
    assert workloads.locate(from_arg) == from_arg


@pytest.mark.parametrize("via", ["argument", "environment", "default"])
def test_missing_file_names_its_path(via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "workload.py"
    if via == "environment":
        monkeypatch.setenv(workloads.ENV_WORKLOADS, str(missing))
    if via == "default":
        monkeypatch.setattr(workloads, "default_path", lambda: missing)
    with pytest.raises(KernelCoreError, match="does not exist") as error:
        workloads.locate(missing if via == "argument" else None)
    assert str(missing) in str(error.value) and "--workloads" in str(error.value)


def test_file_without_the_workload_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "workload.py"
    empty.write_text("W1 = dict(n=2, max_tokens=3)\n")
    with pytest.raises(KernelCoreError, match=f"{empty}.*W1"):
        workloads.workload(empty, "W1")


@needs_shared
def test_full_w1_matches_the_reference_counts() -> None:
    full = workloads.workload(SHARED, "W1")
    assert (len(full.prompts), full.max_tokens, full.full) == (64, 128, True)
    assert full.prompts[0].startswith("Request 0: ")


@needs_shared
@pytest.mark.parametrize("name", ["W1", "W3"])
def test_shrunk_workload_is_the_first_prompts(name: str) -> None:
    full = workloads.workload(SHARED, name)
    small = workloads.workload(SHARED, name, num_prompts=4, max_tokens=4)
    assert small.prompts == full.prompts[:4]
    assert (small.max_tokens, small.full) == (4, False)
    assert workloads.workload(SHARED, name, max_tokens=full.max_tokens).full
