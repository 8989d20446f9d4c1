#!/usr/bin/env bash
# The one script to run on a borrowed GPU machine: GPU tests, then the GPU benchmark against the
# 2-core CPU baseline. Everything it writes goes to $OUT.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh          # from anywhere; it cd's to the repository
#
# Expects Python 3 with numpy, scipy, numba, cupy (and pytest, matplotlib); no internet, no Scipion.
# mrcfile (the engine's MRC reader) comes from a git-ignored wheels/ folder at the repository root,
# prepared beforehand on a machine with internet access:
#
#   pip download mrcfile==1.4.3 --only-binary=:all: --python-version 3.12 --no-deps -d wheels/
#
# (wheels/ is ignored by git, so a copy of the working tree must be told to carry it, e.g. the
# device tool's carry: ["wheels"].) The engine is used in place (PYTHONPATH=repository root).
#
# Steps, each under its own `timeout` and all within about 8 minutes (GPU_CHECK_SECONDS, default
# 470): machine and versions (nvidia-smi, python, numpy/scipy/numba/cupy); mrcfile from wheels/;
# `pytest -m gpu` on those of tests/test_gpu.py, test_gpu_route.py, test_gpu_kernels.py that exist
# (junit xml and log in $OUT); `bench_gpu.py --device gpu` with --compare
# benchmarks/results/cpu_2core.json when that baseline exists (output in $OUT/bench_gpu.txt,
# figures in $OUT/gpu.json, rewritten after every stage). A failed step does not stop the others;
# the exit status is 1 when any step failed (see $OUT/gpu_check_summary.txt), 2 without $OUT.

set -u -o pipefail

if [ -z "${OUT:-}" ]; then
    echo "gpu_check.sh: set OUT to the folder for the logs and results (OUT=/path bash $0)" >&2
    exit 2
fi
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
PY=${PYTHON:-python}
export REPO PY
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_ENABLE_CUDASIM=0   # the real GPU, never numba's CUDA simulator
export PYTHONDONTWRITEBYTECODE=1
TOTAL=${GPU_CHECK_SECONDS:-470}
START=$(date +%s)
SUMMARY="$OUT/gpu_check_summary.txt"
: > "$SUMMARY"
FAILED=0

# step NAME MAX_SECONDS LOG COMMAND...: run COMMAND under `timeout` (at most MAX_SECONDS, and no
# later than the overall deadline), its output shown and appended to LOG; record rc and duration.
step() {
    local name=$1 max=$2 log=$3
    shift 3
    local left=$((TOTAL - ($(date +%s) - START)))
    local limit=$((max < left ? max : left))
    if [ "$limit" -lt 10 ]; then
        echo "== $name: SKIPPED (overall time limit of $TOTAL s reached)" | tee -a "$SUMMARY"
        FAILED=1
        return
    fi
    echo "== $name (limit ${limit} s)"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    local dt=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        echo "== $name: ok (${dt} s)" | tee -a "$SUMMARY"
    else
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && rc="$rc (timed out after ${limit} s)"
        echo "== $name: FAILED, rc $rc (${dt} s)" | tee -a "$SUMMARY"
        FAILED=1
    fi
}

versions() {
    echo "date: $(date -Is)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "host: $(hostname), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    "$PY" - <<'EOF'
import platform
print("python", platform.python_version())
for name in ("numpy", "scipy", "numba", "cupy", "pytest", "matplotlib", "mrcfile"):
    try:
        mod = __import__(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
try:
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    for i in range(n):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        print(f"cuda device {i}: {p['name'].decode()}, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
              f"compute {p['major']}.{p['minor']}")
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
except Exception as exc:  # noqa: BLE001
    print(f"cupy sees no GPU: {type(exc).__name__}: {exc}")
    raise SystemExit(1)
EOF
}

# mrcfile: already importable, else pip from wheels/ (retrying where pip refuses to touch a
# system Python, PEP 668), else the pure-Python wheel itself on PYTHONPATH (zip import).
install_mrcfile() {
    if "$PY" -c "import mrcfile" 2>/dev/null; then
        echo "mrcfile already importable"
        return 0
    fi
    if ! ls wheels/mrcfile-*.whl >/dev/null 2>&1; then
        echo "no wheels/mrcfile-*.whl: prepare it with" \
             "pip download mrcfile==1.4.3 --only-binary=:all: --python-version 3.12 --no-deps -d wheels/"
        return 1
    fi
    "$PY" -m pip install --no-index --find-links wheels/ mrcfile \
        || "$PY" -m pip install --no-index --find-links wheels/ --break-system-packages mrcfile \
        || "$PY" -m pip install --no-index --find-links wheels/ --user mrcfile \
        || true
    "$PY" -c "import mrcfile; print('mrcfile', mrcfile.__version__, 'from', mrcfile.__file__)"
}

export -f versions install_mrcfile   # run by `timeout` through bash -c
step "nvidia-smi" 20 "$OUT/machine.txt" nvidia-smi
step "versions" 60 "$OUT/machine.txt" bash -c versions
step "mrcfile from wheels/" 60 "$OUT/machine.txt" bash -c install_mrcfile
if ! "$PY" -c "import mrcfile" 2>/dev/null; then
    WHEEL=$(ls wheels/mrcfile-*.whl 2>/dev/null | head -1)
    if [ -n "$WHEEL" ]; then
        export PYTHONPATH="$PYTHONPATH:$REPO/$WHEEL"
        echo "mrcfile: importing the wheel itself ($WHEEL on PYTHONPATH)" | tee -a "$SUMMARY"
    fi
fi

TESTS=()
for t in nonuniform/tests/test_gpu.py nonuniform/tests/test_gpu_route.py nonuniform/tests/test_gpu_kernels.py; do
    if [ -f "$t" ]; then TESTS+=("$t"); else echo "(no $t in this tree)" | tee -a "$SUMMARY"; fi
done
if [ "${#TESTS[@]}" -gt 0 ]; then
    step "pytest -m gpu (${#TESTS[@]} files)" 180 "$OUT/pytest_gpu.log" \
        "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs --durations=15 --junitxml="$OUT/pytest_gpu.xml" \
        "${TESTS[@]}"
else
    echo "== pytest -m gpu: FAILED, none of the GPU test files exists" | tee -a "$SUMMARY"
    FAILED=1
fi

BASELINE=benchmarks/results/cpu_2core.json
COMPARE=()
if [ -f "$BASELINE" ]; then
    COMPARE=(--compare "$BASELINE")
    cp "$BASELINE" "$OUT/cpu_2core.json"
else
    echo "(no $BASELINE: GPU figures without CPU ratios)" | tee -a "$SUMMARY"
fi
# The benchmark gets what is left (at most 300 s); stages that would start in its last 90 s are
# skipped and reported rather than cut off (its JSON keeps what was measured either way).
LEFT=$((TOTAL - ($(date +%s) - START)))
BENCH_S=$((LEFT < 300 ? LEFT : 300))
BUDGET=$((BENCH_S - 90 > 30 ? BENCH_S - 90 : 30))
step "bench_gpu.py --device gpu" "$BENCH_S" "$OUT/bench_gpu.txt" \
    "$PY" benchmarks/bench_gpu.py --device gpu --gpu-id 0 --json "$OUT/gpu.json" \
    ${COMPARE[@]+"${COMPARE[@]}"} --budget-s "$BUDGET"

echo "== total $(($(date +%s) - START)) s" | tee -a "$SUMMARY"
cat "$SUMMARY"
exit "$FAILED"
