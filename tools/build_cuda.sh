#!/usr/bin/env bash
# Compile megagrape._C with its CUDA sources (csrc/*.cu) on a machine WITHOUT a GPU, to prove
# that the CUDA build compiles and links, and that the resulting .so holds sm_80 + sm_90 code.
#
#   bash tools/build_cuda.sh [BUILD_DIR]        # default BUILD_DIR: .cache/cuda-build
#
# Everything goes under BUILD_DIR (gitignored): a venv with the CUDA torch wheel from PyPI and
# NVIDIA's compiler wheels, an assembled CUDA_HOME, the build tree and the built .so. The
# repository's own .venv and its CPU megagrape/_C*.so are not touched (out-of-tree build).
# The log, BUILD_DIR/build.log, records versions, every phase's wall time and the result.
#
# Environment: PYTHON (interpreter for the venv, default python3), TORCH_SPEC (default
# torch==2.13.0: on plain PyPI that is the CUDA 13.0 build), TORCH_CUDA_ARCH_LIST (default
# "8.0;9.0"), MAX_JOBS (parallel compile jobs, default: all cores), PIP_INDEX (default
# https://pypi.org/simple).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mkdir -p "${1:-$REPO/.cache/cuda-build}" && cd "${1:-$REPO/.cache/cuda-build}" && pwd)
LOG=$DIR/build.log
VENV=$DIR/venv
VPY=$VENV/bin/python
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
: >"$LOG"
START=$(date +%s)

log() { echo "[$(date +%H:%M:%S) +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
fail() {
  log "RESULT: FAILED ($1) after $(($(date +%s) - START)) s"
  exit 1
}
# Runs a phase, its output appended to the log, its wall time logged.
phase() {
  local name=$1 t0
  shift
  t0=$(date +%s)
  log "phase $name: $*"
  "$@" >>"$LOG" 2>&1 || fail "phase $name, see $LOG"
  log "phase $name done in $(($(date +%s) - t0)) s"
}
# pip against plain PyPI only: this machine's pip configuration (PIP_FIND_LINKS=/opt/wheels,
# extra local indexes, a constraints file) serves a CPU torch 2.13.0+cpu, which pip would
# prefer to PyPI's 2.13.0 (a local version label sorts higher), so all of it is switched off.
pypi() {
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null "$VPY" -m pip install --disable-pip-version-check \
    --index-url "${PIP_INDEX:-https://pypi.org/simple}" "$@"
}

log "build_cuda.sh: repo $REPO, build dir $DIR, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS, load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ -x "$VPY" ] || phase venv "${PYTHON:-python3}" -m venv "$VENV"
phase torch pypi "${TORCH_SPEC:-torch==2.13.0}" numpy ninja
CUDA_VERSION=$("$VPY" -c 'import torch; print(torch.version.cuda or "")' 2>>"$LOG")
[ -n "$CUDA_VERSION" ] || fail "the installed torch is a CPU build: $("$VPY" -c 'import torch; print(torch.__version__)')"

# The compiler wheels that match torch's CUDA: torch's own pin of the cuda-toolkit meta
# package (CUDA 13 wheels), with the extras that hold nvcc, its front end and the headers.
TOOLKIT=$("$VPY" - <<'EOF'
import importlib.metadata, re
for req in importlib.metadata.requires("torch") or []:
    found = re.match(r"cuda-toolkit\[[^\]]*\]\s*(==\s*[\w.]+)", req)
    if found:
        print("cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]" + found.group(1).replace(" ", ""))
EOF
)
[ -n "$TOOLKIT" ] || fail "torch pins no cuda-toolkit wheel; install nvcc $CUDA_VERSION by hand and set CUDA_HOME"
phase nvcc pypi "$TOOLKIT"

# An assembled CUDA_HOME: bin/ and nvvm/ of the nvcc wheel, include/ and lib64/ merged from
# every nvidia/*/ wheel folder, plus the unversioned libcudart.so that -lcudart needs.
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NVCC_REAL=$(find "$SITE/nvidia" -path '*/bin/nvcc' -type f | head -1)
[ -n "$NVCC_REAL" ] || fail "no bin/nvcc under $SITE/nvidia after installing $TOOLKIT"
export CUDA_HOME=$DIR/cuda_home
rm -rf "$CUDA_HOME"
mkdir -p "$CUDA_HOME/include" "$CUDA_HOME/lib64"
ln -s "$(dirname "$NVCC_REAL")" "$CUDA_HOME/bin"
ln -s "$(dirname "$(dirname "$NVCC_REAL")")/nvvm" "$CUDA_HOME/nvvm"
for inc in "$SITE"/nvidia/*/include; do
  for entry in "$inc"/*; do
    [ -e "$CUDA_HOME/include/$(basename "$entry")" ] || ln -s "$entry" "$CUDA_HOME/include/"
  done
done
for lib in "$SITE"/nvidia/*/lib/*.so*; do
  [ -e "$CUDA_HOME/lib64/$(basename "$lib")" ] || ln -s "$lib" "$CUDA_HOME/lib64/"
done
CUDART=$(find "$CUDA_HOME/lib64/" -name 'libcudart.so.*' | head -1)
[ -n "$CUDART" ] || fail "no libcudart.so.* in the CUDA wheels"
ln -sf "$(basename "$CUDART")" "$CUDA_HOME/lib64/libcudart.so"
export PATH=$CUDA_HOME/bin:$VENV/bin:$PATH

{
  echo "--- versions"
  "$VPY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "cuda wheels: $TOOLKIT"
  nvcc --version
  gcc --version | head -1
  echo "ninja $(ninja --version)"
  echo "---"
} >>"$LOG" 2>&1
log "torch $("$VPY" -c 'import torch; print(torch.__version__)'), CUDA $CUDA_VERSION, $(nvcc --version | tail -1), $(gcc --version | head -1)"

# Clean out-of-tree build: objects in BUILD_DIR/tmp, the .so in BUILD_DIR/lib/megagrape/.
rm -rf "$DIR/lib" "$DIR/tmp"
(cd "$REPO" && phase build "$VPY" setup.py -q build_ext --build-temp "$DIR/tmp" --build-lib "$DIR/lib")
SO=$(find "$DIR/lib/megagrape" -name '_C*.so' | head -1)
[ -n "$SO" ] || fail "setup.py produced no megagrape/_C*.so"
log "built $SO ($(du -h "$SO" | cut -f1))"

# Device code per architecture, and each kernel's resource use. cuobjdump has no 13.0 wheel;
# the one that triton (a dependency of torch) bundles reads the fatbinary as well.
CUOBJDUMP=$(command -v cuobjdump || find "$SITE" -name cuobjdump -type f | head -1)
[ -n "$CUOBJDUMP" ] || fail "no cuobjdump to list the device code"
log "cuobjdump: $CUOBJDUMP ($("$CUOBJDUMP" --version | tail -1))"
ELFS=$("$CUOBJDUMP" --list-elf "$SO" 2>&1) || fail "cuobjdump --list-elf: $ELFS"
echo "$ELFS" >>"$LOG"
for arch in $(echo "$TORCH_CUDA_ARCH_LIST" | tr ';' ' '); do
  sm=sm_${arch//./}
  grep -q "\.$sm\.cubin" <<<"$ELFS" || fail "no $sm machine code in $SO"
  log "$sm machine code present"
done
phase resources "$CUOBJDUMP" --dump-resource-usage "$SO"

# Import in the CUDA venv (no GPU here, so no libcuda.so.1: the import must not need it), and
# a CPU Gram through the CUDA-enabled build against the float64 reference.
# Run from BUILD_DIR/lib, so that the repository's megagrape (CPU .so) is not on sys.path.
(cd "$DIR/lib" && phase import "$VPY" -c '
import torch
import megagrape._C as C
print("loaded", C.__file__)
assert C.__file__.startswith("'"$DIR/lib/"'"), "imported another megagrape._C"
assert C.gram_has_cuda, "built without CUDA"
g = torch.Generator().manual_seed(0)
a = [[torch.randn(100003, generator=g), torch.randn(7, generator=g)] for _ in range(5)]
b = [[x.bfloat16() for x in v] for v in a[:3]]
got = C.gram(a, b)
def dot(u, v):
    return sum(float(x.double() @ y.double()) for x, y in zip(u, v))
want = torch.tensor([[dot(u, v) for v in b] for u in a])
bound = 1e-6 * torch.tensor([[(dot(u, u) * dot(v, v)) ** 0.5 for v in b] for u in a])
print("gram_has_cuda", C.gram_has_cuda, "cpu max |err| / bound", float(((got - want).abs() / bound).max()))
assert bool(((got - want).abs() <= bound).all())
')
log "load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "RESULT: OK, megagrape._C compiled with CUDA $CUDA_VERSION for $TORCH_CUDA_ARCH_LIST in $(($(date +%s) - START)) s"
