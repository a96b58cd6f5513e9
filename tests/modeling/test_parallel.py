"""Tensor-parallel layers against their unsharded counterparts, on 2 and 3 CPU processes with gloo.

Each group of ranks is spawned once and runs every check (``_rank_checks``); a rank that hangs or
dies fails the test within ``TIMEOUT_S``, every rank killed (tested with a rank hung in an
all-reduce). Every rank builds the same full weights (one safetensors file, read lazily for the
shards) and compares its sharded output with the unsharded layer's; then the same for layer 0 of
the embedded SmolLM2-135M, read lazily from its own checkpoint.

Tolerance (``_check_close``): sharded and unsharded outputs sum the same fp32 products in a
different order (a partial GEMM per rank, then the all-reduce), so neither is "the" answer; both
are compared with the same computation in float64. The sharded error must stay within twice the
unsharded path's own measured error plus ``FLOOR_ULPS`` fp32 epsilons of the output's magnitude
(the unsharded path can be exact by chance, e.g. the float64 reference MoE kernel rounds once,
while the sharded sum rounds once per rank and once per all-reduce addition). A wrong shard gives
errors of the weights' own size (~1), six orders above this.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue as queue_module
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kernel_core.contracts.lora import NO_SLOT, LoRABatch, LoRAKernel, LoRAProjection, LoRAStep
from kernel_core.errors import InvalidModelFolderError, UnsupportedModelError
from kernel_core.modeling import (
    SINGLE,
    AttentionHeads,
    ColumnParallelLinear,
    ExpertWeights,
    FusedLinear,
    FusedMoE,
    GatedMLP,
    ParallelLMHead,
    RowParallelLinear,
    SafetensorsCheckpoint,
    TensorParallel,
    TensorParallelMoE,
    VocabParallelEmbedding,
    expert_shard,
    qkv_rows,
    shard_experts,
    shard_heads,
    shard_low_rank_column,
    shard_low_rank_row,
    vocab_range,
)
from kernel_core_sdk.conformance import ReferenceMoEKernel

TIMEOUT_S = 60
EPS32 = torch.finfo(torch.float32).eps
FLOOR_ULPS = 8
HIDDEN, HEAD_SIZE, INTERMEDIATE, VOCAB, TOKENS = 24, 4, 12, 11, 7
#: (name, query heads, KV heads) per group size: split KV heads, SmolLM2's 9/3, replicated KV heads.
ATTENTION = {2: (("gqa", 4, 2), ("mqa", 4, 1)), 3: (("smollm2", 9, 3), ("mqa6", 6, 1))}
EXPERTS, EXPERT_INTERMEDIATE, SLOTS, RANK = 4, 6, 3, 2
TOKEN_SLOTS = [0, NO_SLOT, 2, 2, NO_SLOT, 1, 0]


def _weights() -> dict[str, torch.Tensor]:
    """Every full weight the checks shard, from a fixed seed (the checkpoint the ranks read)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    weights = {
        "embed.weight": rand(VOCAB, HIDDEN),
        "lm_head.weight": rand(VOCAB, HIDDEN),
    }
    for name in ("gate_proj", "up_proj"):
        weights[f"mlp.{name}.weight"], weights[f"mlp.{name}.bias"] = rand(INTERMEDIATE, HIDDEN), rand(INTERMEDIATE)
    weights["mlp.down_proj.weight"], weights["mlp.down_proj.bias"] = rand(HIDDEN, INTERMEDIATE), rand(HIDDEN)
    for name, heads, kv_heads in (config for configs in ATTENTION.values() for config in configs):
        for proj, count in (("q_proj", heads), ("k_proj", kv_heads), ("v_proj", kv_heads)):
            weights[f"{name}.{proj}.weight"] = rand(count * HEAD_SIZE, HIDDEN)
            weights[f"{name}.{proj}.bias"] = rand(count * HEAD_SIZE)
        weights[f"{name}.o_proj.weight"], weights[f"{name}.o_proj.bias"] = rand(HIDDEN, heads * HEAD_SIZE), rand(HIDDEN)
    return weights


class _LoopLoRA(LoRAKernel):
    """The LoRA contract one token at a time: no batching to hide a wrong slot behind."""

    def apply(
        self, output: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, batch: LoRABatch
    ) -> None:
        for t, slot in enumerate(batch.token_slots.tolist()):
            if slot != NO_SLOT:
                output[t] += lora_b[slot] @ (lora_a[slot] @ x[t])


def _check_close(
    report: dict[str, Any], name: str, sharded: torch.Tensor, unsharded: torch.Tensor, exact: torch.Tensor
) -> None:
    """Assert the sharded fp32 result is within fp32 reduction-order noise (see the module doc)."""
    noise = (unsharded.double() - exact).abs().max().item()
    floor = FLOOR_ULPS * EPS32 * exact.abs().max().item()
    error = (sharded.double() - exact).abs().max().item()
    assert sharded.shape == unsharded.shape, f"{name}: shape {tuple(sharded.shape)} != {tuple(unsharded.shape)}"
    assert error <= 2 * noise + floor, f"{name}: sharded error {error:.3g} > 2 x unsharded {noise:.3g} + {floor:.3g}"
    report[name] = {"sharded": error, "unsharded": noise, "eps_of_max": error / (EPS32 * exact.abs().max().item())}


def _attend(qkv: torch.Tensor, heads: int, kv_heads: int, size: int = HEAD_SIZE) -> torch.Tensor:
    """Causal attention of fused ``[T, (heads + 2 kv) * size]`` q/k/v, GQA by repeating KV heads."""
    tokens = qkv.shape[0]
    q, k, v = qkv.split([heads * size, kv_heads * size, kv_heads * size], dim=-1)
    q = q.view(tokens, heads, size).transpose(0, 1)
    k, v = (t.view(tokens, kv_heads, size).transpose(0, 1).repeat_interleave(heads // kv_heads, 0) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(tokens, heads * size)


def _fused(full: dict[str, torch.Tensor], names: list[str], dtype: torch.dtype) -> FusedLinear:
    """The unsharded layer of the HF modules ``names``."""
    weight = torch.cat([full[f"{n}.weight"] for n in names]).to(dtype)
    bias = torch.cat([full[f"{n}.bias"] for n in names]).to(dtype)
    starts = [0]
    for n in names:
        starts.append(starts[-1] + full[f"{n}.weight"].shape[0])
    return FusedLinear(weight, bias, {n: slice(a, b) for n, a, b in zip(names, starts, starts[1:])})


def _embedded_layer_checks(tp: TensorParallel, folder: Path, report: dict[str, Any]) -> None:
    """Layer 0 of the embedded SmolLM2-135M (9 query heads, 3 KV heads of 64; MLP 1536), read
    lazily from its checkpoint: the MLP at every size, attention where the size shards its heads."""
    to = {"dtype": torch.float32, "device": torch.device("cpu")}
    prefix = "model.layers.0"
    x = torch.randn(TOKENS, 576, generator=torch.Generator().manual_seed(2))
    with SafetensorsCheckpoint(folder) as checkpoint, safe_open(folder / "model.safetensors", "pt") as whole:
        names = [n for n in whole.keys() if n.startswith(f"{prefix}.") and n.endswith("proj.weight")]
        full = {n: whole.get_tensor(n) for n in names}

        def layer(names: list[str], dtype: torch.dtype) -> FusedLinear:
            return FusedLinear(torch.cat([full[f"{n}.weight"] for n in names]).to(dtype), None, {})

        def lazy_parts(names: list[str]) -> dict[str, tuple[Any, None]]:
            return {n: (checkpoint.lazy(f"{n}.weight", tuple(full[f"{n}.weight"].shape)), None) for n in names}

        mlp_names = [f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"]
        down_name = f"{prefix}.mlp.down_proj"
        rows = {n: tp.even_split(1536, "intermediate_size") for n in mlp_names}
        down = checkpoint.lazy(f"{down_name}.weight", (576, 1536))
        mlp = GatedMLP(
            ColumnParallelLinear.shard(lazy_parts(mlp_names), rows, tp, **to),
            RowParallelLinear.shard(down_name, down, None, tp, **to),
        )
        full_mlp, exact_mlp = (
            GatedMLP(layer(mlp_names, d), layer([down_name], d)) for d in (torch.float32, torch.float64)
        )
        _check_close(report, "smollm2 layer 0 mlp", mlp(x), full_mlp(x), exact_mlp(x.double()))
        if tp.world_size == 2:  # 9 query heads: refused, see test_a_size_that_neither_divides...
            return
        heads = AttentionHeads(9, 3, 64)
        shard = shard_heads(heads, tp)
        projs = [f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
        o_name = f"{prefix}.self_attn.o_proj"
        qkv = ColumnParallelLinear.shard(lazy_parts(projs), dict(zip(projs, qkv_rows(shard))), tp, **to)
        o_proj = RowParallelLinear.shard(o_name, checkpoint.lazy(f"{o_name}.weight", (576, 576)), None, tp, **to)
        sharded = o_proj(_attend(qkv(x), shard.heads.num_heads, shard.heads.num_kv_heads, 64))
        unsharded, exact = (
            layer([o_name], d)(_attend(layer(projs, d)(x.to(d)), 9, 3, 64)) for d in (torch.float32, torch.float64)
        )
        _check_close(report, "smollm2 layer 0 attention", sharded, unsharded, exact)


def _rank_checks(tp: TensorParallel, folder: Path, embedded: Path) -> dict[str, Any]:
    """Every sharded layer against the unsharded one on this rank; returns the measured errors."""
    report: dict[str, Any] = {}
    full = load_file(folder / "model.safetensors")
    to = {"dtype": torch.float32, "device": torch.device("cpu")}
    g = torch.Generator().manual_seed(1)  # the same inputs on every rank
    x = torch.randn(TOKENS, HIDDEN, generator=g)
    with SafetensorsCheckpoint(folder) as checkpoint:

        def lazy(name: str) -> Any:
            return checkpoint.lazy(name, tuple(full[name].shape))

        # Column-parallel fused gate/up (lazy and from full tensors), row-parallel down with bias.
        names = ["mlp.gate_proj", "mlp.up_proj"]
        rows = {n: tp.even_split(INTERMEDIATE, "intermediate") for n in names}
        lazy_parts = {n: (lazy(f"{n}.weight"), lazy(f"{n}.bias")) for n in names}
        gate_up = ColumnParallelLinear.shard(lazy_parts, rows, tp, **to)
        full_parts = {n: (full[f"{n}.weight"], full[f"{n}.bias"]) for n in names}
        from_full = ColumnParallelLinear.shard(full_parts, rows, tp, **to)
        assert torch.equal(gate_up.weight, from_full.weight) and torch.equal(gate_up.bias, from_full.bias)
        full_gate_up = _fused(full, names, torch.float32)
        held = torch.cat([torch.arange(r.start, r.stop) for r in gate_up.global_rows])
        exact_gate_up = _fused(full, names, torch.float64)
        _check_close(report, "column gate_up", gate_up(x), full_gate_up(x)[:, held], exact_gate_up(x.double())[:, held])
        down = RowParallelLinear.shard(
            "mlp.down_proj", lazy("mlp.down_proj.weight"), lazy("mlp.down_proj.bias"), tp, **to
        )
        full_down = _fused(full, ["mlp.down_proj"], torch.float32)
        mlp, full_mlp = GatedMLP(gate_up, down), GatedMLP(full_gate_up, full_down)
        exact_mlp = GatedMLP(exact_gate_up, _fused(full, ["mlp.down_proj"], torch.float64))
        _check_close(report, "row mlp with bias", mlp(x), full_mlp(x), exact_mlp(x.double()))

        # Fused QKV by heads (split and replicated KV heads), attention on the rank's heads, o_proj.
        for name, heads, kv_heads in ATTENTION[tp.world_size]:
            shard = shard_heads(AttentionHeads(heads, kv_heads, HEAD_SIZE), tp)
            projs = [f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj")]
            qkv = ColumnParallelLinear.shard(
                {n: (lazy(f"{n}.weight"), lazy(f"{n}.bias")) for n in projs},
                dict(zip(projs, qkv_rows(shard))),
                tp,
                **to,
            )
            o_name = f"{name}.o_proj"
            o_proj = RowParallelLinear.shard(o_name, lazy(f"{o_name}.weight"), lazy(f"{o_name}.bias"), tp, **to)
            full_qkv, full_o = _fused(full, projs, torch.float32), _fused(full, [f"{name}.o_proj"], torch.float32)
            exact_qkv, exact_o = _fused(full, projs, torch.float64), _fused(full, [f"{name}.o_proj"], torch.float64)
            held = torch.cat([torch.arange(r.start, r.stop) for r in qkv.global_rows])
            _check_close(report, f"column qkv {name}", qkv(x), full_qkv(x)[:, held], exact_qkv(x.double())[:, held])
            local = shard.heads
            out = o_proj(_attend(qkv(x), local.num_heads, local.num_kv_heads))
            _check_close(
                report, f"attention {name}", out, full_o(_attend(full_qkv(x), heads, kv_heads)),
                exact_o(_attend(exact_qkv(x.double()), heads, kv_heads)),
            )

            # LoRA on the column (qkv) and row (o_proj) layers, a mixed-slot batch.
            step = LoRAStep(LoRABatch.from_token_slots(TOKEN_SLOTS, torch.device("cpu")))
            a_col = torch.randn(SLOTS, RANK, HIDDEN, generator=g)
            b_col = torch.randn(SLOTS, full_qkv.weight.shape[0], RANK, generator=g)
            a_row = torch.randn(SLOTS, RANK, heads * HEAD_SIZE, generator=g)
            b_row = torch.randn(SLOTS, HIDDEN, RANK, generator=g)
            attn_in = torch.randn(TOKENS, heads * HEAD_SIZE, generator=g)
            base_col, base_row = qkv(x), o_proj(attn_in[:, o_proj.global_columns])
            for layer, full_layer, exact_layer, a, b, shard_lora, inputs in (
                (qkv, full_qkv, exact_qkv, a_col, b_col, shard_low_rank_column, (x, x)),
                (o_proj, full_o, exact_o, a_row, b_row, shard_low_rank_row, (attn_in[:, o_proj.global_columns], attn_in)),
            ):
                layer.hooks = [LoRAProjection(*shard_lora(a, b, layer), _LoopLoRA(), step)]
                full_layer.hooks = [LoRAProjection(a, b, _LoopLoRA(), step)]
                exact_layer.hooks = [LoRAProjection(a.double(), b.double(), _LoopLoRA(), step)]
                sharded, unsharded, exact = layer(inputs[0]), full_layer(inputs[1]), exact_layer(inputs[1].double())
                if layer is qkv:
                    unsharded, exact = unsharded[:, held], exact[:, held]
                kind = "column" if layer is qkv else "row"
                _check_close(report, f"lora {kind} {name}", sharded, unsharded, exact)
                untouched = torch.tensor(TOKEN_SLOTS) == NO_SLOT
                base = base_col if layer is qkv else base_row
                assert torch.equal(sharded[untouched], base[untouched]), f"lora {kind} {name}: NO_SLOT rows changed"
                assert not torch.allclose(sharded[~untouched], base[~untouched]), f"lora {kind} {name}: no delta"
                layer.hooks, full_layer.hooks, exact_layer.hooks = [], [], []

        # Vocab-parallel embedding: ids at every rank's range edges (11 ids do not divide evenly).
        embed = VocabParallelEmbedding.shard(lazy("embed.weight"), VOCAB, tp, **to)
        ranges = [vocab_range(VOCAB, TensorParallel(r, tp.world_size))[0] for r in range(tp.world_size)]
        edges = sorted({i for held_ids in ranges for i in (held_ids.start, held_ids.stop - 1)})
        ids = torch.tensor(edges + [0, VOCAB - 1, 5])
        assert torch.equal(embed(ids), F.embedding(ids, full["embed.weight"])), "vocab-parallel embedding differs"
        report["embedding edge ids"] = edges

        # lm_head, untied and tied, logits of the sampled rows only.
        hidden = torch.randn(TOKENS, HIDDEN, generator=g)
        rows = torch.tensor([1, 4, 6])
        for label, head, weight in (
            ("lm_head", ParallelLMHead.shard(lazy("lm_head.weight"), VOCAB, tp, **to), full["lm_head.weight"]),
            ("lm_head tied", ParallelLMHead.tied(embed), full["embed.weight"]),
        ):
            exact = F.linear(hidden[rows].double(), weight.double())
            everywhere = head(hidden, rows)
            _check_close(report, label, everywhere, F.linear(hidden[rows], weight), exact)
            last = tp.world_size - 1  # gathered to one rank only: the driver sampling
            on_last = head(hidden, rows, dst=last)
            assert (on_last is None) == (tp.rank != last), f"{label}: gathered to rank {tp.rank}, not {last}"
            assert on_last is None or torch.equal(on_last, everywhere), f"{label}: gather differs from all-gather"

    # MoE with tensor-parallel experts and a tensor-parallel shared expert: one all-reduce.
    gate_up_w = torch.randn(EXPERTS, 2 * EXPERT_INTERMEDIATE, HIDDEN, generator=g) / math.sqrt(HIDDEN)
    down_w = torch.randn(EXPERTS, HIDDEN, EXPERT_INTERMEDIATE, generator=g) / math.sqrt(EXPERT_INTERMEDIATE)
    router = torch.randn(EXPERTS, HIDDEN, generator=g)
    shared_gate = torch.randn(1, HIDDEN, generator=g)
    shared = {n: torch.randn(EXPERT_INTERMEDIATE, HIDDEN, generator=g) for n in ("s.gate_proj", "s.up_proj")}
    shared_down = torch.randn(HIDDEN, EXPERT_INTERMEDIATE, generator=g)
    kernel = ReferenceMoEKernel()

    def shared_mlp(dtype: torch.dtype, group: TensorParallel) -> GatedMLP:
        rows = {n: group.even_split(EXPERT_INTERMEDIATE, "shared intermediate") for n in shared}
        on = {"dtype": dtype, "device": to["device"]}
        column = ColumnParallelLinear.shard({n: (w, None) for n, w in shared.items()}, rows, group, **on)
        return GatedMLP(column, RowParallelLinear.shard("s.down_proj", shared_down, None, group, **on, reduce=False))

    def moe(experts: ExpertWeights, dtype: torch.dtype, group: TensorParallel) -> FusedMoE:
        return FusedMoE(router.to(dtype), experts, top_k=2, renormalize=True, kernel=kernel,
                        shared_expert=shared_mlp(dtype, group), shared_expert_gate=shared_gate.to(dtype))

    full_experts = ExpertWeights(gate_up_w, down_w)
    sharded = TensorParallelMoE(moe(shard_experts(full_experts, tp), torch.float32, tp), tp)(x)
    exact = moe(ExpertWeights(gate_up_w.double(), down_w.double()), torch.float64, SINGLE)(x.double())
    _check_close(report, "moe tensor-parallel", sharded, moe(full_experts, torch.float32, SINGLE)(x), exact)
    per_expert = ExpertWeights.from_experts(
        (expert_shard(w[:EXPERT_INTERMEDIATE], w[EXPERT_INTERMEDIATE:], d, tp) for w, d in zip(gate_up_w, down_w)),
        num_experts=EXPERTS, quantization=None, **to,
    )
    reference = shard_experts(full_experts, tp)
    assert torch.equal(per_expert.gate_up, reference.gate_up) and torch.equal(per_expert.down, reference.down)
    int8 = ExpertWeights.from_stacked(gate_up_w, down_w, quantization="int8", **to)
    sharded_int8 = TensorParallelMoE(moe(shard_experts(int8, tp), torch.float32, tp), tp)(x)
    unsharded_int8, exact_int8 = moe(int8, torch.float32, SINGLE)(x), moe(int8, torch.float64, SINGLE)(x.double())
    _check_close(report, "moe int8 tensor-parallel", sharded_int8, unsharded_int8, exact_int8)
    _embedded_layer_checks(tp, embedded, report)
    return report


def _hang(tp: TensorParallel, folder: Path, embedded: Path) -> dict[str, Any]:
    """Rank 0 waits in an all-reduce that rank 1 never joins: what a hung rank looks like."""
    if tp.rank == 0:
        tp.all_reduce(torch.ones(1))
    time.sleep(3600)
    return {}


def _rank_main(
    rank: int, world_size: int, port: int, folders: tuple[str, str], results: Any, checks: Any = _rank_checks
) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=timedelta(seconds=TIMEOUT_S),
        )
        results.put((rank, True, checks(TensorParallel.from_process_group(), *map(Path, folders))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(
    world_size: int, folders: tuple[str, str], checks: Any = _rank_checks, timeout_s: float = TIMEOUT_S
) -> dict[int, Any]:
    """Spawn ``world_size`` ranks running ``checks``; fail on the first error, a dead rank or
    after ``timeout_s``, killing every rank still running."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    ranks = [
        context.Process(target=_rank_main, args=(rank, world_size, port, folders, results, checks))
        for rank in range(world_size)
    ]
    for process in ranks:
        process.start()
    reports: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(reports) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.5)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(ranks) if p.exitcode not in (None, 0) and r not in reports]
                if dead:
                    pytest.fail(f"rank(s) {dead} of {world_size} died (exit codes {[ranks[r].exitcode for r in dead]})")
                if time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(reports))
                    pytest.fail(f"rank(s) {missing} of {world_size} did not finish within {timeout_s} s")
                continue
            if not ok:
                pytest.fail(f"rank {rank} of {world_size} failed:\n{payload}")
            reports[rank] = payload
    finally:
        for process in ranks:
            process.join(timeout=5 if len(reports) == world_size else 0)
            if process.is_alive():
                process.kill()
                process.join()
    return reports


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_layers_match_the_unsharded_ones_across_processes(
    world_size: int, tmp_path: Path, embedded_model: Path
) -> None:
    save_file(_weights(), str(tmp_path / "model.safetensors"))
    reports = _run_ranks(world_size, (str(tmp_path), str(embedded_model)))
    for rank, report in sorted(reports.items()):
        worst = max((v["eps_of_max"], k) for k, v in report.items() if isinstance(v, dict))
        print(f"size {world_size} rank {rank}: worst sharded error {worst[0]:.2f} eps of max|out| ({worst[1]})")


def test_a_hung_rank_fails_in_bounded_time_and_no_rank_is_left_running(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="rank\\(s\\) \\[0, 1\\] of 2 did not finish within 12 s"):
        _run_ranks(2, (str(tmp_path), str(tmp_path)), _hang, timeout_s=12)
    assert time.monotonic() - started < 12 + 5 and not mp.active_children()


def test_size_one_never_touches_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.distributed called at size 1")

    for collective in ("all_reduce", "all_gather", "gather", "get_rank", "get_world_size"):
        monkeypatch.setattr(dist, collective, refuse)
    full = _weights()
    to = {"dtype": torch.float32, "device": torch.device("cpu")}
    x = torch.randn(TOKENS, HIDDEN)
    t = torch.ones(3)
    assert SINGLE.all_reduce(t) is t and SINGLE.all_gather(t) is t
    names = ["mlp.gate_proj", "mlp.up_proj"]
    parts = {n: (full[f"{n}.weight"], full[f"{n}.bias"]) for n in names}
    column = ColumnParallelLinear.shard(parts, {n: slice(0, INTERMEDIATE) for n in names}, SINGLE, **to)
    assert torch.equal(column(x), _fused(full, names, torch.float32)(x))
    row = RowParallelLinear.shard(
        "mlp.down_proj", full["mlp.down_proj.weight"], full["mlp.down_proj.bias"], SINGLE, **to
    )
    h = torch.randn(TOKENS, INTERMEDIATE)
    assert torch.equal(row(h), _fused(full, ["mlp.down_proj"], torch.float32)(h))
    ids = torch.arange(VOCAB)
    embed = VocabParallelEmbedding.shard(full["embed.weight"], VOCAB, SINGLE, **to)
    assert torch.equal(embed(ids), full["embed.weight"])
    shards = (embed.weight, row.weight)
    originals = (full["embed.weight"], full["mlp.down_proj.weight"])
    assert all(s.untyped_storage().data_ptr() != o.untyped_storage().data_ptr() for s, o in zip(shards, originals))
    assert torch.equal(ParallelLMHead.tied(embed)(x), F.linear(x, full["embed.weight"]))
    assert torch.equal(ParallelLMHead.tied(embed)(x, dst=0), F.linear(x, full["embed.weight"]))
    heads = AttentionHeads(9, 3, 64)
    assert shard_heads(heads, SINGLE).heads == heads
    experts = ExpertWeights(torch.randn(2, 8, 4), torch.randn(2, 4, 4))
    sharded = shard_experts(experts, SINGLE)
    assert torch.equal(sharded.gate_up, experts.gate_up) and torch.equal(sharded.down, experts.down)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "size", "match"),
    [
        (9, 3, 2, "does not divide num_attention_heads"),  # SmolLM2 at size 2
        (6, 3, 2, "does not divide num_key_value_heads"),
        (6, 2, 3, "exceeds num_key_value_heads \\(2\\) and is not a multiple"),
    ],
)
def test_a_size_that_neither_divides_nor_replicates_the_heads_is_refused(
    heads: int, kv_heads: int, size: int, match: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=f"tensor_parallel_size {size} {match}"):
        shard_heads(AttentionHeads(heads, kv_heads, 64), TensorParallel(0, size))


@pytest.mark.parametrize(
    ("heads", "kv_heads", "size", "local", "replicas"),
    [(9, 3, 3, (3, 1), 1), (9, 3, 9, (1, 1), 3), (4, 1, 2, (2, 1), 2), (8, 2, 4, (2, 1), 2), (32, 8, 4, (8, 2), 1)],
)
def test_every_rank_s_query_heads_read_its_own_kv_heads(
    heads: int, kv_heads: int, size: int, local: tuple[int, int], replicas: int
) -> None:
    group, seen = heads // kv_heads, set()
    for rank in range(size):
        shard = shard_heads(AttentionHeads(heads, kv_heads, 64), TensorParallel(rank, size))
        assert (shard.heads.num_heads, shard.heads.num_kv_heads, shard.kv_replicas) == (*local, replicas)
        kv = range(shard.kv_heads.start, shard.kv_heads.stop)
        assert all(q // group in kv for q in range(shard.q_heads.start, shard.q_heads.stop))
        seen.update(range(shard.q_heads.start, shard.q_heads.stop))
        q_rows, k_rows, _ = qkv_rows(shard)
        assert (q_rows.start, k_rows.start) == (shard.q_heads.start * 64, shard.kv_heads.start * 64)
    assert seen == set(range(heads))


def test_a_rank_outside_the_group_and_uneven_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 is not in"):
        TensorParallel(2, 2)
    uneven = "tensor_parallel_size 3 does not divide the intermediate size of experts \\(4\\)"
    with pytest.raises(UnsupportedModelError, match=uneven):
        shard_experts(ExpertWeights(torch.zeros(2, 8, 4), torch.zeros(2, 4, 4)), TensorParallel(0, 3))


def test_a_lazy_read_checks_the_shape_and_reads_only_the_indexed_rows(tmp_path: Path) -> None:
    save_file({"w": torch.arange(12.0).view(4, 3)}, str(tmp_path / "model.safetensors"))
    with SafetensorsCheckpoint(tmp_path) as checkpoint:
        wrong = "tensor 'w' in model.safetensors has shape \\[4, 3\\], expected \\[4, 4\\]"
        with pytest.raises(InvalidModelFolderError, match=wrong):
            checkpoint.lazy("w", (4, 4))
        source = checkpoint.lazy("w", (4, 3))
        assert checkpoint.unread() == []
        to = {"dtype": torch.float32, "device": torch.device("cpu")}
        rows = ColumnParallelLinear.shard({"w": (source, None)}, {"w": slice(2, 4)}, TensorParallel(1, 2), **to)
        assert torch.equal(rows.weight, torch.arange(6.0, 12.0).view(2, 3)) and rows.global_rows == (slice(2, 4),)
