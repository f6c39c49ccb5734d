#!/usr/bin/env bash
# The decision study's missing settings (benchmarks/miniature_study.py --decide, issue 18) in ONE GPU session: the
# grid {cifar10, fashion_mnist} x {symmetric, confusion} x {2, 5, 10, 20 %} x seeds {0, 1} of the memorizing family,
# every setting whose file benchmarks/data/miniature lacks, as parallel processes (one thread each) on one GPU, each
# under its own timeout so that the whole script ends by DEADLINE_S; every finished file and every log is packed into
# ONE archive, $OUT/decision_results.tar.gz, and one line per setting says done / timed out / failed.
#
#   OUT=/tmp/out bash benchmarks/gpu_decision_study.sh             # on the GPU machine (python3 = its torch)
#   ACCEL=cpu PY=.venv/bin/python OUT=/tmp/gpu_out DATASETS=fashion_mnist KINDS=symmetric NOISES=0.1 SEEDS=0 \
#     EXTRA_ARGS="--samples 300 --epochs 4 --test-samples 500 --cv-epochs 2" bash benchmarks/gpu_decision_study.sh
#
# Self-contained on a machine without internet or our package installed: the datasets come from .devdata/
# (fashion-mnist/: the idx .gz files; cifar10/: the offline JPEG copy), cleanlab (and termcolor) from the wheels in
# .whl/, installed into $SITE; PYTHONPATH makes the repository's curvature_callback importable. Both folders are
# git-ignored copies (.git/info/exclude), carried to the machine beside the working tree.
#
# The offline CIFAR-10 copy is unpacked (and its test split decoded and cached) ONCE, into $WORK/cache, while the
# Fashion-MNIST settings start; the CIFAR-10 settings start after it, each then decoding its 2,000 training JPEGs
# from the unpacked files (no process writes the cache).
#
# Settings: ACCEL (cuda; cpu to try the script here), PY (python3), OUT (required), DEADLINE_S (480: seconds from the
# start by which every setting has ended, PACK_S of them kept for packing), JOBS (settings at once; default all),
# DATASETS, KINDS, NOISES, SEEDS (the grid), EXTRA_ARGS (passed to every setting), SAVED (the saved settings'
# folder), WORK (scratch), SITE (where the wheels go), FMNIST_ROOT and CIFAR10_ROOT (default: in .devdata/).
set -uo pipefail
T0=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

PY=${PY:-python3}
ACCEL=${ACCEL:-cuda}
OUT=${OUT:?set OUT to the folder that comes back}
DEADLINE_S=${DEADLINE_S:-480}
PACK_S=${PACK_S:-20}
JOBS=${JOBS:-64}
DATASETS=${DATASETS:-"cifar10 fashion_mnist"}
KINDS=${KINDS:-"symmetric confusion"}
NOISES=${NOISES:-"0.02 0.05 0.1 0.2"}
SEEDS=${SEEDS:-"0 1"}
EXTRA_ARGS=${EXTRA_ARGS:-}
SAVED=${SAVED:-$REPO/benchmarks/data/miniature}
WORK=${WORK:-$(mktemp -d /tmp/decision.XXXXXX)}
SITE=${SITE:-$WORK/site}
DEVDATA=$REPO/.devdata

elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((DEADLINE_S - PACK_S - $(elapsed))); }
say() { echo "[$(elapsed) s] $*"; }
mkdir -p "$OUT" "$WORK"/{logs,results,status,cache}
: >"$WORK/logs/summary.txt"

pack() {  # every finished npz and every log, in one archive
    tar czf "$OUT/decision_results.tar.gz" -C "$WORK" results logs
    say "packed $(find "$WORK/results" -name '*.npz' | wc -l) npz and $(find "$WORK/logs" -type f | wc -l) logs into" \
        "$OUT/decision_results.tar.gz ($(du -k "$OUT/decision_results.tar.gz" | cut -f1) KiB)"
}
fail() {
    echo "ABORT: $*" | tee -a "$WORK/logs/summary.txt"
    pack
    exit 2
}

# ------------------------------------------------------------------------------------- cleanlab, our package
if ls .whl/*.whl >/dev/null 2>&1; then
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        >"$WORK/logs/pip.log" 2>&1; then
        # no pip: the wheels are pure Python, a wheel unpacked into a folder on the path is installed
        for w in .whl/*.whl; do "$PY" -m zipfile -e "$w" "$SITE" || fail "could not unpack $w (see logs/pip.log)"; done
    fi
fi
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export CURVATURE_CIFAR10_OFFLINE=${CIFAR10_ROOT:-$DEVDATA/cifar10} CURVATURE_DATA_CACHE=$WORK/cache
FMNIST=${FMNIST_ROOT:-$DEVDATA/fashion-mnist}

# ------------------------------------------------------------------------------------------------- smoke check
say "smoke check (ACCEL=$ACCEL, PY=$PY)"
ACCEL=$ACCEL timeout 90 "$PY" - >"$WORK/logs/smoke.log" 2>&1 <<'PYEOF'
import os, sys, time
t = time.perf_counter()
import torch, lightning, cleanlab, cleanlab.count, cleanlab.filter, cleanlab.rank
import curvature_callback
from curvature_callback import CurvatureCallback
from curvature_callback.analysis import class_evidence, find_label_issues
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, lightning {lightning.__version__}, cleanlab "
      f"{cleanlab.__version__} from {os.path.dirname(cleanlab.__file__)}, curvature_callback from "
      f"{os.path.dirname(curvature_callback.__file__)}; imports {time.perf_counter() - t:.1f} s")
cuda = torch.cuda.is_available()
print(f"torch.cuda.is_available() = {cuda}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))
if os.environ["ACCEL"] == "cuda":
    if not cuda:
        sys.exit("torch.cuda.is_available() is False")
    print("a CUDA kernel:", float(torch.ones(4, device="cuda").sum()))
PYEOF
rc=$?
cat "$WORK/logs/smoke.log"
[ $rc -eq 0 ] || fail "smoke check failed (exit $rc): $(tail -n 1 "$WORK/logs/smoke.log")"
if [ "$ACCEL" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader \
        >"$WORK/logs/nvidia_smi.txt" 2>&1 || fail "nvidia-smi failed: $(tail -n 1 "$WORK/logs/nvidia_smi.txt")"
    say "GPU: $(cat "$WORK/logs/nvidia_smi.txt")"
fi
need=()
case " $DATASETS " in *" fashion_mnist "*) need+=("$FMNIST"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz) ;; esac
C10=$CURVATURE_CIFAR10_OFFLINE
case " $DATASETS " in *" cifar10 "*) need+=("$C10"/{cifar10-jpeg.tar.gz,train_labels.npy,test_labels.npy}) ;; esac
for f in ${need[@]+"${need[@]}"}; do
    [ -f "$f" ] || fail "missing $f: copy the datasets into .devdata/ and carry it"
done
say "smoke check passed; $(nproc) cores, $(free -g | awk '/Mem/ {print $2 " GiB"}') memory"

# ---------------------------------------------------------------------------------------------- the settings
# Seed-major: the first seed's grid first. All start at once, but past the first NICE_AFTER (the cores) at nice 19:
# they take the CPU the others leave (waiting on the GPU), so that if everything is slower than hoped the first
# NICE_AFTER still finish rather than all of them timing out together.
NICE_AFTER=${NICE_AFTER:-$(nproc)}
todo=()
for seed in $SEEDS; do for ds in $DATASETS; do for kind in $KINDS; do for noise in $NOISES; do
    tag=$([ "$kind" = symmetric ] || echo "_$kind")
    name=${ds}_p${noise}_s${seed}${tag}_mem_dec
    if [ -f "$SAVED/$name.npz" ]; then
        echo "$name: saved already, skipped" >>"$WORK/logs/summary.txt"
    else
        todo+=("$ds $kind $noise $seed $name $([ ${#todo[@]} -lt "$NICE_AFTER" ] && echo 0 || echo 19)")
    fi
done; done; done; done
say "${#todo[@]} settings to run, $(grep -c skipped "$WORK/logs/summary.txt") saved already"

LAUNCHED=0
running() { echo $((LAUNCHED - $(ls "$WORK/status" | wc -l))); }  # a setting writes its status when it ends
launch() {  # dataset kind noise seed name niceness
    local t
    t=$(left)
    if [ "$t" -lt 30 ]; then
        LAUNCHED=$((LAUNCHED + 1))
        echo "124 0 0 not started" >"$WORK/status/$5"
        return
    fi
    while [ "$(running)" -ge "$JOBS" ]; do sleep 1; done
    t=$(left)
    LAUNCHED=$((LAUNCHED + 1))
    (
        s=$(date +%s)
        # shellcheck disable=SC2086
        timeout -k 5 "$t" nice -n "$6" "$PY" benchmarks/miniature_study.py --dataset "$1" --noise-kind "$2" \
            --noise "$3" --seeds "$4" --family memorize --decide --cv --accelerator "$ACCEL" --threads 1 \
            --fmnist-root "$FMNIST" --out "$WORK/results" $EXTRA_ARGS >"$WORK/logs/$5.log" 2>&1
        echo "$? $(($(date +%s) - s)) $t" >"$WORK/status/$5"
    ) &
}

# GPU and host load every 15 s, for the record
(
    while sleep 15; do
        g=$([ "$ACCEL" = cuda ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>&1)
        echo "$(elapsed) s: load $(cut -d' ' -f1 /proc/loadavg), free $(free -g | awk '/Mem/ {print $7}') GiB; GPU $g"
    done
) >"$WORK/logs/load.log" 2>&1 &
SAMPLER=$!

cifar=() other=()
for row in ${todo[@]+"${todo[@]}"}; do
    case $row in cifar10*) cifar+=("$row") ;; *) other+=("$row") ;; esac
done
PREP=
if [ ${#cifar[@]} -gt 0 ]; then  # unpack the JPEGs and cache the test split once, while the others start
    timeout "$(left)" "$PY" - >"$WORK/logs/cifar10_prep.log" 2>&1 <<'PYEOF' &
import time
from pathlib import Path
from curvature_callback.experiments.data.cifar10_offline import (CIFAR10_TARBALL, cifar10_offline_arrays,
                                                                  cifar10_offline_root, data_cache_dir, unpack)
t = time.perf_counter()
unpack(cifar10_offline_root() / CIFAR10_TARBALL, data_cache_dir(None))
print(f"unpacked in {time.perf_counter() - t:.1f} s")
images, _ = cifar10_offline_arrays(None, "test")
print(f"test split {images.shape} decoded and cached; {time.perf_counter() - t:.1f} s in all")
PYEOF
    PREP=$!
fi
for row in ${other[@]+"${other[@]}"}; do launch $row; done
if [ -n "$PREP" ]; then
    wait "$PREP"
    rc=$?
    say "CIFAR-10 prepared (exit $rc): $(tail -n 1 "$WORK/logs/cifar10_prep.log")"
    [ $rc -eq 0 ] || echo "CIFAR-10 preparation failed (exit $rc); its settings may each decode on their own" \
        >>"$WORK/logs/summary.txt"
fi
for row in ${cifar[@]+"${cifar[@]}"}; do launch $row; done
say "launched; waiting (at most $(left) s)"
while [ "$(ls "$WORK/status" | wc -l)" -lt ${#todo[@]} ] && [ "$(left)" -gt -15 ]; do sleep 2; done
kill "$SAMPLER" 2>/dev/null

# -------------------------------------------------------------------------------------------------- summary
for row in ${todo[@]+"${todo[@]}"}; do
    read -r _ _ _ _ name niceness <<<"$row"
    log=$WORK/logs/$name.log
    if [ ! -f "$WORK/status/$name" ]; then
        echo "$name: still running at the deadline" >>"$WORK/logs/summary.txt"
        continue
    fi
    read -r rc secs limit note <"$WORK/status/$name"
    if [ -n "${note:-}" ]; then
        line="$name: not started (under 30 s left before the deadline)"
    elif [ "$rc" = 0 ] && [ -f "$WORK/results/$name.npz" ]; then
        line="$name: done in $secs s (nice $niceness; $(tail -n 1 "$log" | sed 's/, signals.*//' | cut -c1-150))"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        last=$(grep -v SIGTERM "$log" 2>/dev/null | tail -n 1 | cut -c1-150)
        line="$name: timed out after $secs s (limit ${limit:-?} s, nice $niceness); last line: $last"
    else
        err=$(grep -E "Error|Exception|error:" "$log" 2>/dev/null | tail -n 1)
        line="$name: failed (exit $rc) after $secs s: ${err:-$(tail -n 1 "$log" 2>/dev/null)}"
    fi
    echo "$line" >>"$WORK/logs/summary.txt"
done
cat "$WORK/logs/summary.txt"
echo "done $(find "$WORK/results" -name '*.npz' | wc -l) of ${#todo[@]}; last load samples:" \
    "$(tail -n 2 "$WORK/logs/load.log" | tr '\n' ' ')"
pack
