"""Crash-safe writes: killed at every write point, a folder or a file set is the old one or the new
one (or, for a file set, lacks its commit record); a full disk is a clear error that changes
nothing; leftovers of dead writers go, those of live ones stay."""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kernel_core.atomic import atomic_files, atomic_folder, atomic_write_text, is_leftover, remove_stale
from kernel_core.errors import DiskFullError, KernelCoreError

from .crash import killed_before_write

SIZE = 1 << 20
COMMIT = "config.json"


def _write_generation(folder: Path, generation: int) -> None:
    """Three files that each say which write they belong to."""
    (folder / "weights.bin").write_bytes(bytes([generation]) * SIZE)
    (folder / "notes.txt").write_text(f"{generation}\n")
    (folder / COMMIT).write_text(json.dumps({"generation": generation}))


def _generation(folder: Path) -> int:
    """The write the folder holds, after checking that every file belongs to it."""
    generation = json.loads((folder / COMMIT).read_text())["generation"]
    assert (folder / "notes.txt").read_text() == f"{generation}\n"
    assert (folder / "weights.bin").read_bytes() == bytes([generation]) * SIZE
    return generation


def _save_folder(target: Path, generation: int) -> None:
    with atomic_folder(target) as staging:
        _write_generation(staging, generation)


def _save_files(folder: Path, generation: int) -> None:
    with atomic_files(folder, COMMIT) as staging:
        _write_generation(staging, generation)


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_folder_is_replaced_whole_with_the_callers_umask(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model"
    _save_folder(target, 1)
    _save_folder(target, 2)
    assert _generation(target) == 2
    assert _names(target.parent) == ["model"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask


def test_files_join_a_folder_and_leave_its_other_files(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-2").mkdir()
    _save_files(tmp_path, 1)
    _save_files(tmp_path, 2)
    assert _generation(tmp_path) == 2
    assert _names(tmp_path) == ["checkpoint-2", COMMIT, "notes.txt", "weights.bin"]
    atomic_write_text(tmp_path / "log.json", "[1]\n")
    atomic_write_text(tmp_path / "log.json", "[1, 2]\n")
    assert (tmp_path / "log.json").read_text() == "[1, 2]\n"
    assert "log.json" in _names(tmp_path) and len(_names(tmp_path)) == 5


@pytest.mark.parametrize("save", [_save_folder, _save_files], ids=["folder", "files"])
def test_an_error_midway_changes_nothing(tmp_path: Path, save: Callable[[Path, int], None]) -> None:
    target = tmp_path / "out"
    save(target, 1)

    def broken(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError, match="the writer failed"):
        with (atomic_folder(target) if save is _save_folder else atomic_files(target, COMMIT)) as staging:
            broken(staging)
    assert _generation(target) == 1
    assert not [name for name in os.listdir(tmp_path) + os.listdir(target) if is_leftover(name)]


@pytest.mark.parametrize("save", [_save_folder, _save_files], ids=["folder", "files"])
def test_a_full_disk_is_a_clear_error_that_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, save: Callable[[Path, int], None]
) -> None:
    target = tmp_path / "out"
    save(target, 1)
    real_write_bytes = Path.write_bytes

    def disk_fills_midway(path: Path, data: bytes) -> int:
        real_write_bytes(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Path, "write_bytes", disk_fills_midway)
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(DiskFullError) as error:
        save(target, 2)
    assert str(error.value).startswith(f"no space left on the device while writing {target};")
    assert isinstance(error.value, KernelCoreError) and isinstance(error.value, OSError)
    assert error.value.errno == errno.ENOSPC
    monkeypatch.setattr(Path, "write_bytes", real_write_bytes)
    assert _generation(target) == 1
    assert not [name for name in os.listdir(tmp_path) + os.listdir(target) if is_leftover(name)]
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_killed_at_any_write_point_a_folder_is_the_old_or_the_new(tmp_path: Path) -> None:
    """The only other state is no folder at all, between setting the old one aside and renaming the
    new one in; the next writer's first move puts the old one back."""
    target = tmp_path / "model"
    _save_folder(target, 1)
    seen = set()
    for n in itertools.count(1):
        killed = killed_before_write(lambda: _save_folder(target, 2), n)
        seen.add(_generation(target) if target.exists() else None)
        assert [name for name in _names(tmp_path) if not is_leftover(name)] in ([], ["model"])
        remove_stale(tmp_path)
        assert _generation(target) in (1, 2) and _names(tmp_path) == ["model"]
        _save_folder(target, 1)  # the next run redoes the write cleanly
        if not killed:
            break
    assert seen == {1, 2, None} and n > 10


def test_killed_at_any_write_point_files_are_the_old_or_the_new_or_uncommitted(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not ours")
    _save_files(tmp_path, 1)
    seen = set()
    for n in itertools.count(1):
        killed = killed_before_write(lambda: _save_files(tmp_path, 2), n)
        seen.add(_generation(tmp_path) if (tmp_path / COMMIT).exists() else None)
        assert (tmp_path / "README.md").read_text() == "not ours"
        _save_files(tmp_path, 1)
        assert _names(tmp_path) == ["README.md", COMMIT, "notes.txt", "weights.bin"]
        if not killed:
            break
    assert seen == {1, 2, None} and n > 10


def test_leftovers_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    for name in (f".a.tmp-{dead}-1f", ".a.tmp-from-an-older-kernel-core", f".c.old-{dead}-3f", f".d.old-{dead}-4f"):
        (tmp_path / name).mkdir()
    (tmp_path / f".b.tmp-{alive}-2f").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "e.tmp-1-2").mkdir()  # not hidden: someone else's
    remove_stale(tmp_path)
    assert _names(tmp_path) == [f".b.tmp-{alive}-2f", "c", "d", "e.tmp-1-2"]  # c was set aside: put back
    assert is_leftover(f".b.tmp-{alive}-2f") and not is_leftover("e.tmp-1-2") and not is_leftover("c")
    remove_stale(tmp_path / "absent")
