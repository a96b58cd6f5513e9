"""Where the engine's bfloat16 forward first rounds differently from HF transformers' (issue #16):
one prompt's prefill and a few decode steps through the engine's model (as the engine builds it,
under the platform's linear policy) and through ``LlamaForCausalLM``, every op's output compared
(embeddings; per layer the input norm, q/k/v, rotated q/k, attention, o_proj, residual, post-attention
norm, gate/up, act*up, down, residual; final norm; the last position's logits). HF is fed the
engine's tokens, so decode steps compare the same inputs even after the greedy outputs diverge.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bf16_layer_diff.py --prompt 3 --steps 4 --backend cpu
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama

from kernel_core import LLM, SamplingParams
from kernel_core.bench.workloads import locate, workload
from kernel_core.models.resolve import resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bf16_agreement import oracle_prompts  # noqa: E402

#: One forward's captures: op name → ``[T, ...]`` tensor, in the order the ops run.
Captures = dict[str, torch.Tensor]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``[T, features]`` of HF's ``[1, T, features]``."""
    return t.detach().reshape(-1, t.shape[-1]).clone()


def _wrap(obj: Any, attribute: str, around: Callable[..., Any]) -> None:
    """Replace ``obj.attribute`` (a callable) by ``around(original, *args)`` on this instance."""
    original = getattr(obj, attribute)
    setattr(obj, attribute, lambda *args: around(original, *args))


def capture_engine(llm: LLM, steps: list[Captures]) -> None:
    """Record each engine forward's ops into a new entry of ``steps``."""
    model = llm.engine.components.model
    size = model.head_size

    def current() -> Captures:
        return steps[-1]

    model._embedding_hooks.append(lambda hidden: steps.append({"embed": hidden.clone()}))
    for i, layer in enumerate(model.layers):
        attention, mlp = layer.attention, layer.mlp

        def attend(original: Callable, hidden: torch.Tensor, *rest: Any, i: int = i) -> torch.Tensor:
            current()[f"{i}.input_norm"] = hidden.clone()
            out = original(hidden, *rest)
            current()[f"{i}.o_proj"] = out.clone()
            return out

        def qkv(original: Callable, x: torch.Tensor, i: int = i, a: Any = attention) -> torch.Tensor:
            out = original(x)
            q, k = a.num_heads * size, a.num_kv_heads * size
            current().update({f"{i}.q": out[:, :q].clone(), f"{i}.k": out[:, q : q + k].clone(),
                              f"{i}.v": out[:, q + k :].clone()})
            return out

        def backend(original: Callable, q: torch.Tensor, k: torch.Tensor, *rest: Any, i: int = i) -> torch.Tensor:
            current().update({f"{i}.q_rot": q.reshape(len(q), -1).clone(), f"{i}.k_rot": k.reshape(len(k), -1).clone()})
            out = original(q, k, *rest)
            current()[f"{i}.attention"] = out.reshape(len(q), -1).clone()
            return out

        def feed_forward(original: Callable, hidden: torch.Tensor, i: int = i) -> torch.Tensor:
            step = current()
            previous = step["embed"] if i == 0 else step[f"{i - 1}.residual_mlp"]
            step[f"{i}.residual_attn"] = previous + step[f"{i}.o_proj"]  # the engine's add_, bf16
            step[f"{i}.post_norm"] = hidden.clone()
            out = original(hidden)
            step[f"{i}.down"] = out.clone()
            step[f"{i}.residual_mlp"] = step[f"{i}.residual_attn"] + out
            return out

        def gate_up(original: Callable, x: torch.Tensor, i: int = i) -> torch.Tensor:
            out = original(x)
            gate, up = out.chunk(2, dim=-1)
            current().update({f"{i}.gate": gate.clone(), f"{i}.up": up.clone()})
            return out

        def down(original: Callable, x: torch.Tensor, i: int = i) -> torch.Tensor:
            current()[f"{i}.act_up"] = x.clone()
            return original(x)

        layer.attention = _Proxy(attention, attend)
        _wrap(attention.qkv_proj, "_gemm", qkv)
        attention.backend = _Proxy(attention.backend, None, forward=backend)
        layer.mlp = _Proxy(mlp, feed_forward)
        _wrap(mlp.gate_up_proj, "_gemm", gate_up)
        _wrap(mlp.down_proj, "_gemm", down)

    def forward(original: Callable, *args: Any) -> torch.Tensor:
        out = original(*args)
        current()["norm"] = out.clone()
        return out

    def logits(original: Callable, hidden: torch.Tensor) -> torch.Tensor:
        out = original(hidden)
        current()["logits"] = out[-1:].float()
        return out

    _wrap(model, "forward", forward)
    _wrap(model, "compute_logits", logits)


class _Proxy:
    """Stands in for a block: calling it (or its ``forward``) goes through ``around``."""

    def __init__(self, inner: Any, around: Callable | None, forward: Callable | None = None) -> None:
        self._inner, self._around, self._forward = inner, around, forward

    def __call__(self, *args: Any) -> Any:
        return self._around(self._inner, *args)

    def forward(self, *args: Any) -> Any:
        return self._forward(self._inner.forward, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def capture_hf(model: torch.nn.Module, input_ids: list[int], steps: int) -> list[Captures]:
    """HF's ops for the prefill of ``input_ids[:-steps]`` then one decode step per later token."""
    captured: list[Captures] = []
    handles = []

    def hook(name: str, which: str) -> Callable:
        def record(module: torch.nn.Module, args: tuple, out: Any) -> None:
            value = args[0] if which == "in" else (out[0] if isinstance(out, tuple) else out)
            captured[-1][name] = _flat(value)
        return record

    inner = model.model
    handles.append(inner.embed_tokens.register_forward_hook(hook("embed", "out")))
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for module, name, which in (
            (layer.input_layernorm, "input_norm", "out"), (attn.q_proj, "q", "out"), (attn.k_proj, "k", "out"),
            (attn.v_proj, "v", "out"), (attn.o_proj, "attention", "in"), (attn.o_proj, "o_proj", "out"),
            (layer.post_attention_layernorm, "residual_attn", "in"), (layer.post_attention_layernorm, "post_norm", "out"),
            (mlp.gate_proj, "gate", "out"), (mlp.up_proj, "up", "out"), (mlp.down_proj, "act_up", "in"),
            (mlp.down_proj, "down", "out"), (layer, "residual_mlp", "out"),
        ):
            handles.append(module.register_forward_hook(hook(f"{i}.{name}", which)))
    handles.append(inner.norm.register_forward_hook(hook("norm", "out")))
    handles.append(model.lm_head.register_forward_hook(hook("logits", "out")))
    rotary = modeling_llama.apply_rotary_pos_emb
    layer_of = iter(())

    def rotate(q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        q_rot, k_rot = rotary(q, k, *args, **kwargs)
        i = next(layer_of)  # [1, heads, T, size] -> [T, heads * size]
        captured[-1][f"{i}.q_rot"] = q_rot[0].transpose(0, 1).reshape(q_rot.shape[2], -1).clone()
        captured[-1][f"{i}.k_rot"] = k_rot[0].transpose(0, 1).reshape(k_rot.shape[2], -1).clone()
        return q_rot, k_rot

    modeling_llama.apply_rotary_pos_emb = rotate
    try:
        cache, prompt = None, len(input_ids) - steps
        with torch.no_grad():
            for start, end in [(0, prompt)] + [(p, p + 1) for p in range(prompt, len(input_ids))]:
                captured.append({})
                layer_of = iter(range(len(inner.layers)))
                out = model(torch.tensor([input_ids[start:end]]), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                captured[-1]["logits"] = captured[-1]["logits"][-1:].float()
    finally:
        modeling_llama.apply_rotary_pos_emb = rotary
        for handle in handles:
            handle.remove()
    return captured


def compare(ours: Captures, theirs: Captures, show: int) -> None:
    """Print each op's max |difference| and fraction of elements differing, first differing op marked."""
    first = None
    for name, mine in ours.items():
        ref = theirs[name].to(mine.dtype).reshape(mine.shape)
        diff = (mine.float() - ref.float()).abs()
        frac = (mine != ref).float().mean().item()
        if frac and first is None:
            first = name
        if frac or name in ("embed", "norm", "logits") or show:
            mark = "  <- first difference" if name == first else ""
            print(f"  {name:18s} max |diff| {diff.max().item():.4g}  differing {100 * frac:.2f}%{mark}")
    if first is None:
        print("  every op equal bit for bit")
    top = theirs["logits"][0].topk(2)
    print(f"  argmax ours {ours['logits'][0].argmax().item()} HF {top.indices[0].item()} "
          f"(HF's margin to its second {top.values[0].item() - top.values[1].item():.4g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", type=int, default=0, help="index into test_oracle.py's prompts")
    parser.add_argument("--w1", action="store_true", help="--prompt indexes W1's prompts instead")
    parser.add_argument("--steps", type=int, default=3, help="decode steps after the prefill")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--all-ops", action="store_true", help="print equal ops too")
    args = parser.parse_args()

    folder = resolve_model("smollm2-135m-instruct")
    if args.w1:
        text = workload(locate(), "W1", num_prompts=args.prompt + 1).prompts[args.prompt]
        prompt = AutoTokenizer.from_pretrained(folder).encode(text)
    else:
        prompt = oracle_prompts(folder)[args.prompt]
    llm = LLM(str(folder), dtype="bfloat16", attention_backend=args.backend, kv_cache_memory=0.25)
    ours: list[Captures] = []
    capture_engine(llm, ours)
    tokens = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=args.steps + 1))[0].outputs[0].token_ids
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    theirs = capture_hf(hf, prompt + list(tokens[: args.steps]), args.steps)
    for step, (mine, ref) in enumerate(zip(ours, theirs, strict=True)):
        print(f"{'prefill' if step == 0 else f'decode {step}'} ({len(mine['embed'])} tokens):")
        compare(mine, ref, args.all_ops)


if __name__ == "__main__":
    main()
