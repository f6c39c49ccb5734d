#!/bin/bash
# Issue 24 item 1: the 48-setting decision grid again, our answer from the store's early-window class evidence
# (CurvatureCallback's default evidence_window), on the CPU. Cleanlab's side of each setting (its 3-fold CV models,
# issues and estimate) is the saved one of benchmarks/data/miniature/*_mem_dec.npz, reused through --cleanlab-from
# after checking that the given labels are the same; our run is trained again (the same recipe and seed). The forward
# pass gives the eval-mode loss the decision reads (no curvature: not read by the decision). Four clean runs (0 %,
# the 10 planted copies only) train cleanlab's CV models too. No payoff retraining (--no-payoff).
#   bash benchmarks/decision_grid_early.sh                 # about 1 hour on 2 cores; JOBS=1 for one process
#   python benchmarks/miniature_study.py --tables --out benchmarks/data/decision_early
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CURVATURE_CIFAR10_OFFLINE:?set it to the folder of the offline CIFAR-10 copy}"
OUT=${OUT:-benchmarks/data/decision_early}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
{
  for dataset in cifar10 fashion_mnist; do
    for seed in 0 1; do
      echo "--dataset $dataset --noise 0 --seeds $seed --cv"
      for kind in symmetric confusion model; do
        for noise in 0.02 0.05 0.1 0.2; do
          echo "--dataset $dataset --noise-kind $kind --noise $noise --seeds $seed --cleanlab-from benchmarks/data/miniature"
        done
      done
    done
  done
} | xargs -P "$JOBS" -I{} sh -c "$PY benchmarks/miniature_study.py --family memorize --decide --no-payoff \
    --pass-kind forward --out $OUT {} > ${LOGDIR:-/tmp}/decision_early.\$(echo '{}' | tr -c 'a-z0-9.' '_') 2>&1 && echo done: {}"
