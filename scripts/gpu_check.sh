#!/usr/bin/env bash
# Check the hardware platform plugins for real on a GPU machine: install kernel-core, the SDK
# and every platform into a fresh venv, show what `kcore platform` detects, and run the
# platforms' tests (where a platform's hardware is present, its full conformance suite runs
# instead of being skipped), then the Triton MoE kernel's tests compiled on the GPU and its timing
# (the MoE section). Logs go to $OUT when it is set, else to a new temporary folder.
#
#   scripts/gpu_check.sh                  # torch==2.13.0 from PyPI: a CUDA build on Linux x86-64,
#                                         # so this checks the cuda platform on NVIDIA GPUs
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/xpu scripts/gpu_check.sh  # XPU (or rocmX.Y)
#   KCORE_OFFLINE=1 scripts/gpu_check.sh  # no package index: reuse python3's torch and packages
#
# Offline, the venv also sees python3's own packages (its torch may be another version than
# 2.13.0) and installs this repo and ./.whl/*.whl without dependencies: carry in .whl what
# kernel-core needs that python3 lacks (pydantic, pydantic-core, annotated-types,
# typing-inspection, importlib-metadata, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${OUT:-$(mktemp -d)}
venv=${VENV:-/tmp/kcore-gpu-venv}
python=$venv/bin/python
failed=0

step() {  # step NAME SECONDS COMMAND...: run it bounded, log to $logs/NAME.log, show the tail
  local name=$1 seconds=$2 rc
  shift 2
  echo "== $name: $*"
  timeout "$seconds" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  tail -n 40 "$logs/$name.log"
  if [ "$rc" -ne 0 ]; then echo "!! $name failed (exit $rc), log: $logs/$name.log"; failed=1; fi
  return "$rc"
}

packages=(-e ".[test]" -e sdk)
for dir in platforms/*/; do packages+=(-e "$dir"); done

offline=${KCORE_OFFLINE:-0}
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
  wheels=(.whl/*.whl)
  step install 300 "$python" -m pip install -q --no-index --no-deps --no-build-isolation \
    "${wheels[@]}" "${packages[@]}" || exit 1
else
  step torch 1200 "$python" -m pip install -q torch==2.13.0 \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} || exit 1
  step install 600 "$python" -m pip install -q "${packages[@]}" || exit 1
fi

step torch-build 120 "$python" -c 'import torch; print("torch", torch.__version__, "| cuda",
  torch.version.cuda, "| hip", torch.version.hip, "| xpu", torch.version.xpu, "| cuda devices",
  torch.cuda.device_count())'
step kcore-platform 120 "$venv/bin/kcore" platform
step pytest 900 "$python" -m pytest platforms -v -rfE -p no:cacheprovider

# ---- MoE kernels (kernel-core-moe-triton) -------------------------------------------------
# The Triton MoE kernel's tests compiled on the GPU (its tests/conftest.py uses the interpreter
# only where torch sees no CUDA device), then a timing of it beside the portable torch kernel
# (when that plugin exists) for 1 to 4096 tokens, with the GPU's name from nvidia-smi.
moe_plugins=()
for dir in plugins/kernel-core-moe-triton/ plugins/kernel-core-moe-torch/; do
  [ -d "$dir" ] && moe_plugins+=(-e "$dir")
done
if [ "$offline" = 1 ]; then
  step moe-install 300 "$python" -m pip install -q --no-index --no-deps --no-build-isolation "${moe_plugins[@]}"
else
  step moe-install 600 "$python" -m pip install -q "${moe_plugins[@]}"
fi
step moe-pytest 900 env -u TRITON_INTERPRET "$python" -m pytest plugins/kernel-core-moe-triton -v -rfE -p no:cacheprovider
step moe-bench 900 env -u TRITON_INTERPRET "$python" plugins/kernel-core-moe-triton/bench_moe.py --device cuda
# -------------------------------------------------------------------------------------------

echo "== logs: $logs"
exit "$failed"
