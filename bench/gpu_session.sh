#!/usr/bin/env bash
# One GPU session's checks, in the order they matter, each under its own time limit so that one
# failure never hides the next (a lent GPU machine is short of time, not of memory):
#
#   1. the tests marked gpu (CI never has a GPU: they are skipped there);
#   2. the default pipeline's stages on CUDA, each timed (prepare -> extract -> train_head ->
#      finetune -> evaluate, in one process without MLflow: bench/stage_times.py);
#   3. bench/finetune_speed.py on CUDA: thawline's fine-tune step against the tutorials' loop
#      (also in bf16 channels-last), with a torch.profiler table of a short thawline epoch;
#   4. bench/time_to_accuracy.py on CUDA: the tutorials' loop against a thawline fine-tune of
#      every group from the start (EMA on), one run, one chart.
#
#   OUT=reports/gpu bash bench/gpu_session.sh          # PYTHON=... for another interpreter
#   PARTS="tests speed" OUT=... bash bench/gpu_session.sh   # some parts (one call is <= 10 min)
#   SUBSET=1 OUT=/tmp/x bash bench/gpu_session.sh      # a quick dry run on a few images
#
# Logs, stage stats and the benchmark's JSON and chart go to $OUT. docs/benchmarks.md ("On a
# GPU") has the figures of a run.
set -u
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-reports/gpu}
mkdir -p "$OUT"
work=$(mktemp -d)
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm',
timm.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  lscpu | grep -m1 "Model name"; nproc; } 2>&1 | tee -a "$OUT/session.log"

parts=${PARTS:-tests stages speed tta}
want() { [[ " $parts " == *" $1 "* ]]; }

want tests && log "1. tests marked gpu" && timeout "${TEST_LIMIT:-110}" \
  "$PYTHON" -m pytest -p no:cacheprovider -q -m gpu tests/integration/test_extract.py \
  tests/integration/test_cuda.py tests/unit/test_preprocess.py 2>&1 | tee "$OUT/tests.log" | tail -25

# A subset for a dry run where there is no GPU (the whole of Fashion-MNIST otherwise).
limit=$([ "${SUBSET:-}" ] && echo 30 || echo null)
want stages && log "2. the default stages on CUDA, each timed (bench/stage_times.py)" && \
  timeout "${STAGE_LIMIT:-240}" "$PYTHON" bench/stage_times.py --out "$work" \
  -S "prepare.limit_per_class=$limit" 2>&1 | grep -av "it/s\|s/it" | tee "$OUT/stages.log" | tail -12
cp "$work/stage_times.json" "$OUT/" 2>/dev/null

per_class=$([ "${SUBSET:-}" ] && echo 10 || echo 300)
want speed && log "3. fine-tune step speed on CUDA (bench/finetune_speed.py)" && timeout \
  "${SPEED_LIMIT:-150}" "$PYTHON" bench/finetune_speed.py --per-class "$per_class" --sizes 64 \
  --profile "$OUT/profile.txt" 2>&1 | grep -av "it/s\|s/it" | tee "$OUT/speed.log" | tail -8

subset=$([ "${SUBSET:-}" ] && echo "--per-class 30 --test-per-class 20" || echo "")
# shellcheck disable=SC2086
want tta && log "4. time to accuracy on CUDA" && timeout "${TTA_LIMIT:-220}" \
  "$PYTHON" bench/time_to_accuracy.py $subset --runs naive thawline-custom --epochs 3 \
  --budgets 0.5 1 2 --json "$OUT/tta.json" --plot "$OUT/tta.png" \
  --set finetune.strategy=custom 'finetune.phases=[{groups:-1,epochs:4,lr:0.001}]' \
  finetune.ema=true 2>&1 | grep -av "it/s\|s/it" | tee "$OUT/tta.log" | tail -40
log "done"
rm -rf "$work"
