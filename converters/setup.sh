#!/usr/bin/env bash
# Create the three Python environments used by the fixture generators (idempotent).
#   .venv-keras208 : keras==2.0.8  + theano==1.0.5 (genuine Keras 2.0.8, Theano backend)
#   .venv-keras122 : keras==1.2.2  + theano==1.0.5 (genuine Keras 1.2.2, Theano backend)
#   .venv-tf       : tensorflow-cpu==2.21.0 + tf-keras==2.21.0 (+ keras 3), h5py, onnx, onnxruntime, opencv,
#                    pandas, scikit-learn, pillow (sample_patches_ref.py), safetensors (tests/safetensors_crate.rs)
#                    pydicom + pylibjpeg decoders (make_dicom_codecs.py), pyarrow (tests/archive.rs reads our Parquet)
# Usage (from the repo root): bash converters/setup.sh [keras208|keras122|tf ...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
# shared/legacy-keras/sitecustomize.py, with getargspec returning a named tuple
SHIM="$ROOT/converters/sitecustomize.py"

legacy() {  # $1 = venv dir, $2 = keras version
  local v="$1" kv="$2"
  if [ -x "$v/bin/python" ] && "$v/bin/python" -m pip show keras 2>/dev/null | grep -qx "Version: $kv" \
     && "$v/bin/python" -c "import theano, h5py, scipy" >/dev/null 2>&1 </dev/null; then
    echo "$v: keras $kv already present"
    cp "$SHIM" "$("$v/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' </dev/null)/sitecustomize.py"
    return
  fi
  [ -x "$v/bin/python" ] || "$PY" -m venv "$v"
  "$v/bin/pip" install -q "numpy<1.24" "scipy<1.11" "h5py<3.12" six pyyaml
  "$v/bin/pip" install -q --no-deps "keras==$kv" theano==1.0.5
  local sp; sp="$("$v/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp "$SHIM" "$sp/sitecustomize.py"
}

tfenv() {
  local v=.venv-tf
  if [ -x "$v/bin/python" ] && "$v/bin/python" -c "import tensorflow, tf_keras, onnx, onnxruntime, cv2, h5py, pandas, sklearn, PIL, safetensors, pydicom, pylibjpeg, libjpeg, openjpeg, rle, pyarrow" >/dev/null 2>&1 </dev/null; then
    echo "$v: already present"; return
  fi
  [ -x "$v/bin/python" ] || "$PY" -m venv "$v"
  "$v/bin/pip" install -q tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py numpy onnx onnxruntime opencv-python-headless pandas scikit-learn pillow safetensors \
    pydicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyarrow
}

targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(keras208 keras122 tf)
for t in "${targets[@]}"; do
  case "$t" in
    keras208) legacy .venv-keras208 2.0.8 ;;
    keras122) legacy .venv-keras122 1.2.2 ;;
    tf) tfenv ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done
mkdir -p build/keras-home build/theano
