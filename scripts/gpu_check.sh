#!/usr/bin/env bash
# The GPU check of issue 17: on a bare GPU machine, install kernel-core with every platform and
# the Triton kernel plugins, show what `kcore platform` and `kcore plugins doctor` pick, run the
# platforms' tests and the Triton plugins' conformance suites compiled on the GPU (their conftests
# use Triton's interpreter only where torch sees no GPU), then W1 and W2 on the GPU with the
# Triton backends (the platform's defaults) and the MoE kernel timing, and write one JSON report,
# report.json, beside the logs. Everything is bounded to BUDGET seconds (default 570) in all.
# Logs go to $OUT when it is set, else to a new temporary folder.
#
#   scripts/gpu_check.sh --prepare        # HERE, with the package index: fill .gpu/ (git-ignored)
#                                         # with the wheels a GPU image without kernel-core's pure
#                                         # Python needs lacks, and the embedded model's config and
#                                         # tokenizer (its weights, 514 MB, cannot travel: W1/W2 run
#                                         # on random weights of the same shape, the same FLOPs)
#   KCORE_OFFLINE=1 scripts/gpu_check.sh  # THERE, carrying .gpu: no package index; reuse python3's
#                                         # torch and triton, install .gpu/whl/*.whl without deps
#   scripts/gpu_check.sh                  # a GPU machine with an index: torch from PyPI (a CUDA
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/xpu scripts/gpu_check.sh  # build), or XPU/ROCm
#
# vllm is not installed: its wheels (hundreds of MB, a pinned torch) cannot reach an offline GPU
# machine, so the report has no anchor numbers; with an index, ANCHOR=1 tries `pip install vllm`
# in its own venv and runs ../shared/bench/anchor_vllm.py's W1 on the same random-weight model.
set -uo pipefail
cd "$(dirname "$0")/.."
gpu_dir=.gpu
wheel_names=(pydantic pydantic-core annotated-types typing-inspection importlib-metadata pluggy)

if [ "${1:-}" = --prepare ]; then
  mkdir -p "$gpu_dir/whl" "$gpu_dir/model"
  grep -qx "/$gpu_dir/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$gpu_dir/" >>.git/info/exclude; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$gpu_dir/whl" "${wheel_names[@]}" || exit 1
  model=${KERNEL_CORE_CACHE:-$HOME/.cache/kernel_core}/models/smollm2-135m-instruct
  cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$gpu_dir/model/" || exit 1
  cp "$model"/chat_template.jinja "$gpu_dir/model/" 2>/dev/null || true
  du -sh "$gpu_dir"
  exit 0
fi

logs=${OUT:-$(mktemp -d)}
venv=${VENV:-/tmp/kcore-gpu-venv}
python=$venv/bin/python
deadline=$((SECONDS + ${BUDGET:-570}))
offline=${KCORE_OFFLINE:-0}
: >"$logs/steps.tsv"

write_report() {  # report.json: every step's exit status and seconds, and the benchmarks' own JSON
  "${PYTHON:-python3}" - "$logs" <<'EOF'
import json, pathlib, sys
logs = pathlib.Path(sys.argv[1])
rows = [line.split("\t") for line in (logs / "steps.tsv").read_text().splitlines()]
steps = [{"name": name, "exit": int(code), "seconds": int(seconds)} for name, code, seconds in (r for r in rows if len(r) == 3)]
report = {"passed": bool(steps) and all(s["exit"] == 0 for s in steps), "steps": steps,
          "benchmarks": {p.stem: json.loads(p.read_text()) for p in sorted(logs.glob("w1-w2-*.json"))}}
(logs / "report.json").write_text(json.dumps(report, indent=1))
print("== report:", logs / "report.json", "passed" if report["passed"] else "FAILED")
EOF
}
trap write_report EXIT

step() {  # step NAME SECONDS COMMAND...: run it bounded (and within BUDGET), log to $logs/NAME.log
  local name=$1 seconds=$2 rc started=$SECONDS left=$((deadline - SECONDS))
  shift 2
  [ "$left" -lt "$seconds" ] && seconds=$left
  echo "== $name (at most ${seconds}s): $*"
  if [ "$seconds" -le 0 ]; then
    echo "budget spent" >"$logs/$name.log"; rc=124
  else
    timeout "$seconds" "$@" >"$logs/$name.log" 2>&1; rc=$?
  fi
  tail -n 25 "$logs/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >>"$logs/steps.tsv"
  [ "$rc" -ne 0 ] && echo "!! $name failed (exit $rc), log: $logs/$name.log"
  return "$rc"
}

packages=(-e ".[test]" -e sdk)
for dir in platforms/*/ plugins/kernel-core-{llama,lora,lora-torch,lora-triton,attn-torch,attn-triton,moe-torch,moe-triton,paged-kv,sched-fcfs}/; do
  [ -d "$dir" ] && packages+=(-e "$dir")
done

if [ ! -x "$python" ]; then
  # Offline, pip and setuptools come from python3 as well: a new venv's own may be too old.
  venv_options=(--system-site-packages)
  [ "$offline" = 1 ] && venv_options+=(--without-pip)
  step venv 120 "${PYTHON:-python3}" -m venv "${venv_options[@]}" "$venv" || exit 1
fi
if [ "$offline" = 1 ]; then
  # python3 may itself be a venv, whose packages --system-site-packages does not reach.
  "${PYTHON:-python3}" -c 'import site; print(*site.getsitepackages(), sep="\n")' \
    >"$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_outer_site.pth"
  shopt -s nullglob
  wheels=("$gpu_dir"/whl/*.whl)
  step install 180 "$python" -m pip install -q --no-index --no-deps --no-build-isolation \
    "${wheels[@]}" "${packages[@]}" || exit 1
else
  step torch 300 "$python" -m pip install -q "torch>=2.5,<3" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} || exit 1
  step install 300 "$python" -m pip install -q "${packages[@]}" || exit 1
fi

unset TRITON_INTERPRET  # compiled kernels on the GPU, never the interpreter
step torch-build 60 "$python" -c 'import torch, triton; print("torch", torch.__version__, "| triton", triton.__version__,
  "| cuda", torch.version.cuda, "| hip", torch.version.hip, "| devices", torch.cuda.device_count(),
  "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda device")'
step kcore-platform 60 "$venv/bin/kcore" platform
step plugins-doctor 60 "$venv/bin/kcore" plugins doctor
step platform-tests 120 "$python" -m pytest platforms -q -rfE -p no:cacheprovider
for plugin in attn-triton lora-triton moe-triton; do
  step "$plugin-tests" 150 "$python" -m pytest "plugins/kernel-core-$plugin" -q -rfE -p no:cacheprovider
done

# W1 and W2 on the embedded model's shape with random weights, with the GPU platform's defaults
# (attention, LoRA and MoE kernels: triton).
model=$logs/smollm2-shape
if [ -f "$gpu_dir/model/config.json" ] || [ -d "${KERNEL_CORE_CACHE:-$HOME/.cache/kernel_core}/models/smollm2-135m-instruct" ]; then
  source_dir=$gpu_dir/model
  [ -f "$source_dir/config.json" ] || source_dir=${KERNEL_CORE_CACHE:-$HOME/.cache/kernel_core}/models/smollm2-135m-instruct
  step random-model 60 "$python" -c 'import shutil, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
source, target = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(target)
for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
    if (source / name).exists():
        shutil.copy(source / name, target / name)' "$source_dir" "$model" &&
  for dtype in bfloat16 float32; do
    # W1 (base model, LoRA serving on) then W2 (request i on adapter i % 8) in one process
    step "w1-w2-$dtype" 120 "$venv/bin/kcore" bench lora --model "$model" --dtype "$dtype" --json "$logs/w1-w2-$dtype.json"
  done
  if [ "${ANCHOR:-0}" = 1 ] && [ "$offline" != 1 ] && [ -f ../shared/bench/anchor_vllm.py ]; then
    step anchor-venv 120 bash -c "python3 -m venv /tmp/anchor-vllm && /tmp/anchor-vllm/bin/pip install -q vllm"
    step anchor-w1 120 /tmp/anchor-vllm/bin/python ../shared/bench/anchor_vllm.py "$model" --w1 --dtype bfloat16
  fi
else
  echo "== no model shape (.gpu/model, from --prepare): W1/W2 skipped" | tee -a "$logs/steps.tsv"
fi
[ -f plugins/kernel-core-moe-triton/bench_moe.py ] &&
  step moe-bench 90 "$python" plugins/kernel-core-moe-triton/bench_moe.py --device cuda

failed=$(awk -F'\t' 'NF == 3 && $2 != 0' "$logs/steps.tsv" | wc -l)
exit $((failed > 0))
