#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned stack, plus horovod 0.28.1 (PyTorch + Gloo) built
# once from its sdist and cached outside the repository. A second run takes seconds.
#
# GPU machines: DLPIPE_TORCH_INDEX=https://download.pytorch.org/whl/cu126 installs the CUDA build of
# the pinned torch first. When torch is a CUDA build and nvcc is on the PATH, horovod is built with
# NCCL as well (GPU allreduce), cached under its own key; without either, nothing changes: the
# CPU/Gloo wheel, under the same key as always.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
# The Spark line (README "Spark lines"): 3.5, the classic default, in .venv; 4 in .venv-spark4;
# current (the newest Spark, pyarrow and numpy 2, no Petastorm) in .venv-current.
LOADER=petastorm  # the training loader the line's stack check imports
case "${SPARK:-3.5}" in
  3.5) LINE=classic; VENV=.venv; JAVA_OK="8 11 17" ;;
  4) LINE=spark4; VENV=.venv-spark4; JAVA_OK="17 21" ;;
  current) LINE=current; VENV=.venv-current; JAVA_OK="17 21"; LOADER=pyarrow ;;
  *) echo "setup: SPARK=$SPARK: the Spark lines are SPARK=3.5 (the default), SPARK=4 and SPARK=current" >&2; exit 2 ;;
esac
CONSTRAINTS=constraints/$LINE.txt
HOROVOD_VERSION=0.28.1
TORCH_VERSION=2.13.0
CACHE_ROOT=${DLPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dlpipe}

die() { echo "setup: $*" >&2; exit 1; }

# --- tools the build and Spark need --------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 (or set PYTHON=/path/to/python3.11)"
command -v java >/dev/null || die "java not found: install Java 17 (Debian: apt-get install openjdk-17-jre-headless)"
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
case " $JAVA_OK " in *" $java_major "*) ;; *) die "Java $java_major found; the SPARK=${SPARK:-3.5} line needs Java ${JAVA_OK// /, } (Debian: apt-get install openjdk-17-jre-headless, then point JAVA_HOME at it)";; esac
command -v cmake >/dev/null || die "cmake not found: it is needed to build horovod (Debian: apt-get install cmake)"
command -v g++ >/dev/null || die "g++ not found: a C++17 compiler is needed to build horovod (Debian: apt-get install g++)"

# --- virtual environment -----------------------------------------------------------------
stamp="$VENV/.dlpipe-setup"
want=$( { cat pyproject.toml "$CONSTRAINTS" scripts/setup.sh scripts/cxx17; echo "${DLPIPE_TORCH_INDEX:-}"; command -v nvcc || true; } \
        | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$VENV/bin/python" -c "import horovod.torch as hvd, $LOADER, pyspark, pyarrow; assert hvd.gloo_built()" 2>/dev/null; then
  echo "setup: $VENV (the $LINE line) is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip "setuptools>=77.0.3" wheel
if [ -n "${DLPIPE_TORCH_INDEX:-}" ]; then  # the CUDA build first; `torch==2.13.0` below then accepts 2.13.0+cuXXX
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" --index-url "$DLPIPE_TORCH_INDEX"
fi
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e ".[dev]"

# --- horovod: build once, cache the wheel ------------------------------------------------
pytag=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
torch_cuda=$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda or "")')
if [ -z "$torch_cuda" ]; then
  wheel_dir="$CACHE_ROOT/wheels/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION-$pytag"  # the CPU key, unchanged
elif command -v nvcc >/dev/null; then
  wheel_dir="$CACHE_ROOT/wheels/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION-cu$torch_cuda-$pytag-nccl"
  # Read by horovod's build below (HOROVOD_NCCL_HOME, when NCCL is not where CUDA is, passes through too).
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"
  echo "setup: torch is a CUDA $torch_cuda build and nvcc is here: horovod gets NCCL (GPU allreduce)"
else
  wheel_dir="$CACHE_ROOT/wheels/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION-cu$torch_cuda-$pytag"
  echo "setup: torch is a CUDA $torch_cuda build but nvcc is not on the PATH: horovod without NCCL (CPU/Gloo only;" \
       "install the CUDA toolkit and re-run for GPU training with train.strategy=horovod; ddp/fsdp/pipeline need no nvcc)"
fi
wheel=$(ls "$wheel_dir"/horovod-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "setup: building horovod $HOROVOD_VERSION against torch $TORCH_VERSION (about 7-10 minutes on 2 cores) ..."
  mkdir -p "$wheel_dir"
  build_log="$wheel_dir/build.log"
  if ! CXX="$PWD/scripts/cxx17" \
      HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=gloo \
      MAKEFLAGS="-j$(nproc)" \
      "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary horovod \
        -w "$wheel_dir" "horovod==$HOROVOD_VERSION" >"$build_log" 2>&1; then
    tail -40 "$build_log" >&2
    die "horovod build failed; full log: $build_log"
  fi
  wheel=$(ls "$wheel_dir"/horovod-*.whl | head -1)
fi
"${PIP[@]}" install -q --force-reinstall --no-deps "$wheel"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "cloudpickle" "psutil" "pyyaml" "packaging"

# --- prove the stack ----------------------------------------------------------------------
LOADER=$LOADER "$VENV/bin/python" - <<'PY'
import importlib, os
import horovod, horovod.torch as hvd, numpy, pyspark, pyarrow, torch
assert hvd.gloo_built(), "horovod was built without Gloo"
loader = importlib.import_module(os.environ["LOADER"])  # the line's training loader must import
print(f"setup: ok: pyspark {pyspark.__version__}, pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, "
      f"torch {torch.__version__}, {loader.__name__} {loader.__version__}, horovod {horovod.__version__} (gloo built)")
if torch.version.cuda:
    print(f"setup: CUDA {torch.version.cuda} build of torch, {torch.cuda.device_count()} GPU(s) visible; "
          f"horovod NCCL built: {bool(hvd.nccl_built())}; check the GPUs with: python scripts/gpu_check.py")
PY
echo "$want" >"$stamp"
