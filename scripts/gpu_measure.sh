#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one run (about 6 minutes on one H200):
#   1. paper-scale 256x256 collaborative sampling (2 x 403.6M experts + 2 x 13.1M diffusers, DDIM 50) at batch
#      1, 16 and 32, and a training step of every stage at batch 8: the fast path (bf16, fused attention,
#      channels_last, CUDA streams) against the reference path in the same process, with agreement checks,
#      and a torch.profiler profile of the fast path at batch 16 (top operations; the kernels' share of a step);
#   2. FaceWorld evaluation with the shipped models on 200 held-out pairs, fp32 and bf16, compared;
#   3. the fp32 evaluation sharded over 2 processes (torchrun) on the same device, compared sample by sample
#      with the single-process run;
#   4. the sampling of 1. at batch 1 and 16 with autocast casting the weights at every call (--no-held-weights),
#      against 1.'s default of holding them in bf16 while sampling;
#   5. the FaceWorld networks (checkpoints/faceworld/codiff.yaml, random weights): a training step of every stage
#      at batch 32 and 128 and a sampling step at batch 50, i.e. what the FaceWorld recipe, or a longer one, costs
#      on a GPU;
#   6. the sampling of 1. at batch 16 with torch.compile (fast path only; compiled in the warm-up; capped at
#      COMPILE_TIMEOUT=200 s).
# A failing step is reported and the others still run; each step's output is in OUT_DIR/<step>.log.
#
#   bash scripts/gpu_measure.sh                                   # one GPU: the measurement
#   DEVICE=cpu SIZE=tiny bash scripts/gpu_measure.sh              # the same steps at tiny size on a CPU (~3 min)
#   OUT_DIR=outputs/gpu_h200 DATA=/data/faceworld bash scripts/gpu_measure.sh
#
# DATA is a FaceWorld (python scripts/make_faceworld.py --out DATA --num 10000 --seed 0 is the shipped one; only
# its first 200 test pairs are read). Summaries: OUT_DIR/bench.json, profile_fast_b16.txt, bench_cast_per_call.json,
# bench_faceworld.json, bench_compile.json, compare_bf16.json,
# compare_sharded.json, and every evaluation's results.md.
set -uo pipefail
OUT_DIR=${OUT_DIR:-outputs/gpu_measure}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
DATA=${DATA:-outputs/faceworld_train/faceworld}
PY=${PY:-python3}
export LDM_PROGRESS=0 PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"

if [ "$SIZE" = tiny ]; then
    CONFIG=configs/tiny/codiff.yaml; BATCHES="1 2"; PROFILE_BATCH=2; FW_TRAIN="2"; FW_SAMPLE=2; TRAIN_BATCH=2; STEPS=4; NUM=8; EVAL_BATCH=4; EVAL_STEPS=5
else
    CONFIG=configs/256_codiff_mask_text.yaml; BATCHES="1 16 32"; PROFILE_BATCH=16; FW_TRAIN="32 128"; FW_SAMPLE=50; TRAIN_BATCH=8; STEPS=50; NUM=200; EVAL_BATCH=50; EVAL_STEPS=50
fi
EVAL="scripts/evaluate.py --config checkpoints/faceworld/codiff.yaml --ckpt checkpoints/faceworld/codiff.safetensors
      --data $DATA --num-pairs $NUM --batch-size $EVAL_BATCH --seed 0 --steps $EVAL_STEPS --device $DEVICE"
FAILED=()

step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.log, time it, note a failure
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT_DIR/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -eq 0 ] || FAILED+=("$name")
}

{
    date -u; uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

step bench $PY scripts/benchmark.py --config $CONFIG --device $DEVICE --batch-sizes $BATCHES --steps $STEPS \
    --precision bf16 --channels-last --reference --train --train-batch-sizes $TRAIN_BATCH --peak-tflops 790 \
    --profile-batch $PROFILE_BATCH --profile-out "$OUT_DIR/profile_fast_b$PROFILE_BATCH.txt" --json "$OUT_DIR/bench.json"
step eval_fp32 $PY $EVAL --out "$OUT_DIR/eval_fp32"
step eval_bf16 $PY $EVAL --precision bf16 --out "$OUT_DIR/eval_bf16"
step compare_bf16 $PY scripts/compare_evaluations.py "$OUT_DIR/eval_fp32" "$OUT_DIR/eval_bf16" --json "$OUT_DIR/compare_bf16.json"
rm -rf "$OUT_DIR/eval_sharded"
step eval_sharded $PY -m torch.distributed.run --standalone --nproc-per-node 2 $EVAL --out "$OUT_DIR/eval_sharded"
step compare_sharded $PY scripts/compare_evaluations.py "$OUT_DIR/eval_fp32" "$OUT_DIR/eval_sharded" --exact 1e-4 \
    --json "$OUT_DIR/compare_sharded.json"
step bench_cast_per_call $PY scripts/benchmark.py --config $CONFIG --device $DEVICE --batch-sizes ${BATCHES% *} \
    --steps $STEPS --precision bf16 --channels-last --no-held-weights --no-flops --json "$OUT_DIR/bench_cast_per_call.json"
step bench_faceworld $PY scripts/benchmark.py --config checkpoints/faceworld/codiff.yaml --device $DEVICE \
    --batch-sizes $FW_SAMPLE --steps 20 --train --train-batch-sizes $FW_TRAIN --train-steps 5 --json "$OUT_DIR/bench_faceworld.json"
# last, and capped: compilation time is what varies most between machines
step bench_compile timeout ${COMPILE_TIMEOUT:-200} $PY scripts/benchmark.py --config $CONFIG --device $DEVICE \
    --batch-sizes 16 --steps $STEPS --precision bf16 --channels-last --compile --no-flops --json "$OUT_DIR/bench_compile.json"

if [ ${#FAILED[@]} -eq 0 ]; then echo "gpu_measure: every step ran (OUT_DIR=$OUT_DIR)"; exit 0; fi
echo "gpu_measure: failed steps: ${FAILED[*]} (logs in $OUT_DIR)"; exit 1
