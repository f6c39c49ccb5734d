#!/usr/bin/env bash
# Every GPU measurement of issue 5 (performance) in one command, sized for ONE H200 and a 15-minute device budget
# (about 6 minutes of work expected, each step under a hard time limit; a step that fails or times out does not
# stop the others). Each step writes its table to $OUT/<step>.txt:
#
#   estimator.txt  benchmarks/bench_estimator.py --device cuda: CIFAR ResNet18, B=128, n=10 (and 2, 1) in float32,
#                  TF32, TF32 + channels_last (fast=True): ours vs the published loop vs the limit; the GPU
#                  target (float32 ours/limit >= 0.95); the bf16 training step for scale
#   fidelity.txt   benchmarks/bench_fidelity.py --device cuda --model resnet18: the cost-fidelity frontier with TF32
#                  rows (per-value error, Spearman, AUROC), first SAMPLES_FID offline CIFAR-10 images
#   layout.txt     benchmarks/bench_layout.py --device cuda: does channels_last pay, per model (fast=True)
#   overhead.txt   benchmarks/bench_overhead.py --setup cifar10 --device cuda: training with and without the
#                  callback side by side (paper setting, fast=True, fewer vectors, published loop, the limit)
#
# On the lent H200 (python3 there has torch, lightning, torchvision, numpy, scikit-learn; hydra and wandb are not
# needed), from this machine:
#   mkdir -p .gpu_data && cp -r ../shared/data/cifar10 .gpu_data/ && echo /.gpu_data/ >> .git/info/exclude
#   device run, carry [".gpu_data"], timeout_s 540:
#     PY=python3 PYTHONPATH=. CURVATURE_CIFAR10_OFFLINE=.gpu_data/cifar10 bash benchmarks/gpu_issue5.sh
# A CPU check of the script itself (tiny sizes, minutes): SMOKE=1 bash benchmarks/gpu_issue5.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-outputs/gpu_issue5}
SMOKE=${SMOKE:-0}
export PYTHONUNBUFFERED=1 CURVATURE_DATA_CACHE=${CURVATURE_DATA_CACHE:-/tmp/curvature_data_cache}
mkdir -p "$OUT"

if [ "$SMOKE" = 1 ]; then
  DEV=cpu
  SCALE=6  # the limits are sized for the GPU's budget; a CPU smoke run checks code paths, on a machine maybe busy
  EST=(--device cpu --channels-last --repeats 1 --warmup 0)
  FID=(--device cpu --model small_cnn --samples 64 --epochs 2 --n-vectors 2)
  OVH=(--setup cifar10 --device cpu --samples 64 --epochs 1 --rows paper,n1_fast,published)
  LAY=(--device cpu --repeats 1 --n-vectors 2)
else
  DEV=cuda
  SCALE=1
  EST=(--device cuda --repeats 10 --warmup 3)
  # ResNet18 on 5,000 images without augmentation memorizes its 10 % flipped labels within these epochs
  FID=(--device cuda --model resnet18 --samples "${SAMPLES_FID:-5000}" --epochs "${EPOCHS_FID:-15}" --lr 0.05
       --tf32-every 3)
  OVH=(--setup cifar10 --device cuda --samples "${SAMPLES_OVH:-5000}" --epochs "${EPOCHS_OVH:-4}")
  LAY=(--device cuda --repeats 5)
fi

step() {  # step NAME SECONDS COMMAND...: run under a time limit, keep its output, go on whatever happens
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  echo "## $name (limit ${limit} s): $*" >"$OUT/$name.txt"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$OUT/$name.txt" 2>&1
  echo "## $name: exit $? after $((SECONDS - start)) s" >>"$OUT/$name.txt"
  grep -v "rank\|Tip:\|deprecated\|UserWarning\|warnings.warn\|available: \|Trainer.fit\|across ranks" \
    "$OUT/$name.txt" | tail -45
}

{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"
if [ "$DEV" = cuda ] && ! "$PY" -c "import torch; assert torch.cuda.is_available()"; then
  echo "no CUDA device: this script measures a GPU (SMOKE=1 checks it on the CPU)" >&2
  exit 2
fi

step estimator 120 "$PY" benchmarks/bench_estimator.py "${EST[@]}"
step layout 60 "$PY" benchmarks/bench_layout.py "${LAY[@]}"
step fidelity 240 "$PY" benchmarks/bench_fidelity.py "${FID[@]}"
step overhead 200 "$PY" benchmarks/bench_overhead.py "${OVH[@]}"
