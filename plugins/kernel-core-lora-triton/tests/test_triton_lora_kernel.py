"""The Triton LoRA kernel: the SDK's conformance suite, then shapes that take several row blocks,
rank tiles, K steps and output tiles (split-K too) against the torch kernel, refusals of bad input,
and when it calls itself unavailable. In the interpreter on the CPU unless a GPU is present (see
conftest.py)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
import torch

from kernel_core.contracts.lora import NO_SLOT, LoRABatch
from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.settings import PluginSettingsError, instantiate
from kernel_core.plugins import get_plugin_manager
from kernel_core_lora_torch.kernel import TorchLoRAKernel
from kernel_core_lora_triton import plugin
from kernel_core_lora_triton.kernel import TritonLoRAKernel, TritonLoRASettings
from kernel_core_lora_triton.ops import INTERPRETED
from kernel_core_sdk.conformance import LoRAKernelConformance, TritonKernelTests, triton_test_device
from kernel_core_sdk.conformance.lora import TOLERANCE, bits
from kernel_core_sdk.conformance.registration import run_fresh_python

DEVICE = triton_test_device("kernel_core_lora_triton.ops")
N = NO_SLOT
#: The smallest tiles, so that the shapes below take several of each.
SMALL_TILES = dict(block_m=16, block_k=16, block_r=16, block_n=16)


class TestTritonLoRAKernelConformance(TritonKernelTests, LoRAKernelConformance):
    kernel_module = "kernel_core_lora_triton.ops"

    @pytest.fixture
    def plugin_module(self) -> ModuleType:
        return plugin


def test_record() -> None:
    (spec,) = plugin.kernel_core_lora_kernels()
    assert spec.name == "triton" and spec.device_types == {"cuda", "xpu"} and spec.priority > 0
    assert spec.load() is TritonLoRAKernel


def test_the_cpu_engine_picks_the_torch_kernel() -> None:
    """Selection by priority among the kernels whose device types include the engine's device,
    as the engine's ``select_kernel`` does: the CPU gets ``torch``, a GPU ``triton``."""
    manager = get_plugin_manager()
    for device, name in (("cpu", "torch"), ("cuda", "triton"), ("xpu", "triton")):
        chosen = manager.select(PluginKind.LORA_KERNEL, None, accept=lambda r: device in r.spec.device_types)
        assert chosen.name == name, device


def many_tiles_case(
    slots: list[int], rank: int, features: tuple[int, int], dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Output, a strided ``x`` (every other column of a wider tensor) and factors of ``rank`` over
    four slots, the third of them zero past rank 3 (a smaller adapter padded)."""
    in_features, out_features = features
    generator = torch.Generator().manual_seed(seed)
    output = torch.randn(len(slots), out_features, generator=generator)
    x = torch.randn(len(slots), 2 * in_features, generator=generator)[:, ::2]
    lora_a = torch.randn(4, rank, in_features, generator=generator) / in_features**0.5
    lora_b = torch.randn(4, out_features, rank, generator=generator) / rank**0.5
    lora_a[2, 3:], lora_b[2, :, 3:] = 0, 0
    return tuple(t.to(device=DEVICE, dtype=dtype) for t in (output, x, lora_a, lora_b))


#: 41 tokens: a 20-token run (two 16-row blocks), interleaved short runs, NO_SLOT rows; slot 1 unused.
LONG_SLOTS = [0] * 20 + [N, 3, 2, 3, N, N] + [2] * 9 + [0, 0, N, 3, 3, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("split_k", [1, 3])
def test_many_blocks_and_tiles_match_the_torch_kernel(dtype: torch.dtype, split_k: int) -> None:
    """Rank 19 (two rank tiles, masked), 45 input features (three K steps, split over up to three
    programs), 35 output features (three output tiles), 41 tokens; rows without a slot untouched."""
    output, x, lora_a, lora_b = many_tiles_case(LONG_SLOTS, 19, (45, 35), dtype)
    batch = LoRABatch.from_token_slots(LONG_SLOTS, DEVICE)
    expected = output.clone()
    with torch.inference_mode():
        TorchLoRAKernel().apply(expected, x, lora_a, lora_b, batch)
        TritonLoRAKernel(TritonLoRASettings(**SMALL_TILES, split_k=split_k)).apply(output, x, lora_a, lora_b, batch)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(output.cpu().double(), expected.cpu().double(), atol=tolerance, rtol=tolerance)
    without = [row for row, slot in enumerate(LONG_SLOTS) if slot == N]
    assert torch.equal(bits(output[without]), bits(expected[without]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_runs_of_exactly_one_and_two_blocks(dtype: torch.dtype) -> None:
    """Runs of 16 and 32 tokens at block_m 16 (no remainder block), rank 16 (exactly one rank
    tile), 32 input and 48 output features (whole K steps and output tiles)."""
    slots = [1] * 16 + [N] + [3] * 32
    output, x, lora_a, lora_b = many_tiles_case(slots, 16, (32, 48), dtype, seed=2)
    batch = LoRABatch.from_token_slots(slots, DEVICE)
    expected = output.clone()
    with torch.inference_mode():
        TorchLoRAKernel().apply(expected, x, lora_a, lora_b, batch)
        TritonLoRAKernel(TritonLoRASettings(**SMALL_TILES)).apply(output, x, lora_a, lora_b, batch)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(output.cpu().double(), expected.cpu().double(), atol=tolerance, rtol=tolerance)
    assert torch.equal(bits(output[16]), bits(expected[16]))


def test_a_large_rank_and_float16_match_the_torch_kernel() -> None:
    """Rank 200, as a fused projection's stacked slots get (parts x max_lora_rank), at the
    default tiles, in float16 into a strided output (a column slice of a wider tensor)."""
    slots = [1, 1, N, 0, 3, 3, 3]
    _, x, lora_a, lora_b = many_tiles_case(slots, 200, (24, 40), torch.float16, seed=1)
    wide = torch.randn(len(slots), 50, dtype=torch.float16, device=DEVICE)
    expected = wide[:, 3:43].clone()
    batch = LoRABatch.from_token_slots(slots, DEVICE)
    with torch.inference_mode():
        TorchLoRAKernel().apply(expected, x, lora_a, lora_b, batch)
        TritonLoRAKernel().apply(wide[:, 3:43], x, lora_a, lora_b, batch)
    torch.testing.assert_close(wide[:, 3:43].cpu().double(), expected.cpu().double(), atol=2e-2, rtol=2e-2)


def test_row_blocks_are_built_once_per_batch() -> None:
    """Every projection of a step shares its batch: the block table is made once, and cut at block_m."""
    kernel = TritonLoRAKernel(TritonLoRASettings(block_m=16))
    batch = LoRABatch.from_token_slots([2] * 40 + [N, 1], DEVICE)
    table = kernel._row_blocks(batch, DEVICE)
    assert table.tolist() == [[0, 16, 32, 41], [16, 32, 40, 42], [2, 2, 2, 1]]
    assert kernel._row_blocks(batch, DEVICE) is table
    assert kernel._row_blocks(LoRABatch.from_token_slots([2] * 40 + [N, 1], DEVICE), DEVICE) is not table


def bad_inputs() -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    """Replacements of the good arguments below, and the text the refusal must contain."""
    f16 = torch.float16
    return {
        "lora_a dtype": ({"lora_a": torch.randn(4, 3, 8, dtype=f16)}, "lora_a is torch.float16, x is torch.float32"),
        "output dtype": ({"output": torch.randn(5, 6, dtype=f16)}, "output is torch.float16"),
        "float64": (
            {k: t.double() for k, t in good_arguments().items() if k != "batch"}, "x is torch.float64",
        ),
        "output rows": ({"output": torch.randn(4, 6)}, r"output has shape \(4, 6\), expected \(5, 6\)"),
        "in features": ({"lora_a": torch.randn(4, 3, 9)}, r"lora_a has shape \(4, 3, 9\), expected \(4, 3, 8\)"),
        "out features": ({"lora_b": torch.randn(4, 7, 3)}, r"lora_b has shape \(4, 7, 3\), expected \(4, 6, 3\)"),
        "rank": ({"lora_b": torch.randn(4, 6, 2)}, r"lora_b has shape \(4, 6, 2\), expected \(4, 6, 3\)"),
        "slots": ({"lora_b": torch.randn(3, 6, 3)}, r"lora_b has shape \(3, 6, 3\)"),
        "device": ({"lora_b": torch.randn(4, 6, 3, device="meta")}, "lora_b is on meta"),
        "tensor rank": ({"x": torch.randn(5, 8, 1)}, r"expected output \[T, out\], x \[T, in\]"),
        "tokens": ({"batch": LoRABatch.from_token_slots([0, 1], DEVICE)}, "batch.token_slots has 2 tokens, x has 5"),
        "slot": ({"batch": LoRABatch.from_token_slots([0, 4, N, 1, 1], DEVICE)}, r"batch.segments use slots \[0, 1, 4\]"),
    }


def good_arguments() -> dict[str, object]:
    return {
        "output": torch.randn(5, 6), "x": torch.randn(5, 8), "lora_a": torch.randn(4, 3, 8),
        "lora_b": torch.randn(4, 6, 3), "batch": LoRABatch.from_token_slots([0, 1, N, 3, 3], DEVICE),
    }


@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_bad_input_is_refused_naming_it(case: str) -> None:
    replaced, message = bad_inputs()[case]
    arguments = {**good_arguments(), **replaced}
    moved = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type != "meta" else v for k, v in arguments.items()}
    with pytest.raises(ValueError, match=message):
        TritonLoRAKernel().apply(**moved)


@pytest.mark.parametrize(
    "option, problem",
    [("block_m=24", "24 is not a power of two"), ("block_r=8", "greater than or equal to 16"), ("split_k=0", "greater than or equal to 1")],
)
def test_bad_tiles_are_refused_naming_them(option: str, problem: str) -> None:
    """As the engine builds it from ``--plugin-option lora-kernel.triton.KEY=VALUE``."""
    key, value = option.split("=")
    with pytest.raises(PluginSettingsError, match=f"--plugin-option lora-kernel.triton.{option}: .*{problem}"):
        instantiate(TritonLoRAKernel, options={key: value}, plugin="lora-kernel.triton")


def test_the_engine_builds_it_with_its_settings() -> None:
    kernel = instantiate(TritonLoRAKernel, options={"block_n": "32", "split_k": 2}, plugin="lora-kernel.triton")
    assert kernel.tiles == TritonLoRASettings(block_n=32, split_k=2)
    assert instantiate(TritonLoRAKernel, plugin="lora-kernel.triton").tiles == TritonLoRASettings()


def test_available_in_the_interpreter_or_on_a_gpu() -> None:
    assert TritonLoRAKernel.unavailable_reason() is None


def test_unavailable_without_a_gpu_and_without_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    if not INTERPRETED:
        pytest.skip("a GPU is present: the kernel is available whatever TRITON_INTERPRET says")
    monkeypatch.delenv("TRITON_INTERPRET")
    reason = TritonLoRAKernel.unavailable_reason()
    assert reason is not None and "no CUDA, ROCm or XPU GPU" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(RuntimeError, match="cannot run here: no CUDA"):
        TritonLoRAKernel()


def test_unavailable_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    assert "triton is not installed" in (TritonLoRAKernel.unavailable_reason() or "")


def test_modules_import_without_a_gpu_or_the_interpreter() -> None:
    """The entry point imports neither torch nor triton; the kernel module imports without
    TRITON_INTERPRET (and reports why it cannot run). Kernels imported compiled stay compiled:
    setting the variable afterwards is reported, and CPU tensors are refused even where a GPU is."""
    if not INTERPRETED:
        pytest.skip("a GPU is present")
    result = run_fresh_python(
        "import os, sys\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "import kernel_core_lora_triton.plugin\n"
        "print('entry point imports', sorted({'torch', 'triton'} & {m.split('.')[0] for m in sys.modules}))\n"
        "import torch\n"
        "from kernel_core_lora_triton import kernel, ops\n"
        "from kernel_core.contracts.lora import LoRABatch\n"
        "print('no interpreter:', kernel.TritonLoRAKernel.unavailable_reason())\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "print('set late:', kernel.TritonLoRAKernel.unavailable_reason())\n"
        "torch.cuda.is_available = lambda: True\n"
        "try:\n"
        "    kernel.TritonLoRAKernel().apply(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(1, 2, 3),\n"
        "        torch.zeros(1, 4, 2), LoRABatch.from_token_slots([0, 0], torch.device('cpu')))\n"
        "except RuntimeError as error:\n"
        "    print('cpu tensors:', error)\n"
    )
    lines = result.stdout.splitlines()
    assert "entry point imports []" in lines, result.stderr
    assert any(line.startswith("no interpreter: no CUDA, ROCm or XPU GPU") for line in lines), result.stdout
    assert any(line.startswith("set late: TRITON_INTERPRET was set after") for line in lines), result.stdout
    assert any(line.startswith("cpu tensors:") and "TRITON_INTERPRET=1" in line for line in lines), result.stdout
