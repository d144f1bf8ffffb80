"""Results of a benchmark script as docs/bench/<script>.json (imported by scripts/bench*.sh).

The file holds what docs/benchmarks.md shows and nothing else: when and where it ran (date,
CPU model and flags, cores), the versions of allconv, its engines and the peers, the command
that reproduces it, and each table, every figure a number with the decimals it is printed
with. tests/docs_figures.rs renders docs/benchmarks.md's tables from these files
(ALLCONV_WRITE_BENCH_TABLES=1) and checks that the page shows exactly that.

A cell is a string (a label) or {"value": x, "decimals": d} (a figure), or null (empty).
"""
import datetime
import json
import os
import platform
import re
import subprocess

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def fig(value, decimals):
    """A figure: the number and how many decimals the table prints."""
    return {"value": round(float(value), 6), "decimals": int(decimals)}


def _cpu():
    model, flags = platform.machine(), []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == platform.machine():
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
                         if f in have]
    except OSError:
        pass
    return {"model": model, "flags": flags, "cores": os.cpu_count()}


def _lock_version(crate):
    text = open(os.path.join(ROOT, "Cargo.lock")).read()
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(crate), text)
    return m.group(1) if m else None


def _libtorch():
    try:
        text = open(os.path.join(ROOT, ".venv-torch/libtorch/version.py")).read()
    except OSError:
        return None
    m = re.search(r"__version__ = '([^'+]+)", text)
    return m.group(1) if m else None


def _out(cmd):
    """A command's output on one line (versions can span several)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return "; ".join(l.strip() for l in out.splitlines() if l.strip()) or None


def versions(binary, peers=()):
    """allconv (its --version line), rustc, the engines built in, and each peer's string."""
    v = {
        "allconv": _out([binary, "--version"]),
        "rustc": _out(["rustc", "--version"]),
        "tract": _lock_version("tract-onnx"),
        "tch": _lock_version("tch"),
        "libtorch": _libtorch(),
        "hdf5-metno": _lock_version("hdf5-metno"),
    }
    if peers:
        v["peers"] = "; ".join(peers)
    return {k: x for k, x in v.items() if x}


def write(script, command, versions, tables, name=None):
    """Write docs/bench/<name>.json (default: the script's name; whole or not at all) and
    return its path."""
    doc = {
        "script": f"scripts/{script}.sh",
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": _cpu(),
        "versions": versions,
        "tables": tables,
    }
    d = os.path.join(ROOT, "docs", "bench")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name or script}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path
