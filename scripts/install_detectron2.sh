#!/usr/bin/env bash
# Installs Detectron2 into the Python given as $1 (default: python), by the first path that applies:
#   1. it already imports (e.g. a source build with compiled ops: what GPU users should have);
#   2. DETECTRON2_SRC is set: pip install --no-build-isolation "$DETECTRON2_SRC";
#   3. the PyPI redistribution sal-detectron2==0.7.2, repacked as pure Python (see README).
set -euo pipefail
PY="${1:-python}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if "$PY" -c "import detectron2" 2>/dev/null; then
    echo "detectron2: path 1, already installed: $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
    exit 0
fi

if [ -n "${DETECTRON2_SRC:-}" ]; then
    echo "detectron2: path 2, building from DETECTRON2_SRC=$DETECTRON2_SRC"
    "$PY" -m pip install --no-build-isolation "$DETECTRON2_SRC"
    exit 0
fi

echo "detectron2: path 3, PyPI redistribution sal-detectron2==0.7.2 repacked for Python 3 without _C"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() {
    echo "error: could not install Detectron2 ($1)." >&2
    echo "  Fix: install it yourself (pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git')," >&2
    echo "  or point DETECTRON2_SRC at a local checkout, then re-run 'make install'." >&2
    exit 1
}
"$PY" -m pip install -q wheel || fail "pip could not install 'wheel'"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    --require-hashes -r "$HERE/sal-detectron2.txt" -d "$work/dl" || fail "download of sal-detectron2 failed"
"$PY" -m wheel unpack -d "$work/unpacked" "$work"/dl/*.whl >/dev/null
root="$(echo "$work"/unpacked/*)"
# The compiled ops are built for CPython 3.10 only; this project needs none of them.
rm -f "$root"/detectron2/_C.*.so
sed -i 's/^Tag: .*/Tag: py3-none-any/' "$root"/*.dist-info/WHEEL
mkdir -p "$work/repacked"
"$PY" -m wheel pack -d "$work/repacked" "$root" >/dev/null
# The wheel's metadata omits fvcore and iopath; detectron2.model_zoo imports pkg_resources,
# which setuptools removed in release 81.
"$PY" -m pip install "$work"/repacked/*.whl 'fvcore>=0.1.5,<0.1.6' 'iopath>=0.1.7,<0.1.10' 'setuptools<81' \
    || fail "pip install of the repacked wheel failed"
"$PY" -c "import detectron2" || fail "the installed package does not import"
