"""Shared fixtures: a clean plugin environment, and fake plugin distributions on disk."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from kernel_core import platforms, plugins
from kernel_core.models.embedded import embedded_model_path

PLUGIN_ENV = (
    plugins.ENV_ALLOW,
    plugins.ENV_DENY,
    plugins.ENV_STRICT,
    platforms.ENV_PLATFORM,
)


def _clear_caches() -> None:
    plugins.discover_entry_points.cache_clear()
    plugins.get_plugin_manager.cache_clear()
    platforms.current_platform.cache_clear()


@pytest.fixture(autouse=True)
def clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no plugin variables set and no cached discovery."""
    for variable in PLUGIN_ENV:
        monkeypatch.delenv(variable, raising=False)
    _clear_caches()
    yield
    _clear_caches()


FakeDist = Callable[..., Path]


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDist:
    """Install a fake plugin distribution (module + dist-info) visible to importlib-metadata."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist: str, module: str, source: str, version: str = "1.0", entry_name: str | None = None) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[kernel_core]\n{entry_name or dist} = {module}\n")
        created.append(module)
        _clear_caches()
        return site

    yield make
    for module in created:
        sys.modules.pop(module, None)


def plugin_source(kind_hook: str, record: str, api: str = "1.0") -> str:
    """Source of a minimal plugin module registering one record through ``kind_hook``."""
    return f"""
        import kernel_core
        from kernel_core.contracts.records import *
        kernel_core_api = {api!r}

        @kernel_core.hookimpl
        def {kind_hook}():
            return [{record}]
    """


@pytest.fixture(scope="session")
def embedded_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$KERNEL_CORE_CACHE`` if the run sets it (conversion then survives across runs), else a temp one."""
    cache = Path(os.environ.get("KERNEL_CORE_CACHE") or tmp_path_factory.getbasetemp() / "kernel_core_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERNEL_CORE_CACHE", str(cache))
        embedded_model_path()
    return cache


@pytest.fixture
def embedded_model(embedded_model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Folder of the converted embedded model, with ``KERNEL_CORE_CACHE`` pointing at its cache."""
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(embedded_model_cache))
    return embedded_model_path(convert=False)


#: The shape of :func:`tiny_model`: tests that need another init or another architecture of that
#: size pass it to ``save_servable_model`` with their changes.
TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def tiny_model(embedded_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random-init Llama with SmolLM2's tokenizer: real text in and out, fast steps.

    Its outputs are arbitrary but deterministic; tests of the engine's mechanics use it, and the
    oracle tests compare the real embedded model with transformers.
    """
    from transformers import LlamaConfig

    from kernel_core_sdk.hf_oracle import save_servable_model

    return save_servable_model(partial(LlamaConfig, **TINY_LLAMA), embedded_model_cache / "models" / "smollm2-135m-instruct",
                               tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules of tiny-model engine tests: tiny GEMMs gain nothing from torch's thread pool,
    and on a shared machine its spinning threads cost a lot. Use with ``pytestmark``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
