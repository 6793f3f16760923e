#!/usr/bin/env bash
# The prepared GPU check (docs/gpu_check.md): on one H100/H200, in under 8 minutes with the
# CUDA build included, it writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log.
#
#   bash benchmarks/gpu_check.sh OUT_DIR              # on the GPU machine
#   bash benchmarks/gpu_check.sh OUT_DIR --dry-run    # on a CPU: every step, tiny shapes
#   bash benchmarks/gpu_check.sh --prepare-wheels     # here, with PyPI: fill .whl/ for it
#
# Steps, each under `timeout` and inside a total budget (GPU_CHECK_BUDGET_S, default 450 s);
# a failing step is recorded (status, exit code, tail of its log) and the next one runs:
#   env                 the Python with a CUDA torch, versions, nvidia-smi
#   deps_install        .whl/*.whl (--prepare-wheels) installed into a scratch folder
#   deps                the imports that megagrape and the tests need
#   build               megagrape._C compiled with CUDA for this GPU (out of tree, then the
#                       .so copied into megagrape/); dry run: the built CPU extension is used
#   gpu_tests           (a) pytest -m gpu; dry run: --collect-only
#   bench_gram          (b) benchmarks/bench_gram.py --device cuda: the kernel's bandwidth as a
#                       fraction of a device-to-device copy's; dry run: on the CPU, 1e5 elements
#   throughput          (c) benchmarks/bench_throughput.py: GPT-2 small, bf16, tokens/s and MFU
#                       without and with GRAPE events every 100 steps; dry run: tiny, 2 steps
#   transformer_engine  (d) the same with Transformer Engine's layer spec, if it imports
# The JSON holds, per step: status (ok, failed, timeout, skipped), exit code, seconds, the exact
# command, the log's tail, and the step's figures.
#
# Python: the first of $GPU_CHECK_PYTHON, .venv/bin/python, python3 whose torch sees a GPU
# (dry run: whose torch imports). Scratch files go to a temporary folder, removed at the end
# unless GPU_CHECK_KEEP=1.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2

if [ "${1:-}" = "--prepare-wheels" ]; then
  # Wheels of what megagrape needs beyond the GPU machine's image (its python3 is 3.12, with
  # torch, numpy, tokenizers, tensorboard, pytest, hypothesis...; docs/gpu_check.md), pinned
  # to this checkout's .venv where it has them.
  set -e
  PYV=${GPU_PYTHON_VERSION:-3.12}
  mkdir -p .whl
  pins=()
  for name in megatron-core hjson pydantic pydantic-core annotated-types typing-inspection \
    typing-extensions tyro docstring-parser typeguard; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    pins+=("$name${version:+==$version}")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
  ds=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('deepspeed'))" 2>/dev/null || true)
  DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w .whl "deepspeed${ds:+==$ds}"
  ls -l .whl
  echo "carry .whl to the GPU machine with the working tree (benchmarks/gpu_check.sh installs it)"
  exit 0
fi

OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run] | --prepare-wheels}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STEPS=$WORK/steps.tsv
BUDGET=${GPU_CHECK_BUDGET_S:-450}
START=$(date +%s)
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}

note() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# record NAME STATUS RC SECONDS [FIGURES_JSON]: one line of steps.tsv; the step's command,
# shell-quoted (printf %q: pasting it into bash reruns it exactly), is in WORK/NAME.cmd.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$STEPS"
  note "step $1: $2 (exit $3, $4 s)"
}

# step NAME CAP_S FIGURES_JSON COMMAND...: runs COMMAND under timeout (CAP_S or what is left of
# the budget, whichever is less), its output in WORK/NAME.log and in the main log.
step() {
  local name=$1 cap=$2 figures=$3 left rc t0
  shift 3
  printf '%q ' "$@" >"$WORK/$name.cmd"
  left=$((BUDGET - ($(date +%s) - START) - 10))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 0 ]; then
    echo "time budget of $BUDGET s spent" >"$WORK/$name.log"
    record "$name" skipped "" 0
    return
  fi
  note "step $name (timeout ${cap} s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$cap" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  cat "$WORK/$name.log" >>"$LOG"
  local status=ok
  [ "$rc" -ne 0 ] && status=failed
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && status=timeout
  record "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$figures"
}

# skip NAME REASON COMMAND...: a step that cannot run here, with the reason as its log.
skip() {
  local name=$1 reason=$2
  shift 2
  printf '%q ' "$@" >"$WORK/$name.cmd"
  echo "$reason" >"$WORK/$name.log"
  record "$name" skipped "" 0
  note "  $reason"
}

# --- env: the Python, versions, the GPU.
PY=
for candidate in ${GPU_CHECK_PYTHON:-} "$REPO/.venv/bin/python" python3; do
  want='import torch; assert torch.cuda.is_available()'
  [ "$DRY" = 1 ] && want='import torch'
  if "$candidate" -c "$want" >/dev/null 2>&1; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  PY=python3
  note "no Python here has a torch that sees a GPU; the steps run with $PY and will fail"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true; command -v nvcc && nvcc --version | tail -2; } >"$WORK/nvidia.txt" 2>&1
step env 60 "$WORK/env.json" "$PY" -c '
import json, platform, sys
import torch
info = {"python": sys.executable, "python_version": platform.python_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    info["capability"] = "%d.%d" % torch.cuda.get_device_capability()
print(json.dumps(info))
open(sys.argv[1], "w").write(json.dumps(info))' "$WORK/env.json"
cat "$WORK/nvidia.txt" >>"$LOG"
ARCH=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("capability", ""))' "$WORK/env.json" 2>/dev/null)

# --- deps: carried wheels, then the imports that megagrape and the tests need.
INSTALL=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
  --target "$WORK/site" "$REPO"/.whl/*.whl)
if [ "$DRY" = 1 ]; then
  skip deps_install "dry run: the local environment is used as it is" "${INSTALL[@]}"
elif ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
  step deps_install 90 "" "${INSTALL[@]}"
else
  skip deps_install "no .whl/*.whl (benchmarks/gpu_check.sh --prepare-wheels makes them)" "${INSTALL[@]}"
fi
step deps 60 "" "$PY" -c '
import importlib
missing = []
for name in ["torch", "numpy", "yaml", "scipy", "tokenizers", "tiktoken", "tqdm", "tyro",
             "megatron.core", "deepspeed", "pytest", "hypothesis", "tensorboard"]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name}: {type(exc).__name__}: {exc}")
print("\n".join(missing) or "all imports ok")
raise SystemExit(1 if missing else 0)'

# --- build: the CUDA extension for this GPU's architecture.
if [ "$DRY" = 1 ]; then
  step build 60 "" "$PY" -c '
import torch
import megagrape._C as C
print(C.__file__, "gram_has_cuda", C.gram_has_cuda, "(dry run: the built CPU extension, no compile)")'
else
  step build 150 "" env TORCH_CUDA_ARCH_LIST="${ARCH:-9.0}" MAX_JOBS="$(nproc)" sh -c "
    set -e
    \"$PY\" setup.py -q build_ext --build-temp \"$WORK/build\" --build-lib \"$WORK/lib\"
    cp \"$WORK\"/lib/megagrape/_C*.so megagrape/
    cd \"$WORK\" && \"$PY\" -c 'import torch, megagrape._C as C; print(C.__file__); assert C.gram_has_cuda, \"built without CUDA\"'"
fi

# --- (a) the gpu-marked tests.
if [ "$DRY" = 1 ]; then
  step gpu_tests 90 "" "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests
else
  step gpu_tests 100 "" "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider \
    --continue-on-collection-errors tests
fi

# --- (b) the Gram kernel against the device's copy bandwidth.
if [ "$DRY" = 1 ]; then
  step bench_gram 60 "$WORK/bench_gram.json" "$PY" benchmarks/bench_gram.py --device cpu \
    --elements 100000 --repeats 2 --no-event --json "$WORK/bench_gram.json"
else
  step bench_gram 60 "$WORK/bench_gram.json" "$PY" benchmarks/bench_gram.py --device cuda \
    --no-event --json "$WORK/bench_gram.json"
fi

# --- (c) training throughput and MFU, without and with GRAPE events (R = 100).
if [ "$DRY" = 1 ]; then
  step throughput 120 "$WORK/throughput.json" "$PY" benchmarks/bench_throughput.py \
    --preset tiny --warmup 1 --steps 2 --interval 2 --intervals 1 --domains 4 --targets 2 \
    --workdir "$WORK/throughput" --json "$WORK/throughput.json"
else
  step throughput 150 "$WORK/throughput.json" "$PY" benchmarks/bench_throughput.py \
    --preset gpt2-small --interval 100 --intervals 2 --workdir "$WORK/throughput" \
    --json "$WORK/throughput.json"
fi

# --- (d) Transformer Engine's layer spec, where it imports.
TE_SHAPE=(--preset gpt2-small --warmup 10 --steps 50)
[ "$DRY" = 1 ] && TE_SHAPE=(--preset tiny --warmup 1 --steps 2 --domains 4 --targets 2)
TE_CMD=("$PY" benchmarks/bench_throughput.py "${TE_SHAPE[@]}" --transformer-impl transformer_engine
  --no-events --workdir "$WORK/throughput" --json "$WORK/te.json")
if TE_ERR=$("$PY" -c 'import transformer_engine.pytorch' 2>&1); then
  step transformer_engine 60 "$WORK/te.json" "${TE_CMD[@]}"
else
  skip transformer_engine "transformer_engine does not import: $(echo "$TE_ERR" | tail -1)" "${TE_CMD[@]}"
fi

# --- the JSON: every step with its figures (each figure block carries its command).
"$PY" - "$STEPS" "$WORK" "$OUT/gpu_check.json" "$DRY" "$START" "$BUDGET" <<'EOF' 2>>"$LOG" ||
import json, re, sys, time
from pathlib import Path

steps_file, work, out, dry, start, budget = sys.argv[1:]
work = Path(work)


def tail(name, lines=40):
    path = work / f"{name}.log"
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []


def pytest_counts(name):
    text = "\n".join(tail(name, 400))
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", text)}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    if collected:
        counts["collected"] = int(collected.group(1))
    return counts


def figures(name, path, command):
    if name in ("gpu_tests",):
        return {"command": command, **pytest_counts(name)}
    if not path or not Path(path).exists():
        return None
    data = json.loads(Path(path).read_text())
    if name == "env":
        return data
    if name == "bench_gram":
        keys = ("variant", "K", "N", "elements", "kernel_s", "kernel_gb_s", "sum_gb_s",
                "copy_gb_s", "fraction_of_copy_bandwidth", "fraction_of_sum_bandwidth",
                "speedup", "max_rel_diff")
        return {"command": command, "machine": data["machine"],
                "variants": [{k: r[k] for k in keys if k in r} for r in data["results"]]}
    keep = ("command", "preset", "device_name", "peak_key", "peak_bf16_flops", "mfu_formula",
            "interval", "model", "without_events", "with_events", "amortized_event_overhead",
            "event_extra_s", "event_extra_fraction_of_interval")
    return {k: data[k] for k in keep if k in data}


checks = {}
for line in Path(steps_file).read_text().splitlines():
    name, status, rc, seconds, path = line.split("\t")
    command = (work / f"{name}.cmd").read_text().strip()
    checks[name] = {
        "status": status,
        "exit_code": int(rc) if rc else None,
        "seconds": int(seconds),
        "command": command,
        # Failed tests still have counts; other steps have figures only when they succeed.
        "figures": figures(name, path, command)
        if status == "ok" or (name == "gpu_tests" and status != "skipped")
        else None,
        "log_tail": tail(name),
    }
result = {
    "dry_run": dry == "1",
    "wall_s": round(time.time() - int(start)),
    "budget_s": int(budget),
    "nvidia": (work / "nvidia.txt").read_text(errors="replace").splitlines(),
    "statuses": {name: check["status"] for name, check in checks.items()},
    "checks": checks,
}
Path(out).write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result["statuses"]))
EOF
  note "could not write $OUT/gpu_check.json (see the log)"
note "done in $(($(date +%s) - START)) s: $OUT/gpu_check.json, $LOG"
[ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"
