"""Compiled kernels for plugins: built once per source and machine, cached, and a failed build named."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from kernel_core_platform_cpu import native


def test_builds_once_and_loads_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "answer.cpp"
    source.write_text('extern "C" int answer() { return 42; }\n')
    built = native.build_library(source, "tests")
    assert built.parent == tmp_path / "cache" / "tests" and built.name.startswith("answer-")
    assert ctypes.CDLL(str(built)).answer() == 42
    mtime = built.stat().st_mtime_ns
    assert native.build_library(source, "tests") == built and built.stat().st_mtime_ns == mtime
    source.write_text('extern "C" int answer() { return 7; }\n')
    rebuilt = native.build_library(source, "tests")
    assert rebuilt != built and ctypes.CDLL(str(rebuilt)).answer() == 7


def test_a_rejected_source_is_named_with_the_compilers_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "broken.cpp"
    source.write_text('#error "this CPU lacks what the kernel needs"\n')
    with pytest.raises(native.BuildError, match=r"broken\.cpp.*this CPU lacks what the kernel needs"):
        native.build_library(source, "tests")
    assert not [path for path in (tmp_path / "cache" / "tests").iterdir()]  # no half-written library left


def test_no_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_COMPILER, "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    source = tmp_path / "answer.cpp"
    source.write_text('extern "C" int answer() { return 42; }\n')
    with pytest.raises(native.BuildError, match=re.escape("no C++ compiler found")):
        native.build_library(source, "tests")
