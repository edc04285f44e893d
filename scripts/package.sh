#!/usr/bin/env bash
# Build what a cluster needs into dist/ (`make package`):
#
#   dist/dlpipe.zip    the `pipelines` and `models` packages          -> spark-submit --py-files dist/dlpipe.zip
#   dist/env.tar.gz    a self-contained Python 3.11 with the pinned stack (torch, horovod, petastorm, pyarrow, ...)
#                      -> --archives dist/env.tar.gz#env --conf spark.pyspark.python=./env/bin/python
#                      After a GPU `make setup` it holds the CUDA build of torch with its CUDA libraries
#                      (several GB) and the NCCL Horovod; the nodes need only the NVIDIA driver (and for
#                      that Horovod, the CUDA runtime it was built against). docs/operations.md "GPUs".
#
# Why not venv-pack: a venv (and so a venv-pack archive) holds no interpreter, only a symlink to the
# base Python (here a pyenv build whose libpython is found through an absolute RUNPATH), so it runs
# only where that same Python sits at the same path. This script packs the base interpreter, its
# libpython and standard library together with the venv's site-packages into one relocatable tree;
# env/bin/python is a 3-line wrapper that points the loader at env/lib. The nodes need the same OS
# family (glibc, libssl, ...) as this machine, as with conda-pack.
#
# Left out of env.tar.gz (not needed by executors, saves ~450 MB):
#   dlpipe's own editable install (the code travels in dlpipe.zip, so a code change needs no re-pack),
#   pyspark/jars (executors run the cluster's Spark; `import pyspark` still works),
#   torch/include, and the stdlib's test, idlelib, tkinter, turtledemo folders.
#   DLPIPE_PACK_SPARK_JARS=1 keeps pyspark/jars.
#
# Usage: scripts/package.sh [all|zip|env]   (default all)
#   env.tar.gz is rebuilt only when the venv's packages (pip freeze, less dlpipe's own editable line),
#   the base Python or this script change; the newest build is also kept in the set-up cache
#   (${DLPIPE_CACHE:-~/.cache/dlpipe}/env/, beside the Horovod wheel) so a fresh clone reuses it.
#   DLPIPE_PACK_FORCE=1 rebuilds anyway. DLPIPE_PACK_GZIP_LEVEL (default 1) trades time for size. After building, the archive is unpacked into a temp
#   folder and its Python must import horovod.torch, petastorm, pyspark and torch from there
#   (DLPIPE_PACK_VERIFY=0 skips that check).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
DIST=${DIST:-dist}
CACHE_ROOT=${DLPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dlpipe}  # as scripts/setup.sh
WHAT=${1:-all}
PY="$VENV/bin/python"

die() { echo "package: $*" >&2; exit 1; }
CLEANUP=()
cleanup() { [ ${#CLEANUP[@]} -eq 0 ] || rm -rf "${CLEANUP[@]}"; }
trap cleanup EXIT
[ -x "$PY" ] || die "$PY not found: run 'make setup' first"
case "$WHAT" in all|zip|env) ;; *) die "usage: $0 [all|zip|env]";; esac
mkdir -p "$DIST"

# --- dist/dlpipe.zip: the code ---------------------------------------------------------------
build_zip() {
  local started=$SECONDS
  "$PY" - "$DIST/dlpipe.zip" <<'PY'
import os, sys, zipfile
out = sys.argv[1]
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for package in ("pipelines", "models"):
        for root, dirs, files in os.walk(package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".yaml")):
                    z.write(os.path.join(root, name))
os.replace(tmp, out)  # a reader never sees half a zip
PY
  "$PY" -c "import sys; sys.path.insert(0, '$DIST/dlpipe.zip'); import pipelines.cli; \
assert pipelines.cli.__file__.startswith('$DIST/dlpipe.zip'), pipelines.cli.__file__"
  echo "package: $DIST/dlpipe.zip ($(du -h "$DIST/dlpipe.zip" | cut -f1), $((SECONDS - started)) s)"
}

# --- dist/env.tar.gz: a relocatable Python with the venv's packages -------------------------------
build_env() {
  local started=$SECONDS
  local base pyver site venv out="$DIST/env.tar.gz"
  venv=$(cd "$VENV" && pwd)
  base=$("$PY" -c 'import sys; print(sys.base_prefix)')
  pyver=$("$PY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
  site="lib/$pyver/site-packages"
  [ -x "$base/bin/$pyver" ] || die "base interpreter $base/bin/$pyver not found"
  [ -d "$VENV/$site" ] || die "$VENV/$site not found"

  # Rebuild only when something that goes into the archive changed.
  # dlpipe's own editable install names the checkout's folder and is left out of the archive anyway.
  local key cached
  key=$( { echo "$base $pyver ${DLPIPE_PACK_SPARK_JARS:-0} ${DLPIPE_PACK_GZIP_LEVEL:-1}";
           env -u PYTHONPATH "$PY" -m pip freeze --all --disable-pip-version-check 2>/dev/null | grep -v -e '^-e ' -e '^# Editable';
           cat "$0"; } | sha256sum | cut -c1-16)
  cached="$CACHE_ROOT/env/env-$key.tar.gz"
  if [ -z "${DLPIPE_PACK_FORCE:-}" ] && [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
    echo "package: $out is up to date ($(du -h "$out" | cut -f1)); DLPIPE_PACK_FORCE=1 rebuilds it"
    return
  fi
  if [ -z "${DLPIPE_PACK_FORCE:-}" ] && [ -f "$cached" ]; then
    cp "$cached" "$out.tmp" && mv "$out.tmp" "$out"
    echo "$key" >"$out.key"
    echo "package: $out from the set-up cache ($cached, $(du -h "$out" | cut -f1)); DLPIPE_PACK_FORCE=1 rebuilds it"
    return
  fi

  local stage
  stage=$(mktemp -d)
  CLEANUP+=("$stage" "$out.tmp")
  mkdir -p "$stage/bin"
  for name in python python3; do
    cat >"$stage/bin/$name" <<SH
#!/bin/sh
# dlpipe packed env: the bundled interpreter with its own libpython, wherever this folder was unpacked.
here=\$(cd "\$(dirname "\$0")" && pwd -P)
LD_LIBRARY_PATH="\$here/../lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/$pyver" "\$@"
SH
    chmod 755 "$stage/bin/$name"
  done
  cat >"$stage/DLPIPE_ENV" <<TXT
dlpipe packed Python environment ($pyver from $base + $VENV site-packages), built $(date -u +%FT%TZ).
Use: spark-submit --archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python --py-files dlpipe.zip ...
TXT

  # The standard library, less what no job needs, and less the base's own site-packages.
  local -a stdlib=()
  local entry
  for entry in "$base/lib/$pyver"/*; do
    case "${entry##*/}" in site-packages|test|idlelib|tkinter|turtledemo) continue;; esac
    stdlib+=("lib/$pyver/${entry##*/}")
  done
  local -a excludes=(
    --exclude='__editable__*' --exclude='dlpipe-*.dist-info' --exclude='dlpipe.egg-link'
    --exclude="$site/torch/include"
  )
  [ "${DLPIPE_PACK_SPARK_JARS:-0}" = 1 ] || excludes+=(--exclude="$site/pyspark/jars")

  # Level 1: 3x faster than gzip's default 6 on torch's libraries for ~15% more bytes.
  local level=${DLPIPE_PACK_GZIP_LEVEL:-1} gz
  gz="gzip -$level"
  command -v pigz >/dev/null && gz="pigz -$level"
  echo "package: packing $pyver + $VENV/$site into $out (with $gz; under a minute) ..."
  # One tar, three sources, no staging copy: the wrapper scripts, the base interpreter + stdlib, the venv's packages.
  tar -c --owner=0 --group=0 \
      -C "$stage" DLPIPE_ENV bin/python bin/python3 \
      -C "$base" "bin/$pyver" $(cd "$base" && ls lib/libpython3*.so* 2>/dev/null) "${stdlib[@]}" \
      "${excludes[@]}" -C "$venv" "$site" \
    | $gz >"$out.tmp"
  mv "$out.tmp" "$out"
  echo "$key" >"$out.key"
  echo "package: $out ($(du -h "$out" | cut -f1), $((SECONDS - started)) s)"
  [ "${DLPIPE_PACK_VERIFY:-1}" = 0 ] || verify_env "$out"
  # Keep only the newest build in the cache (each is ~600 MB); the cache may be read-only: no harm.
  if mkdir -p "$CACHE_ROOT/env" 2>/dev/null; then
    rm -f "$CACHE_ROOT"/env/env-*.tar.gz
    cp "$out" "$cached.tmp" 2>/dev/null && mv "$cached.tmp" "$cached" || rm -f "$cached.tmp"
  fi
}

# Unpack into a fresh folder and import the stack from there, not from this machine's Python.
verify_env() {
  local started=$SECONDS dir
  dir=$(mktemp -d)
  CLEANUP+=("$dir")
  mkdir -p "$dir/env"
  tar -xzf "$1" -C "$dir/env"
  (cd "$dir" && env -u PYTHONPATH -u PYTHONHOME ./env/bin/python - <<'PY'
import os, sys
here = os.path.realpath("env")
import horovod, horovod.torch as hvd, petastorm, pyarrow, pyspark, torch
assert hvd.gloo_built(), "horovod in the packed env was built without Gloo"
assert os.path.realpath(sys.prefix) == here, f"sys.prefix is {sys.prefix}, not the unpacked env"
for mod in (torch, horovod, petastorm, pyspark, os):
    assert os.path.realpath(mod.__file__).startswith(here), f"{mod.__name__} imported from {mod.__file__}"
libpython = [l.split()[-1] for l in open("/proc/self/maps") if "libpython" in l]
assert all(os.path.realpath(p).startswith(here) for p in libpython), f"libpython loaded from {libpython}"
print(f"package: verified: unpacked env imports horovod {horovod.__version__} (gloo), torch {torch.__version__}, "
      f"petastorm {petastorm.__version__}, pyspark {pyspark.__version__}, pyarrow {pyarrow.__version__} "
      f"from its own folder")
if torch.version.cuda:  # a GPU environment: torch's CUDA libraries (site-packages/nvidia) came along
    print(f"package: CUDA {torch.version.cuda} build of torch; horovod NCCL built: {bool(hvd.nccl_built())}")
PY
  )
  rm -rf "$dir"
  echo "package: verification took $((SECONDS - started)) s"
}

[ "$WHAT" = env ] || build_zip
[ "$WHAT" = zip ] || build_env
