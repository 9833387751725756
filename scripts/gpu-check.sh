#!/usr/bin/env bash
# Check a GPU machine before a show (or a fresh GPU box with nothing but torch on it), in one go,
# in under 8 minutes:
#
#   1. wheels   install .whl/*.whl (scripts/gpu-wheels.sh fetches them) into $GPU_CHECK_SITE
#   2. machine  nvidia-smi, Python, torch/CUDA and package versions
#   3. tests    the CUDA tests (pytest -m cuda; on the CPU: tests/accel/test_gpu.py)
#   4. doctor   streambridge doctor --gpu --arch sd-turbo --seconds 20 (the daemon path, PASS/FAIL)
#   5. bench    bench/gpu.py with a time budget (fps per backend, ratios, start-up, pacing, targets)
#
# Every step has its own timeout and its own log; every log and JSON lands in $OUT (default ./out).
# A failing step does not stop the later ones; the exit code is non-zero if any step failed.
#
#   scripts/gpu-check.sh                                      # on the GPU machine, from the repo root
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 scripts/gpu-check.sh   # the same steps, tiny and fast, on a CPU
#
# Knobs: OUT, PYTHON (default python3), GPU_CHECK_SITE (default /tmp/site), GPU_CHECK_ARCH
# (default sd-turbo), GPU_CHECK_SECONDS (default 20), GPU_CHECK_ACCEL (default: the daemon's),
# GPU_CHECK_VARIANTS (bench variants), GPU_CHECK_BENCH_ARGS (more bench arguments),
# GPU_CHECK_TESTS (pytest targets instead of the CUDA tests), GPU_CHECK_PYTEST_ARGS (more pytest
# arguments, e.g. -k), GPU_CHECK_STEPS (which of tests, doctor, controlnet, temporal, bench, flood to
# run; default tests doctor bench), GPU_CHECK_TESTS_S (the CUDA tests' limit, default 220),
# GPU_CHECK_CN_S / GPU_CHECK_TEMPORAL_S (budgets of the ControlNet and temporal benchmarks, run after
# the bench, default 120 / 90), GPU_CHECK_TEMPORAL_SCENARIOS / GPU_CHECK_TEMPORAL_VARIANTS (subsets,
# e.g. "sd15-lcm-4step" and "off;graphs: off;graphs: cache 2"), GPU_CHECK_BENCH_S (at most this for the bench), GPU_CHECK_TOTAL_S
# (default 460: the bench gets what is left, so that the whole ends within 8 minutes),
# GPU_CHECK_FLOOD_S (the flood step's budget, default 150), GPU_CHECK_FLOOD_ARGS (more bench/flood.py
# arguments), GPU_CHECK_FLOOD_RECEIVERS (e.g. "thread process": the flood step once per OSC
# receiver, logs and JSON named flood-VALUE.log / flood-VALUE.json).
#
#   6. controlnet  bench/gpu.py --controlnet: SD1.5 + one ControlNet, 1 and 4 steps (when asked for)
#   7. temporal    bench/gpu.py --temporal: cached attention / injection / feedback on SD1.5 (when asked for)
#   8. flood       bench/flood.py: what OSC traffic costs the render loop, sd-turbo with torch.compile,
#                  the bench and its flooders pinned to CPUs 0,1 like a small show PC (when asked for)
set -u
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
QUICK="${GPU_CHECK_QUICK:-0}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-460}"
STEPS=" ${GPU_CHECK_STEPS:-tests doctor bench} "
START=$(date +%s)
FAILED=()
wanted() { [[ "$STEPS" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

# step NAME SECONDS CMD...: run with a timeout (never past the whole check's time), log to
# $OUT/NAME.log (and the tail to stdout)
step() {
  local name=$1 limit=$2 rc t0 left
  shift 2
  t0=$(date +%s)
  left=$(( TOTAL_S - (t0 - START) ))
  if [ "$left" -lt "$limit" ]; then limit=$(( left > 10 ? left : 10 )); fi
  echo "=== $name (limit ${limit} s): $*"
  timeout --signal=TERM --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  tail -n 40 "$OUT/$name.log"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "=== $name: TIMED OUT after ${limit} s (rc $rc)"
  fi
  echo "=== $name: rc $rc in $(( $(date +%s) - t0 )) s"
  if [ "$rc" -ne 0 ]; then FAILED+=("$name (rc $rc)"); fi
  return 0
}

# 1. wheels (only where a .whl/ folder came along; a CPU box uses its own environment and only
#    checks the set, since the wheels are for CPython 3.12 on the GPU machine)
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  if [ "$DEVICE" = "cpu" ] && [ "${GPU_CHECK_WHEELS:-0}" != "1" ]; then
    step wheels 60 "$PY" scripts/check_wheels.py .whl --present scripts/gpu-image-packages.txt
  else
    step wheels 90 bash -c '"$0" scripts/check_wheels.py .whl --present scripts/gpu-image-packages.txt &&
      "$0" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" .whl/*.whl' \
      "$PY" "$SITE"
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  echo "=== wheels: no .whl/ folder (scripts/gpu-wheels.sh makes one); using the environment as it is"
fi
export PYTHONPATH="${PYTHONPATH:-$ROOT}"
case ":$PYTHONPATH:" in *":$ROOT:"*) ;; *) export PYTHONPATH="$PYTHONPATH:$ROOT" ;; esac

# 2. machine
machine() {
  date -u
  uname -a
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  "$PY" - <<'PYEOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu {i}: {p.name}, compute {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
              f"{p.multi_processor_count} SMs")
else:
    print("torch sees no CUDA GPU")
for d in ("diffusers", "transformers", "pydantic", "pydantic-core", "python-osc", "zeroconf", "onnx",
          "onnxruntime", "triton", "tensorrt", "numpy", "opencv-python-headless", "pytest"):
    try:
        print(f"{d} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"{d} MISSING")
PYEOF
}
export -f machine
export PY
step machine 60 bash -c machine

# 3. tests
if ! wanted tests; then
  echo "=== tests: not asked for (GPU_CHECK_STEPS)"
elif [ -n "${GPU_CHECK_TESTS:-}" ]; then
  # shellcheck disable=SC2086  # a list of pytest targets
  step tests "${GPU_CHECK_TESTS_S:-240}" "$PY" -m pytest -q -p no:cacheprovider ${GPU_CHECK_TESTS} ${GPU_CHECK_PYTEST_ARGS:-} --junitxml "$OUT/tests.xml"
elif [ "$DEVICE" = "cpu" ]; then
  step tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/accel/test_gpu.py --junitxml "$OUT/tests.xml"
else
  # shellcheck disable=SC2086  # extra pytest arguments, split on spaces
  step tests "${GPU_CHECK_TESTS_S:-220}" "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda tests \
    ${GPU_CHECK_PYTEST_ARGS:-} --junitxml "$OUT/tests.xml"
fi

# 4. the self-test: the daemon path end to end
ACCEL_ARGS=()
if [ -n "${GPU_CHECK_ACCEL:-}" ]; then ACCEL_ARGS=(--acceleration "$GPU_CHECK_ACCEL"); fi
if ! wanted doctor; then
  echo "=== doctor: not asked for (GPU_CHECK_STEPS)"
elif [ "$QUICK" = "1" ]; then
  step doctor 180 "$PY" -m bridge doctor --gpu --arch tiny --device "$DEVICE" --seconds "${GPU_CHECK_SECONDS:-4}" \
    --json "$OUT/doctor.json" "${ACCEL_ARGS[@]}"
else
  step doctor 200 "$PY" -m bridge doctor --gpu --arch "${GPU_CHECK_ARCH:-sd-turbo}" --device "$DEVICE" \
    --seconds "${GPU_CHECK_SECONDS:-20}" --json "$OUT/doctor.json" "${ACCEL_ARGS[@]}"
fi

# 5. the benchmark, with what is left of the time
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
# the bench stops itself at its budget (and writes what it has); its timeout is a backstop 20 s later
LEFT=$(( LEFT - 25 ))
# the ControlNet and temporal benchmarks (after it) keep their budgets
if wanted controlnet; then LEFT=$(( LEFT - ${GPU_CHECK_CN_S:-120} - 10 )); fi
if wanted temporal; then LEFT=$(( LEFT - ${GPU_CHECK_TEMPORAL_S:-90} - 10 )); fi
if wanted flood; then
  FLOOD_RUNS=$(wc -w <<<"${GPU_CHECK_FLOOD_RECEIVERS:-x}")
  LEFT=$(( LEFT - FLOOD_RUNS * (${GPU_CHECK_FLOOD_S:-150} + 10) ))
fi
if [ -n "${GPU_CHECK_BENCH_S:-}" ] && [ "$GPU_CHECK_BENCH_S" -lt "$LEFT" ]; then LEFT=$GPU_CHECK_BENCH_S; fi
if [ "$QUICK" = "1" ]; then
  BUDGET=$(( LEFT > 150 ? 150 : LEFT ))
  BENCH_ARGS=(--device "$DEVICE" --arch tiny --quick --size 64 --variants "${GPU_CHECK_VARIANTS:-eager,graphs,auto,fp8,diffusers}")
else
  BUDGET=$LEFT
  BENCH_ARGS=(--device "$DEVICE" --variants "${GPU_CHECK_VARIANTS:-eager,graphs,auto,fp8,inductor,diffusers}")
fi
if ! wanted bench; then
  echo "=== bench: not asked for (GPU_CHECK_STEPS)"
elif [ "$BUDGET" -lt 45 ]; then
  echo "=== bench: skipped, only ${LEFT} s left of ${TOTAL_S} s"
  FAILED+=("bench (no time left)")
else
  # shellcheck disable=SC2086  # extra arguments, split on spaces
  step bench $(( BUDGET + 20 )) "$PY" bench/gpu.py "${BENCH_ARGS[@]}" --budget-s "$BUDGET" \
    --out "$OUT/gpu_bench.json" ${GPU_CHECK_BENCH_ARGS:-}
fi

# 6./7. the ControlNet and temporal benchmarks (each stops itself at its budget)
FEATURE_ARGS=(--device "$DEVICE")
if [ "$QUICK" = "1" ]; then FEATURE_ARGS+=(--arch tiny --quick --size 64); fi
if wanted controlnet; then
  CN_S="${GPU_CHECK_CN_S:-120}"
  step controlnet $(( CN_S + 30 )) "$PY" bench/gpu.py "${FEATURE_ARGS[@]}" --controlnet --budget-s "$CN_S" \
    --out "$OUT/gpu_bench_controlnet.json"
fi
if wanted temporal; then
  TP_S="${GPU_CHECK_TEMPORAL_S:-90}"
  TP_ARGS=()
  if [ -n "${GPU_CHECK_TEMPORAL_SCENARIOS:-}" ]; then TP_ARGS+=(--temporal-scenarios "$GPU_CHECK_TEMPORAL_SCENARIOS"); fi
  if [ -n "${GPU_CHECK_TEMPORAL_VARIANTS:-}" ]; then TP_ARGS+=(--temporal-variants "$GPU_CHECK_TEMPORAL_VARIANTS"); fi
  step temporal $(( TP_S + 30 )) "$PY" bench/gpu.py "${FEATURE_ARGS[@]}" --temporal --budget-s "$TP_S" \
    --out "$OUT/gpu_bench_temporal.json" "${TP_ARGS[@]}"
fi

# 8. the OSC load bench (its phases are fixed; the budget is its timeout)
if wanted flood; then
  FL_S="${GPU_CHECK_FLOOD_S:-150}"
  if [ "$QUICK" = "1" ]; then
    FL_ARGS=(--device "$DEVICE" --arch tiny --seconds 1 --quiet 1 --rounds 2 --warmup 1)
  else
    FL_ARGS=(--device "$DEVICE" --arch sd-turbo --acceleration compile --cpus 0,1 --seconds 4 --quiet 3 --rounds 6)
  fi
  if [ -n "${GPU_CHECK_FLOOD_RECEIVERS:-}" ]; then
    for RECEIVER in $GPU_CHECK_FLOOD_RECEIVERS; do
      # shellcheck disable=SC2086  # extra arguments, split on spaces
      step "flood-$RECEIVER" "$FL_S" "$PY" bench/flood.py "${FL_ARGS[@]}" --receiver "$RECEIVER" \
        --json "$OUT/flood-$RECEIVER.json" ${GPU_CHECK_FLOOD_ARGS:-}
    done
  else
    # shellcheck disable=SC2086  # extra arguments, split on spaces
    step flood "$FL_S" "$PY" bench/flood.py "${FL_ARGS[@]}" --json "$OUT/flood.json" ${GPU_CHECK_FLOOD_ARGS:-}
  fi
fi

echo "=== gpu-check: $(( $(date +%s) - START )) s; logs and JSON in $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "=== gpu-check FAILED: ${FAILED[*]}"
  exit 1
fi
echo "=== gpu-check PASSED"
