"""``save_pretrained`` killed with SIGKILL (at random times, and right before each write) while it
replaces an adapter: the folder then holds the old adapter or the new one, whole, or no
``adapter_config.json`` (refused by name); saving again redoes it cleanly. A full disk is a clear
error that leaves the old adapter loadable."""

from __future__ import annotations

import errno
import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.atomic import is_leftover
from kernel_core.errors import AdapterLoadError, DiskFullError
from kernel_core.peft import PeftModel, get_config, get_peft_model, state_dict
from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME, read_adapter

from ..crash import killed_after, killed_before_write, timed

KILLS = 8


@pytest.fixture(scope="module")
def models(tiny_model: Path) -> list[PeftModel]:
    """Two adapters that differ in every LoRA tensor; the ``lm_head`` copy (12 MB) makes a save
    long enough for random kills to land inside it."""
    from transformers import AutoModelForCausalLM

    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        config = get_config(
            "lora", r=8, target_modules="all-linear", init_lora_weights=False, modules_to_save=["lm_head"]
        )
        adapters.append(get_peft_model(base, config))
    return adapters


@pytest.fixture(scope="module")
def expected(models: list[PeftModel], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    tensors = []
    for model in models:
        folder = tmp_path_factory.mktemp("reference")
        model.save_pretrained(folder)
        tensors.append(read_adapter(folder)[1])
    return tensors


def _generation(folder: Path, expected: list[dict[str, torch.Tensor]]) -> int | None:
    """Which adapter the folder holds, every tensor checked; None when loading it is refused."""
    if not (folder / CONFIG_NAME).exists():
        with pytest.raises(AdapterLoadError, match=f"'{folder}' has no {CONFIG_NAME}"):
            read_adapter(folder)
        return None
    _, tensors = read_adapter(folder)
    for index, candidate in enumerate(expected):
        if tensors.keys() == candidate.keys() and all(torch.equal(tensors[k], v) for k, v in candidate.items()):
            return index
    raise AssertionError(f"{folder} holds tensors of neither adapter: a half-written save")


def _visible(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if not is_leftover(path))


def test_killed_at_random_times_the_adapter_is_old_new_or_refused(
    models: list[PeftModel], expected: list[dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    folder = tmp_path / "adapter"
    models[0].save_pretrained(folder)
    duration = timed(lambda: models[1].save_pretrained(tmp_path / "timing"))
    rng = random.Random(12)
    kills, seen = 0, []
    for k in range(KILLS):  # delay k falls in the k-th of KILLS equal slices of the save
        old, new = k % 2, (k + 1) % 2
        kills += killed_after(lambda: models[new].save_pretrained(folder), duration * (k + rng.random()) / KILLS)
        seen.append(_generation(folder, expected))
        assert seen[-1] in (old, new, None)
        assert set(_visible(folder)) <= {CONFIG_NAME, WEIGHTS_NAME}
        models[new].save_pretrained(folder)  # the next run redoes the save
        assert _generation(folder, expected) == new
        assert sorted(os.listdir(folder)) == [CONFIG_NAME, WEIGHTS_NAME]  # the killed save's staging is gone
    assert kills > 0, f"no kill landed inside a {duration:.3f} s save"


def test_killed_at_any_write_point_the_adapter_is_old_new_or_refused(
    models: list[PeftModel], expected: list[dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    models[0].save_pretrained(tmp_path)
    seen = set()
    for n in itertools.count(1):
        killed = killed_before_write(lambda: models[1].save_pretrained(tmp_path), n)
        seen.add(_generation(tmp_path, expected))
        models[0].save_pretrained(tmp_path)
        assert _generation(tmp_path, expected) == 0 and sorted(os.listdir(tmp_path)) == [CONFIG_NAME, WEIGHTS_NAME]
        if not killed:
            break
    assert seen == {0, 1, None}


def test_a_full_disk_is_a_clear_error_and_the_old_adapter_stays(
    models: list[PeftModel], expected: list[dict[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "adapter"
    models[0].save_pretrained(folder)
    real_save_file = state_dict.save_file

    def disk_fills_midway(tensors: dict[str, torch.Tensor], filename: str, **kwargs: Any) -> None:
        real_save_file(tensors, filename, **kwargs)
        with open(filename, "r+b") as half:
            half.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(state_dict, "save_file", disk_fills_midway)
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(DiskFullError, match=f"^no space left on the device while writing {folder};"):
        models[1].save_pretrained(folder)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert sorted(os.listdir(folder)) == [CONFIG_NAME, WEIGHTS_NAME]
    assert _generation(folder, expected) == 0
