"""The Triton attention backend: the SDK's conformance suite, then steps checked against the SDK's
float64 reference in float32, bfloat16 and float16 (odd lengths, contexts ending on and one past
cache blocks, several cache block sizes and tiles, GQA groups 1/2/3, sliding windows, padded head
sizes), one kernel launch per forward, NaN in every unused slot, refusals naming the field, and
when the backend reports itself unavailable. In the interpreter on the CPU unless a CUDA GPU is
present (see conftest.py)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, replace
from types import ModuleType

import pytest
import torch

from kernel_core.contracts.attention import AttentionMetadata
from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.settings import PluginSettingsError, instantiate
from kernel_core.engine.selection import Needs, select_kernel
from kernel_core.errors import KernelCoreError
from kernel_core.platforms import select_platform
from kernel_core.plugins import PluginManager
from kernel_core_attn_triton import kernels, plugin
from kernel_core_attn_triton.plugin import MAX_HEAD_SIZE
from kernel_core_attn_triton.backend import TritonAttention, TritonAttentionSettings
from kernel_core_sdk.conformance import AttentionBackendConformance, TritonKernelTests, triton_test_device
from kernel_core_sdk.conformance._paged import scattered_block_tables, step_metadata
from kernel_core_sdk.conformance._reference import paged_attention, write_kv
from kernel_core_sdk.conformance.registration import run_fresh_python


DEVICE = triton_test_device("kernel_core_attn_triton.kernels")


class TestTritonAttentionConformance(TritonKernelTests, AttentionBackendConformance):
    kernel_module = "kernel_core_attn_triton.kernels"

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


@dataclass
class Case:
    """One step: per request, tokens already cached and tokens computed now."""

    cached: list[int]
    new: list[int]
    block_size: int = 16
    heads: tuple[int, int] = (4, 2)  # (query heads, KV heads)
    head_size: int = 16
    window: int | None = None


@dataclass
class Result:
    output: torch.Tensor
    expected: torch.Tensor  # float64, from the very inputs the backend got
    weighted_abs_value: torch.Tensor  # the same attention weights over |V|


def run_case(
    backend: TritonAttention, case: Case, dtype: torch.dtype = torch.float32, tables: list[list[int]] | None = None
) -> Result:
    """One step through ``backend`` and the SDK's float64 reference, on caches that are NaN
    wherever no request wrote, with each request's earlier context already written."""
    generator = torch.Generator().manual_seed(len(case.cached) * 1000 + sum(case.new))
    num_heads, num_kv_heads = case.heads
    totals = [c + n for c, n in zip(case.cached, case.new)]
    num_blocks = sum(math.ceil(t / case.block_size) for t in totals) + 2
    if tables is None:
        tables = scattered_block_tables(totals, case.block_size, num_blocks, generator)
    num_blocks = max(num_blocks, 1 + max(max(t) for t in tables))
    shape = (2, num_blocks, case.block_size, num_kv_heads, case.head_size)
    cache = torch.full(shape, float("nan"), dtype=dtype)
    cached = step_metadata(tables, [0] * len(totals), case.cached, case.block_size, 1.0, torch.device("cpu"))
    context = torch.randn(len(cached.slot_mapping), 2, num_kv_heads, case.head_size, generator=generator).to(dtype)
    write_kv(cache, context[:, 0], context[:, 1], cached.slot_mapping)
    reference_cache = cache.double()
    abs_value_cache = reference_cache.clone()
    abs_value_cache[1] = abs_value_cache[1].abs()

    scale = 0.7 / math.sqrt(case.head_size)
    metadata = step_metadata(tables, case.cached, case.new, case.block_size, scale, DEVICE).for_layer(case.window)
    num_tokens = sum(case.new)
    query = torch.randn(num_tokens, num_heads, case.head_size, generator=generator).to(dtype)
    key = torch.randn(num_tokens, num_kv_heads, case.head_size, generator=generator).to(dtype)
    value = torch.randn(num_tokens, num_kv_heads, case.head_size, generator=generator).to(dtype)
    device_cache = cache.to(DEVICE)
    output = backend.forward(query.to(DEVICE), key.to(DEVICE), value.to(DEVICE), device_cache, metadata)
    assert output.dtype == dtype and output.shape == query.shape
    cpu_metadata = step_metadata(tables, case.cached, case.new, case.block_size, scale, torch.device("cpu"))
    cpu_metadata = cpu_metadata.for_layer(case.window)
    expected = paged_attention(query.double(), key.double(), value.double(), reference_cache, cpu_metadata)
    weighted_abs_value = paged_attention(query.double(), key.double(), value.double().abs(), abs_value_cache, cpu_metadata)
    torch.testing.assert_close(device_cache.cpu(), reference_cache.to(dtype), rtol=0, atol=0, equal_nan=True)
    return Result(output.cpu(), expected, weighted_abs_value)


def assert_close_to_reference(result: Result, dtype: torch.dtype) -> None:
    """float32: within the contract's 1e-5. Below float32 the kernel rounds twice, each
    probability to the dtype before it weighs V (as GPU flash kernels do; relative error at most
    the unit roundoff u, so at most u times the attention-weighted mean of |V|) and the output
    (u |out|): within ``u * (|out| + softmax(QK) |V|)``, plus float32's 1e-5."""
    error = (result.output.double() - result.expected).abs()
    if dtype == torch.float32:
        bound = torch.full_like(error, 1e-5)
    else:
        unit = torch.finfo(dtype).eps / 2
        bound = unit * (result.expected.abs() + result.weighted_abs_value) + 1e-5
    worst = (error - bound).max().item()
    assert worst <= 0, f"output exceeds the bound by {worst:.2e} (largest error {error.max().item():.2e})"


#: Requests of a mixed step for cache blocks of ``b`` tokens: (cached, new).
def boundary_requests(b: int) -> list[tuple[int, int]]:
    return [
        (0, b),  # a prefill ending exactly on a block
        (0, b + 1),  # a prefill one past a block
        (b, 1),  # a decode one past a block
        (2 * b - 1, 1),  # a decode ending exactly on a block
        (5, 2 * b - 5),  # a chunk ending on a block
        (b + 3, 7),  # odd lengths, mid-block
    ]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HEADS = {"group1": (4, 4), "group2": (4, 2), "group3": (6, 2)}


@pytest.mark.parametrize("heads", sorted(HEADS))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_mixed_step_on_block_boundaries(dtype: str, block_size: int, heads: str) -> None:
    requests = boundary_requests(block_size)
    case = Case([c for c, _ in requests], [n for _, n in requests], block_size, HEADS[heads])
    assert_close_to_reference(run_case(TritonAttention(), case, DTYPES[dtype]), DTYPES[dtype])


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 16), (32, 64), (64, 16)], ids=lambda t: str(t))
@pytest.mark.parametrize("block_size", [5, 32])
def test_tiles_smaller_and_larger_than_cache_blocks(block_m: int, block_n: int, block_size: int) -> None:
    """Tiles of 16 positions over blocks of 32 and of 64 over blocks of 5 (and a block size that is
    no power of two) read the same positions; row blocks of 16-64 rows split the queries."""
    requests = boundary_requests(block_size)
    case = Case([c for c, _ in requests], [n for _, n in requests], block_size, HEADS["group3"])
    backend = TritonAttention(TritonAttentionSettings(block_m=block_m, block_n=block_n))
    assert_close_to_reference(run_case(backend, case), torch.float32)


@pytest.mark.parametrize("window", [1, 5, 16, 17, 200])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sliding_windows(dtype: str, window: int) -> None:
    """Windows of one token, cutting tiles and blocks, equal to a block, and longer than any context."""
    requests = [*boundary_requests(16), (40, 30)]
    case = Case([c for c, _ in requests], [n for _, n in requests], heads=HEADS["group2"], window=window)
    assert_close_to_reference(run_case(TritonAttention(), case, DTYPES[dtype]), DTYPES[dtype])


@pytest.mark.parametrize("head_size", [8, 40, 128])
def test_head_sizes_padded_to_a_power_of_two(head_size: int) -> None:
    case = Case([0, 9, 20], [7, 1, 5], head_size=head_size)
    assert_close_to_reference(run_case(TritonAttention(), case), torch.float32)


def test_group_larger_than_the_row_block() -> None:
    """32 query heads on one KV head: the rows of a program grow to the group (one token each)."""
    case = Case([0, 17], [5, 1], heads=(32, 1))
    assert_close_to_reference(run_case(TritonAttention(TritonAttentionSettings(block_m=16)), case), torch.float32)


def test_nan_in_every_unused_slot_is_never_read() -> None:
    """Block 0, which padded block-table entries point at, and every slot past each request's
    context hold NaN; the output has none."""
    case = Case([0, 40, 3], [3, 1, 20], block_size=16)
    tables = [[4], [1, 5, 6], [3, 2]]  # padded with block 0, never written
    result = run_case(TritonAttention(), case, tables=tables)
    assert not result.output.isnan().any()
    assert_close_to_reference(result, torch.float32)


@pytest.mark.parametrize(
    "step",
    [
        Case([7, 16, 31, 2], [1, 1, 1, 1]),  # decode only
        Case([0, 7, 16, 31, 12], [13, 1, 1, 1, 9]),  # prefill, decodes and a chunk
    ],
    ids=["decode-only", "mixed"],
)
def test_one_launch_per_forward(launches: list[tuple[int, ...]], step: Case) -> None:
    assert_close_to_reference(run_case(TritonAttention(), step), torch.float32)
    assert len(launches) == 1, launches


def valid_call() -> dict:
    """Arguments of a valid forward on ``DEVICE``: one request, 3 new tokens, blocks of 4."""
    metadata = step_metadata([[0, 1]], [2], [3], 4, 0.5, DEVICE)
    return {
        "query": torch.randn(3, 4, 16, device=DEVICE),
        "key": torch.randn(3, 2, 16, device=DEVICE),
        "value": torch.randn(3, 2, 16, device=DEVICE),
        "kv_cache": torch.zeros(2, 2, 4, 2, 16, device=DEVICE),
        "metadata": metadata,
    }


def bad_inputs() -> dict[str, tuple[dict, str]]:
    """Case → (arguments replaced in a valid call, what the error must name)."""
    return {
        "cache-dtype": ({"kv_cache": torch.zeros(2, 2, 4, 2, 16, dtype=torch.float16)}, "kv_cache dtype torch.float16 differs from query dtype"),
        "key-dtype": ({"key": torch.randn(3, 2, 16).double()}, "key dtype torch.float64"),
        "query-dtype": ({"query": torch.randn(3, 4, 16).double()}, "query dtype torch.float64 is not supported"),
        "cache-layout-4d": ({"kv_cache": torch.zeros(2, 8, 2, 16)}, r"kv_cache has shape \(2, 8, 2, 16\), expected \(2, num_blocks, block_size=4"),
        "cache-kv-last": ({"kv_cache": torch.zeros(2, 4, 2, 16, 2)}, r"kv_cache has shape \(2, 4, 2, 16, 2\)"),
        "cache-block-size": ({"kv_cache": torch.zeros(2, 1, 8, 2, 16)}, "block_size=4"),
        "cache-head-size": ({"kv_cache": torch.zeros(2, 2, 4, 2, 8)}, "head_size=16"),
        "cache-not-contiguous": ({"kv_cache": torch.zeros(2, 2, 4, 16, 2).transpose(3, 4)}, "kv_cache is not contiguous"),
        "head-size": ({"query": torch.randn(3, 4, MAX_HEAD_SIZE + 1)}, f"head_size {MAX_HEAD_SIZE + 1} is not supported"),
        "heads-do-not-group": ({"query": torch.randn(3, 3, 16)}, "num_heads 3 is not a multiple of kv_cache's num_kv_heads 2"),
        "key-shape": ({"key": torch.randn(3, 1, 16)}, r"key has shape \(3, 1, 16\)"),
        "window": ({"metadata": step_metadata([[0, 1]], [2], [3], 4, 0.5, DEVICE).for_layer(0)}, "metadata.sliding_window 0"),
    }


@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_bad_input_is_refused_naming_it(case: str) -> None:
    replaced, message = bad_inputs()[case]
    arguments = {**valid_call(), **{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in replaced.items()}}
    with pytest.raises(ValueError, match=message):
        TritonAttention().forward(**arguments)


def test_the_record_declares_what_forward_takes() -> None:
    """The engine refuses at start-up what forward would refuse: other dtypes, larger heads."""
    (spec,) = plugin.kernel_core_attention_backends()
    assert Needs("cuda", "bfloat16", MAX_HEAD_SIZE, 7).problem(spec) is None
    assert Needs("xpu", "float16", 1, 16).problem(spec) is None
    assert "head size 257 is not among its head_sizes" in (Needs("cuda", "float32", 257).problem(spec) or "")
    assert "device type cpu is not among its device_types (cuda, xpu)" in (Needs("cpu").problem(spec) or "")


def test_tensors_on_another_device_are_refused() -> None:
    arguments = valid_call()
    metadata = arguments["metadata"]
    arguments["metadata"] = replace(metadata, slot_mapping=metadata.slot_mapping.to("meta"))
    with pytest.raises(ValueError, match="metadata.slot_mapping is on meta"):
        TritonAttention().forward(**arguments)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [("block_m", 8, "greater than or equal to 16"), ("block_n", 48, "not a power of two"), ("num_warps", 3, "not a power of two")],
)
def test_tiles_that_triton_cannot_take_are_refused(key: str, value: int, reason: str) -> None:
    """As an engine option reaches the backend (``--plugin-option attention-backend.triton.KEY=VALUE``)."""
    with pytest.raises(PluginSettingsError, match=f"--plugin-option attention-backend.triton.{key}={value}: .*{reason}"):
        instantiate(TritonAttention, options={key: value}, plugin="attention-backend.triton")


def test_settings_reach_the_launch(launches: list[tuple[int, ...]]) -> None:
    backend = instantiate(TritonAttention, options={"block_m": 64, "block_n": 16}, plugin="attention-backend.triton")
    assert_close_to_reference(run_case(backend, Case([0, 30], [20, 1], heads=HEADS["group2"])), torch.float32)
    # 21 query tokens in row blocks of 64 // 2 = 32 tokens, 2 requests, over 2 KV heads.
    assert launches == [(21 // 32 + 2, 2)]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


@pytest.mark.usefixtures("no_gpu")
def test_without_a_gpu_available_only_in_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = TritonAttention.unavailable_reason()
    assert reason is not None and "no CUDA, ROCm or XPU GPU, and TRITON_INTERPRET is not set" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert TritonAttention.unavailable_reason() == (
        None if kernels.INTERPRETED else
        "TRITON_INTERPRET was set after kernel_core_attn_triton.kernels was imported: its kernel is compiled for a GPU"
    )


@pytest.mark.parametrize("device", ["cuda", "xpu"])
def test_available_on_a_gpu(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda")
    monkeypatch.setattr(torch.xpu, "is_available", lambda: device == "xpu")
    assert TritonAttention.unavailable_reason() is None


def test_unavailable_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    assert "triton is not installed" in (TritonAttention.unavailable_reason() or "")


def test_imports_without_a_gpu_or_the_interpreter() -> None:
    """Point 7 of issue 17: the entry point imports neither torch nor triton, the backend imports
    (no triton yet), reports itself unavailable, and refuses CPU tensors naming TRITON_INTERPRET."""
    result = run_fresh_python(
        "import os, sys, torch\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "torch.cuda.is_available = lambda: False\n"
        "torch.xpu.is_available = lambda: False\n"
        "import kernel_core_attn_triton.plugin\n"
        "print('plugin imports triton:', 'triton' in sys.modules)\n"
        "from kernel_core_attn_triton.backend import TritonAttention\n"
        "print('backend imports triton:', 'triton' in sys.modules)\n"
        "print('reason:', TritonAttention.unavailable_reason())\n"
        "from kernel_core_sdk.conformance._paged import step_metadata\n"
        "try:\n"
        "    TritonAttention().forward(torch.randn(1, 2, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 16),\n"
        "                              torch.zeros(2, 1, 4, 2, 16), step_metadata([[0]], [0], [1], 4, 1.0, 'cpu'))\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "plugin imports triton: False" in result.stdout
    assert "backend imports triton: False" in result.stdout
    assert "reason: no CUDA, ROCm or XPU GPU, and TRITON_INTERPRET is not set" in result.stdout
    assert "refused: CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1" in result.stdout


@pytest.mark.skipif(not kernels.INTERPRETED, reason="what a machine without a GPU selects")
def test_never_the_cpu_platforms_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed, on a CPU the engine keeps the CPU platform's default; named, it is refused."""
    manager = PluginManager.from_environment()
    platform = select_platform(manager).platform
    assert select_kernel(manager, platform, PluginKind.ATTENTION_BACKEND, None).registration.name != "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelCoreError, match="'triton' cannot run on this machine"):
        select_kernel(manager, platform, PluginKind.ATTENTION_BACKEND, "triton")


def test_layers_share_the_step(launches: list[tuple[int, ...]]) -> None:
    """Several layers on one metadata object: one launch each, the step's own writes only."""
    backend = TritonAttention()
    metadata: AttentionMetadata = step_metadata([[2, 0], [1]], [3, 0], [1, 2], 4, 0.5, DEVICE)
    for _ in range(3):
        cache = torch.full((2, 3, 4, 2, 16), float("nan"), device=DEVICE)
        cache[:, 2, :3] = 0.0
        out = backend.forward(
            torch.randn(3, 4, 16, device=DEVICE), torch.randn(3, 2, 16, device=DEVICE),
            torch.randn(3, 2, 16, device=DEVICE), cache, metadata,
        )
        assert not out.isnan().any()
    assert len(launches) == 3
