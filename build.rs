//! Only for the `torch` feature: an rpath to libtorch's lib directory, so binaries and
//! tests built against `$LIBTORCH` (see scripts/libtorch.sh) run without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=ALLCONV_TORCH_CUDA");
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
