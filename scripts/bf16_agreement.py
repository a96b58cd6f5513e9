"""Greedy bfloat16 agreement with HF transformers bfloat16 ``generate`` (issue #16), per attention
backend: tests/engine/test_oracle.py's 16 prompts (16 tokens), or W1's first prompts with
``--w1 N``, HF one prompt at a time (unpadded), tokens compared position by position. Each request
that differs is listed with its first differing position and HF's margin there (its best bfloat16
logit minus the one of the engine's token: 0 is an exact tie).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bf16_agreement.py --backends torch cpu
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kernel_core import LLM, SamplingParams
from kernel_core.bench.workloads import locate, workload
from kernel_core.models.resolve import resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
from test_oracle import NEW_TOKENS, QUESTIONS, RAW  # noqa: E402


def oracle_prompts(folder: Path) -> list[list[int]]:
    """test_oracle.py's prompts, tokenized as its fixture does."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    return [tokenizer.encode(p, add_special_tokens=False) for p in RAW + chats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["torch", "cpu"])
    parser.add_argument("--w1", type=int, default=0, help="W1's first N prompts instead of the oracle's")
    parser.add_argument("--tokens", type=int, default=None, help="default: 16 (oracle), 32 (W1)")
    args = parser.parse_args()

    folder = resolve_model("smollm2-135m-instruct")
    if args.w1:
        texts = workload(locate(), "W1", num_prompts=args.w1).prompts
        prompts, tokens = [AutoTokenizer.from_pretrained(folder).encode(t) for t in texts], args.tokens or 32
    else:
        prompts, tokens = oracle_prompts(folder), args.tokens or NEW_TOKENS
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    reference, scores = [], []
    for ids in prompts:
        generated = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=tokens, do_sample=False, output_scores=True, return_dict_in_generate=True,
        )
        reference.append(generated.sequences[0, len(ids):].tolist())
        scores.append([step[0] for step in generated.scores])
    total = sum(len(r) for r in reference)
    print(f"{len(prompts)} prompts x {tokens} tokens, HF {model.config._attn_implementation}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    for name in args.backends:
        llm = LLM(str(folder), dtype="bfloat16", attention_backend=name, kv_cache_memory=0.5)
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=tokens))
        got = [o.outputs[0].token_ids for o in outputs]
        same = sum(x == y for r, g in zip(reference, got) for x, y in zip(r, g))
        whole = sum(r == g for r, g in zip(reference, got))
        print(f"{name}: {same}/{total} ({100 * same / total:.1f}%) tokens, {whole}/{len(prompts)} requests identical, "
              f"load average {os.getloadavg()[0]:.2f}")
        for i, (r, g) in enumerate(zip(reference, got)):
            at = next((j for j, (x, y) in enumerate(zip(r, g)) if x != y), None)
            if at is not None:
                margin = (scores[i][at][r[at]] - scores[i][at][g[at]]).item()
                print(f"  prompt {i}: first differs at token {at}, HF's margin there {margin:g}")
        del llm


if __name__ == "__main__":
    main()
