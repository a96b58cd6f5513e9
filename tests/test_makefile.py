"""``make example-adapter`` trains into ``EXAMPLE_ADAPTER.partial`` and renames it when done:
whatever a kill leaves, ``make`` does not take it for finished and ``make run`` does not serve it;
(slow) a real ``make example-adapter`` killed at random times, then run again, ends with the same
adapter as a run nobody killed. And ``make`` installs the CPU torch 2.13.0 first while no
package pins torch, so a GPU user can install the build of torch their hardware needs."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME

from .finetune.trajectory import assert_same_adapter, trajectory

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = "/kcore finetune "


def _make(*args: str, check: bool = True) -> str:
    """``make`` in the repository, never rebuilding the virtual environment."""
    command = ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", *args]
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60).stdout


def _fake_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / CONFIG_NAME).write_text("{}")
    (folder / WEIGHTS_NAME).write_bytes(b"")
    return folder


def _serves(adapter: Path) -> bool:
    """Whether ``make run`` would serve ``adapter`` (read from its dry run)."""
    serve = [line for line in _make("-n", "run", f"EXAMPLE_ADAPTER={adapter}").splitlines() if "--adapter" in line]
    assert serve in ([], [f"    --adapter person-records={adapter}"]), serve
    return bool(serve)


def _would_train(adapter: Path) -> bool:
    """Whether ``make example-adapter`` would train (read from its dry run), and into the .partial."""
    plan = _make("-n", "example-adapter", f"EXAMPLE_ADAPTER={adapter}")
    if FINETUNE not in plan:
        return False
    assert plan.index(f"rm -rf {adapter}.partial") < plan.index(FINETUNE) < plan.index(f"--output {adapter}.partial")
    assert plan.rstrip().endswith(f"rm -rf {adapter} && mv {adapter}.partial {adapter}")
    return True


def test_a_killed_run_leaves_nothing_make_takes_for_finished(tmp_path: Path) -> None:
    adapter = tmp_path / "person-records"
    _fake_adapter(Path(f"{adapter}.partial"))  # killed after kcore finetune, before the rename
    assert _would_train(adapter) and not _serves(adapter)
    (adapter / "checkpoint-2").mkdir(parents=True)  # an odd leftover without adapter_config.json
    assert _would_train(adapter) and not _serves(adapter)


def test_a_finished_adapter_is_served_and_not_retrained(tmp_path: Path) -> None:
    adapter = _fake_adapter(tmp_path / "person-records")
    assert _serves(adapter) and not _would_train(adapter)


@pytest.mark.slow
def test_make_example_adapter_killed_at_random_times_then_rerun(embedded_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = (ROOT / "examples/person-records/train.jsonl").read_text().splitlines()[:8]
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    (data / "eval.jsonl").write_text("\n".join(rows[:2]) + "\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "KERNEL_CORE_CACHE": str(embedded_model.parents[1])}

    def start(adapter: Path) -> subprocess.Popen[bytes]:
        command = ["make", "-C", str(ROOT), "-o", ".venv/.installed", "example-adapter",
                   f"EXAMPLE_ADAPTER={adapter}", f"EXAMPLE_DATA={data}"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
                                start_new_session=True)  # its own process group: make and what it runs

    started = time.perf_counter()
    assert start(reference := tmp_path / "reference").wait(timeout=900) == 0
    duration = time.perf_counter() - started
    adapter, rng, kills = tmp_path / "person-records", random.Random(3), 3
    for attempt in range(kills):
        make = start(adapter)
        time.sleep(duration * (attempt + rng.random()) / kills)
        os.killpg(make.pid, signal.SIGKILL)
        make.wait()
        if _serves(adapter):  # the rename had happened: then the adapter is the finished one
            assert not _would_train(adapter)
            break
        assert _would_train(adapter)
    assert start(adapter).wait(timeout=900) == 0
    assert _serves(adapter) and not _would_train(adapter) and not Path(f"{adapter}.partial").exists()
    assert_same_adapter(adapter, reference)
    assert trajectory(adapter) == trajectory(reference)


def test_make_installs_the_cpu_torch_first_and_no_pyproject_pins_torch() -> None:
    """Here ``make`` installs the CPU wheel 2.13.0 before anything else; the packages themselves
    take a range, so a user may install the CUDA, ROCm or XPU build of torch (docs/install.md)."""
    recipe = (ROOT / "Makefile").read_text()
    assert recipe.index("pip install -q torch==2.13.0") < recipe.index("pip install -q $(addprefix -e")
    torch_requirements = {}
    for pyproject in sorted(ROOT.glob("**/pyproject.toml")):
        if ".venv" in pyproject.parts:
            continue
        for requirement in tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", []):
            if re.match(r"torch\s*([<>=!~;\[]|$)", requirement):
                torch_requirements[pyproject.relative_to(ROOT).as_posix()] = requirement
    assert torch_requirements["pyproject.toml"] == "torch>=2.5,<3"
    pinned = {path: r for path, r in torch_requirements.items() if re.search(r"===?|~=", r) or "<" not in r}
    assert pinned == {}
