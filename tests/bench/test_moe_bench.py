"""``kcore bench moe``'s layer benchmark and ratios on a tiny MoE block: structure, correctness
checks and arithmetic only, never speed (timings on a shared machine say nothing in a test)."""

from __future__ import annotations

import argparse

import pytest

from kernel_core.bench import moe
from kernel_core.bench.moe_layer import LayerTiming, benchmark_layer
from kernel_core.cli import bench
from kernel_core.plugins import get_plugin_manager

TINY = {
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64,
}

#: A kernel plugin computing the SDK's per-token reference, int8 through dequantized weights.
REFERENCE_KERNEL = '''
import kernel_core
from kernel_core.contracts.records import MoEKernelSpec

kernel_core_api = "1.3"


class ReferenceMoE:
    def forward(self, hidden, router_logits, w_gate_up, w_down, top_k, renormalize=True, *,
                w_gate_up_scale=None, w_down_scale=None):
        from kernel_core.contracts.moe import dequantize_int8
        from kernel_core_sdk.conformance import _reference

        if w_gate_up_scale is not None:
            w_gate_up = dequantize_int8(w_gate_up, w_gate_up_scale, hidden.dtype)
            w_down = dequantize_int8(w_down, w_down_scale, hidden.dtype)
        return _reference.moe(hidden, router_logits, w_gate_up, w_down, top_k, renormalize)


@kernel_core.hookimpl
def kernel_core_moe_kernels():
    return [MoEKernelSpec(name="reference", description="per token", implementation="kc_moe_ref:ReferenceMoE",
                          quantizations=frozenset({"int8"}), device_types=frozenset({"cpu"}))]
'''


@pytest.fixture
def only_reference_kernel(fake_dist, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dist("kc-moe-ref", "kc_moe_ref", REFERENCE_KERNEL)
    monkeypatch.setenv("KERNEL_CORE_PLUGINS", "kc-moe-ref")


def test_every_kernel_and_its_int8_variant_is_timed_and_checked_against_the_loop(only_reference_kernel) -> None:
    timings = benchmark_layer(get_plugin_manager(), [1, 16], ["float32"], TINY)

    by_name = {(t.implementation, t.tokens): t for t in timings}
    names = ["hf-eager", "hf-grouped_mm", "floor:dense-gemm", "kernel:reference", "kernel:reference int8"]
    assert sorted(by_name) == sorted((name, n) for name in names for n in (1, 16))
    assert all(t.seconds > 0 and t.dtype == "float32" for t in timings)
    assert by_name["hf-eager", 16].max_abs_error is None  # the loop is what the others are checked against
    assert by_name["floor:dense-gemm", 16].max_abs_error is None  # another computation: never checked
    assert by_name["kernel:reference", 16].max_abs_error < 1e-5
    # int8 experts: close, not equal (half a quantization step per weight, summed over the layer).
    assert 0 < by_name["kernel:reference int8", 16].max_abs_error < 1e-2


def _timing(implementation: str, tokens: int, seconds: float) -> LayerTiming:
    return LayerTiming(implementation, "float32", tokens, seconds)


def test_layer_ratios_judge_the_slowest_token_count_from_16() -> None:
    timings = [
        _timing("hf-eager", 1, 1.0), _timing("kernel:k", 1, 1.0),  # below 16 tokens: not judged
        _timing("hf-eager", 16, 3.0), _timing("kernel:k", 16, 1.0), _timing("kernel:k int8", 16, 1.05),
        _timing("hf-eager", 64, 5.0), _timing("kernel:k", 64, 2.0), _timing("kernel:k int8", 64, 2.4),
    ]
    ratios = moe.layer_ratios(timings)

    speed = ratios["kernel:k/float32/vs_loop"]
    assert (speed.value, speed.met) == (2.5, True) and "64 tokens" in speed.label
    int8 = ratios["kernel:k int8/float32/vs_unquantized"]
    assert int8.value == pytest.approx(1.2) and int8.met is False and "64 tokens" in int8.label
    assert set(ratios) == {"kernel:k/float32/vs_loop", "kernel:k int8/float32/vs_unquantized"}


def test_the_dense_floor_bounds_the_gain_from_1024_tokens_and_is_not_judged() -> None:
    timings = [
        _timing("hf-eager", 256, 4.0), _timing("floor:dense-gemm", 256, 1.0),  # below 1024 tokens: not a bound
        _timing("hf-eager", 1024, 3.0), _timing("floor:dense-gemm", 1024, 2.0),
        _timing("hf-eager", 4096, 9.0), _timing("floor:dense-gemm", 4096, 5.0),
    ]
    headroom = moe.layer_ratios(timings)["floor:dense-gemm/float32/headroom"]

    assert (headroom.value, headroom.met, headroom.target) == (1.5, None, None) and "1024 tokens" in headroom.label


def test_the_report_renders_the_layer_table_and_serialises(only_reference_kernel) -> None:
    report = moe.run(get_plugin_manager(), None, None, {}, None, False, [16], ["float32"], TINY)

    text = moe.render(report)
    assert "kernel:reference int8" in text and "hf-eager" in text and "Layer ratios" in text
    data = report.to_dict()
    assert data["engine"] is None and data["model_config"] == TINY and len(data["layer"]) == 5
    assert set(data["layer_ratios"]) == {"kernel:reference/float32/vs_loop", "kernel:reference int8/float32/vs_unquantized"}


def test_the_command_line_takes_layer_only_runs() -> None:
    parser = argparse.ArgumentParser(prog="kcore")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "moe", "--layer-only", "--tokens", "1", "16", "--dtypes", "float32"])
    assert (args.func, args.layer_only, args.tokens, args.dtypes) == (bench.run_moe, True, [1, 16], ["float32"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "moe", "--dtypes", "float16"])


def test_int8_agreement_counts_each_requests_tokens_up_to_its_first_difference() -> None:
    fp32 = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
    int8 = [[1, 2, 9, 4], [5, 6, 7], [0, 9]]
    assert moe.agreeing_prefix_tokens(fp32, int8) == 2 + 3 + 0
    with pytest.raises(ValueError):
        moe.agreeing_prefix_tokens(fp32, int8[:2])


def test_the_engine_side_serves_the_moe_model_fp32_and_int8_beside_hf_generate(embedded_model, tmp_path) -> None:
    """The engine half of ``kcore bench moe`` on a tiny config of the benchmark's model (the bench
    takes the config; the command line always serves the full one): our engine with float32 and
    int8 experts and HF ``generate`` serve the same prompts, every request to the last token."""
    pytest.importorskip("kernel_core_moe_models", reason="serving the Mixtral bench model needs kernel-core-moe-models")
    from kernel_core.bench.moe_model import model_folder
    from kernel_core.bench.workloads import Workload

    folder = model_folder({**moe.CONFIG, **TINY})
    prompts = ["Hello, my name is", "The capital of France is", "def fibonacci(n):"]
    workload = Workload("W1", prompts, max_tokens=4, full=False, source=tmp_path / "workload.py")
    options = {"dtype": "float32", "num_kv_blocks": 32}

    report = moe.benchmark_engine(folder, workload, options, hf_batch_size=2, int8=True)

    assert [m.engine for m in report.measurements] == ["kernel-core", "kernel-core int8", "hf-transformers"]
    assert all(m.requests == 3 and m.output_tokens == 3 * 4 and m.seconds > 0 for m in report.measurements)
    assert set(report.ratios) == {"int8_vs_fp32_engine", "int8_greedy_agreement", "ours_vs_hf"}
    assert 0 <= report.ratios["int8_greedy_agreement"].value <= 1
    assert report.settings["hf_batch_size"] == 2 and report.settings["engine_config"] == options
