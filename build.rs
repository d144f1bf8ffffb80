//! - `$OUT_DIR/long_version.txt` for `allconv --version`: the tract, HDF5 and libtorch versions
//!   this build has in it (each only where its feature is on).
//! - Only for the `torch` feature: an rpath to libtorch's lib directory, so binaries and
//!   tests built against `$LIBTORCH` (see scripts/libtorch.sh) run without LD_LIBRARY_PATH.
//! - Only for the `ort` feature: `ALLCONV_ORT_DYLIB`, the ONNX Runtime library to open
//!   (see [`ort_dylib`]).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=ALLCONV_TORCH_CUDA");
    println!("cargo:rerun-if-env-changed=ALLCONV_ORT_DYLIB");
    long_version();
    ort_dylib();
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let lib = match (std::env::var("LIBTORCH_LIB"), std::env::var("LIBTORCH")) {
        (Ok(l), _) => format!("{l}/lib"),
        (_, Ok(t)) => format!("{t}/lib"),
        _ => return,
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // The linker's --as-needed drops libtorch_cuda.so (no symbol of it is used), so
        // `Device::Cuda` is unavailable: keep it when asked (needs `scripts/libtorch.sh --cuda`).
        if std::env::var("ALLCONV_TORCH_CUDA").is_ok_and(|v| v == "1") {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}

/// `long_version.txt`: one line per library built in, e.g.
/// `0.1.0` / `tract 0.23.0` / `HDF5 1.14.6 (static, hdf5-metno-sys 0.10.1)` /
/// `libtorch 2.11.0+cu130 (tch 0.24.0)`. Crate versions come from Cargo.lock, HDF5's from
/// the `H5public.h` that hdf5-metno-sys built against (its `DEP_HDF5_INCLUDE`), libtorch's
/// from `$LIBTORCH` (`version.py` of the torch wheel, or `build-version` of a libtorch zip).
fn long_version() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let lock_path = Path::new(&manifest).join("Cargo.lock");
    watch(&lock_path);
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    let crate_version = |name: &str| locked_version(&lock, name).unwrap_or("unknown".into());
    let feature = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{f}")).is_some();

    let mut lines = vec![std::env::var("CARGO_PKG_VERSION").unwrap_or_default()];
    if feature("RUNTIME") {
        lines.push(format!(
            "tract {} (ONNX and NNEF runtime)",
            crate_version("tract-onnx")
        ));
    }
    if feature("KERAS") {
        let hdf5 = std::env::var("DEP_HDF5_INCLUDE")
            .ok()
            .and_then(|dir| {
                let header = Path::new(&dir).join("H5public.h");
                watch(&header);
                hdf5_version(&std::fs::read_to_string(header).ok()?)
            })
            .unwrap_or("unknown".into());
        lines.push(format!(
            "HDF5 {hdf5} (static, hdf5-metno-sys {})",
            crate_version("hdf5-metno-sys")
        ));
    }
    if feature("TORCH") {
        lines.push(format!(
            "libtorch {} (tch {})",
            libtorch_version().unwrap_or("unknown".into()),
            crate_version("tch")
        ));
    }
    if feature("ORT") {
        lines.push(format!(
            "ONNX Runtime: loaded at run time (ort {}, $ORT_DYLIB_PATH or the setup's library)",
            crate_version("ort")
        ));
    }
    let mut features: Vec<&str> = ["edge", "keras", "torch", "ort"]
        .into_iter()
        .filter(|f| feature(&f.to_uppercase()))
        .collect();
    if features.is_empty() {
        features.push("none");
    }
    lines.push(format!("features: {}", features.join(", ")));
    // src/main.rs includes it (a rustc-env value cannot hold newlines).
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("long_version.txt");
    if let Err(e) = std::fs::write(&out, lines.join("\n")) {
        panic!("writing {}: {e}", out.display());
    }
}

/// Rerun when `path` changes; nothing for a file that is not there (cargo would rerun
/// the build script on every build).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The version of `name` in a Cargo.lock (the first entry, if several).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let want = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == want {
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_string());
        }
    }
    None
}

/// `H5_VERS_STR` of an `H5public.h`, e.g. `1.14.6`.
fn hdf5_version(header: &str) -> Option<String> {
    header.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("#define H5_VERS_STR")?;
        Some(rest.trim().trim_matches('"').to_string())
    })
}

/// libtorch's version from `$LIBTORCH_LIB` or `$LIBTORCH`: the torch wheel's `version.py`
/// (`__version__ = '2.11.0+cu130'`) or a libtorch archive's `build-version`.
fn libtorch_version() -> Option<String> {
    let root = std::env::var("LIBTORCH_LIB")
        .or_else(|_| std::env::var("LIBTORCH"))
        .ok()?;
    let root = Path::new(&root);
    for f in ["version.py", "build-version"] {
        watch(&root.join(f));
    }
    if let Ok(py) = std::fs::read_to_string(root.join("version.py")) {
        let v = py.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("__version__")?.trim_start();
            let rest = rest.strip_prefix('=')?.trim();
            Some(rest.trim_matches(|c| c == '\'' || c == '"').to_string())
        });
        if v.is_some() {
            return v;
        }
    }
    let v = std::fs::read_to_string(root.join("build-version")).ok()?;
    Some(v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Only for the `ort` feature: `ALLCONV_ORT_DYLIB`, the ONNX Runtime library the engine opens
/// when `$ORT_DYLIB_PATH` is not set at run time: `$ALLCONV_ORT_DYLIB` at build time if set,
/// else `.venv-ort/libonnxruntime.so` in this checkout (made by scripts/onnxruntime.sh; it
/// need not exist yet: the engine's error names it and the command that installs it).
fn ort_dylib() {
    if std::env::var_os("CARGO_FEATURE_ORT").is_none() {
        return;
    }
    let path = std::env::var("ALLCONV_ORT_DYLIB").unwrap_or_else(|_| {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        Path::new(&manifest)
            .join(".venv-ort")
            .join("libonnxruntime.so")
            .display()
            .to_string()
    });
    println!("cargo:rustc-env=ALLCONV_ORT_DYLIB={path}");
}
