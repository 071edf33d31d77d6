#!/usr/bin/env bash
# The whole GPU benchmark in one call on a bare GPU machine (issue 19): install the carried wheels, record
# the environment, run benchmarks/perf.py on CUDA, and leave every result in OUT_DIR as it is produced
# (perf.py writes its latency and training parts as they finish, so a time limit keeps what was measured).
#
#   bash benchmarks/gpu_run.sh WHEEL_DIR OUT_DIR [perf.py arguments...]
#   e.g. bash benchmarks/gpu_run.sh .gpu/whl "$OUT" --check-precision --steps 8
#
# WHEEL_DIR holds wheels for what the machine's image lacks (for rglcd: diffusers, open_clip_torch, ftfy,
# wcwidth, importlib_metadata); an empty or missing folder installs nothing. On a CPU-only machine pass
# --device cpu after OUT_DIR to check this script's logic on the tiny preset.
set -uo pipefail
WHEELS=${1:?usage: gpu_run.sh WHEEL_DIR OUT_DIR [perf.py args]}
OUT_DIR=${2:?usage: gpu_run.sh WHEEL_DIR OUT_DIR [perf.py args]}
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SITE=${RGLCD_SITE:-/tmp/rglcd-site}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "wheel install failed" | tee "$OUT_DIR/env.txt"; exit 1; }
  export PYTHONPATH="$SITE:$ROOT"
else
  export PYTHONPATH="$ROOT"
fi
{
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>&1 || true
  "$PY" -c "import torch, diffusers, transformers, accelerate, open_clip, rglcd.train.loop, rglcd.sample
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__,
      'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'open_clip', open_clip.__version__)"
} 2>&1 | tee "$OUT_DIR/env.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
cd "$ROOT" && "$PY" benchmarks/perf.py --json "$OUT_DIR/perf.json" "$@" 2>&1 | tee "$OUT_DIR/perf.log"
