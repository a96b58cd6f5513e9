"""The embedded model's conversion killed with SIGKILL: at random times while the real conversion
code converts a tiny GGUF (a 2-layer Llama with the first 512 tokens of SmolLM2's vocabulary), at
each write point of a conversion replacing a stale folder, and (slow) at random times during the
real 135M conversion. The model folder is then whole, absent, or a stale one no caller accepts;
the next call converts cleanly and leaves nothing else behind."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_core.atomic import is_leftover
from kernel_core.models import EMBEDDED_MODEL_ID, embedded

from ..crash import Child, Zygote, killed_before_write

KILLS = 8
OLD, NEW = b"GGUF old", b"GGUF new, longer"
VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 512, 64, 128, 2, 4, 2
PRELOAD = (
    "torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.modeling_gguf_pytorch_utils",
    "transformers.integrations.ggml", "kernel_core.models.embedded",
)


def _write_tiny_gguf(tokenizer_json: Path, out: Path) -> None:
    """A float32 GGUF of a tiny random Llama whose tokenizer keeps SmolLM2's first ``VOCAB`` tokens
    and the merges among them: everything the conversion reads, in a fraction of a second."""
    import numpy as np
    from gguf import GGUFWriter

    tokenizer = json.loads(tokenizer_json.read_text())
    tokens = sorted(tokenizer["model"]["vocab"], key=tokenizer["model"]["vocab"].get)[:VOCAB]
    kept, special = set(tokens), {token["content"] for token in tokenizer["added_tokens"] if token["special"]}
    merges = [f"{a} {b}" for a, b in tokenizer["model"]["merges"] if {a, b, a + b} <= kept]
    writer = GGUFWriter(str(out), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(1024)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_file_type(0)  # all float32
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # control or normal
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    head = HIDDEN // HEADS
    for block in range(LAYERS):
        shapes |= {
            f"blk.{block}.attn_norm.weight": (HIDDEN,), f"blk.{block}.ffn_norm.weight": (HIDDEN,),
            f"blk.{block}.attn_q.weight": (HIDDEN, HIDDEN), f"blk.{block}.attn_k.weight": (KV_HEADS * head, HIDDEN),
            f"blk.{block}.attn_v.weight": (KV_HEADS * head, HIDDEN), f"blk.{block}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{block}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{block}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{block}.ffn_down.weight": (HIDDEN, FFN),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(embedded_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-gguf") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    _write_tiny_gguf(embedded_model_cache / "models" / EMBEDDED_MODEL_ID / "tokenizer.json", out)
    return out


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    zygote = Zygote(*PRELOAD)
    yield zygote
    zygote.close()


def _convert(zygote: Zygote, cache: Path, gguf: Path | None) -> Child:
    """A child converting ``gguf`` (the installed one when None) into ``cache``, as ``make model`` does."""
    patch = f"embedded._find_gguf = lambda: Path({str(gguf)!r})\n" if gguf else ""
    code = f"from pathlib import Path\nfrom kernel_core.models import embedded\n{patch}embedded.embedded_model_path()\n"
    return zygote.start(code, cache.with_name(cache.name + ".log"), env={"KERNEL_CORE_CACHE": str(cache)})


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def _check_whole_or_absent(cache: Path, reference: Path) -> None:
    """The model folder, if there, is the uninterrupted conversion's, file for file and byte for byte;
    nothing else but the lock file and hidden leftovers is beside it."""
    models = cache / "models"
    visible = sorted(path.name for path in models.iterdir() if not is_leftover(path)) if models.exists() else []
    assert set(visible) <= {EMBEDDED_MODEL_ID, f"{EMBEDDED_MODEL_ID}.lock"}, visible
    if EMBEDDED_MODEL_ID in visible:
        assert _files(models / EMBEDDED_MODEL_ID) == _files(reference)


def _kill_conversions(zygote: Zygote, gguf: Path | None, tmp_path: Path, kills: int) -> None:
    """Convert once uninterrupted, then ``kills`` times killed at a random time, each run in the
    k-th of ``kills`` slices of the conversion (early to late), then once to the end."""
    started = time.perf_counter()
    first = _convert(zygote, tmp_path / "reference", gguf)
    assert first.wait(timeout=600) == 0, first.output()
    duration = time.perf_counter() - started
    reference = tmp_path / "reference" / "models" / EMBEDDED_MODEL_ID
    cache, rng, landed = tmp_path / "cache", random.Random(kills), 0
    for attempt in range(kills):
        run = _convert(zygote, cache, gguf)
        time.sleep(duration * (attempt + rng.random()) / kills)
        run.kill()
        status = run.wait(timeout=600)
        assert status in (0, -signal.SIGKILL), run.output()
        landed += status == -signal.SIGKILL
        _check_whole_or_absent(cache, reference)
        if status == 0:  # finished before the kill: start the next one from nothing again
            shutil.rmtree(cache / "models" / EMBEDDED_MODEL_ID)
    last = _convert(zygote, cache, gguf)
    assert last.wait(timeout=600) == 0, last.output()
    assert sorted(os.listdir(cache / "models")) == [EMBEDDED_MODEL_ID, f"{EMBEDDED_MODEL_ID}.lock"]
    _check_whole_or_absent(cache, reference)
    assert landed >= kills // 2, f"most runs finished before their kill ({duration:.2f} s each)"


def test_killed_at_random_times_a_conversion_is_whole_or_redone(zygote: Zygote, tiny_gguf: Path, tmp_path: Path) -> None:
    _kill_conversions(zygote, tiny_gguf, tmp_path, KILLS)


@pytest.mark.slow
def test_killed_at_random_times_the_real_conversion_is_whole_or_redone(
    zygote: Zygote, embedded_model_cache: Path, tmp_path: Path
) -> None:
    _kill_conversions(zygote, None, tmp_path, 3)


def test_killed_at_any_write_point_a_reconversion_leaves_old_new_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing a conversion of another GGUF (set aside, then renamed over): each kill leaves the
    stale folder (which no caller accepts: its marker names the other GGUF), the new one, or none;
    the next call converts, or finds the new one whole."""
    monkeypatch.setenv("KERNEL_CORE_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr(embedded, "_find_gguf", lambda: source)

    def write(gguf: Path, out: Path) -> None:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / name).write_bytes(gguf.read_bytes())

    monkeypatch.setattr(embedded, "_write_hf_folder", write)
    target = embedded.embedded_model_path(convert=False)
    seen = set()
    for n in itertools.count(1):
        source.write_bytes(OLD)
        embedded.embedded_model_path()
        source.write_bytes(NEW)
        killed = killed_before_write(embedded.embedded_model_path, n)
        seen.add(_content(target))
        assert embedded._is_converted(target, source) == (_content(target) == NEW)
        folder = embedded.embedded_model_path()  # the next run
        assert _content(folder) == NEW
        assert sorted(os.listdir(folder.parent)) == [EMBEDDED_MODEL_ID, f"{EMBEDDED_MODEL_ID}.lock"]
        if not killed:
            break
    assert seen == {OLD, NEW, None}


def _content(folder: Path) -> bytes | None:
    """What every file of a fake conversion holds (its GGUF's bytes); None for no folder."""
    if not folder.exists():
        return None
    contents = {path.read_bytes() for path in folder.iterdir() if path.name != "kernel_core_conversion.json"}
    assert len(contents) == 1, f"{folder} mixes two conversions"
    return contents.pop()
