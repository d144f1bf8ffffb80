#!/usr/bin/env python3
"""Read a .safetensors file with Hugging Face's own `safetensors` package, and write it back.

usage: safetensors_check.py IN.safetensors OUT.npz REWRITTEN.safetensors

- IN is loaded with safetensors.numpy.load_file (every tensor) and safe_open (the
  `__metadata__` map and the dtypes);
- OUT.npz gets every tensor as loaded (np.savez: name -> array), for the caller to compare
  bit for bit with what it wrote;
- REWRITTEN.safetensors is safetensors.numpy.save_file of the same tensors and metadata:
  a file made by the reference writer, for the caller to read with its own reader.

Prints one JSON object: {"safetensors": version, "metadata": {...},
"tensors": {name: {"dtype": ..., "shape": [...]}}}. Used by tests/safetensors_crate.rs.
"""
import json
import sys

import numpy as np
import safetensors
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def main():
    src, npz, rewritten = sys.argv[1:4]
    tensors = load_file(src)
    with safe_open(src, framework="numpy") as f:
        metadata = f.metadata() or {}
        keys = sorted(f.keys())
    assert keys == sorted(tensors), "safe_open and load_file disagree on the tensor names"
    np.savez(npz, **tensors)
    save_file(tensors, rewritten, metadata=metadata)
    print(json.dumps({
        "safetensors": safetensors.__version__,
        "metadata": metadata,
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()},
    }))


if __name__ == "__main__":
    main()
