//! ONNX Runtime (the `ort` feature): an ONNX model run in-process by Microsoft's runtime,
//! beside tract. The library (`libonnxruntime.so`) is opened at run time, never linked:
//! from `$ORT_DYLIB_PATH` when set, else from the path recorded at build time
//! (`.venv-ort/libonnxruntime.so`, made by scripts/onnxruntime.sh from the PyPI
//! onnxruntime wheel). A library that is missing, unloadable or too old is an error that
//! names the path tried and how to get one, never a crash.

use super::tract::Output;
use crate::error::{Error, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The library `build.rs` recorded: `$ALLCONV_ORT_DYLIB` at build time, else
/// `.venv-ort/libonnxruntime.so` in the checkout that built this binary.
pub const BUILD_DYLIB: &str = env!("ALLCONV_ORT_DYLIB");

/// The command that installs the library where this build looks for it.
pub const SETUP_HINT: &str = "run scripts/onnxruntime.sh (it installs the PyPI wheel onnxruntime==1.32.0 into .venv-ort), or set ORT_DYLIB_PATH to a libonnxruntime.so of ONNX Runtime 1.17 or newer";

/// The ONNX Runtime library this process uses, once opened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Library {
    pub path: PathBuf,
    /// Where the path came from: `ORT_DYLIB_PATH` or `build`.
    pub source: &'static str,
    /// The library's own version (`1.32.0`), or `unknown`.
    pub version: String,
}

struct Loaded {
    env: ort::environment::Environment,
    library: Library,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The library to open and where its path came from: `$ORT_DYLIB_PATH` if set and not
/// empty, else [`BUILD_DYLIB`]. A relative path is taken from the working directory.
pub fn dylib_path() -> (PathBuf, &'static str) {
    let (p, source) = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "ORT_DYLIB_PATH"),
        _ => (PathBuf::from(BUILD_DYLIB), "build"),
    };
    (std::path::absolute(&p).unwrap_or(p), source)
}

fn source_text(source: &str) -> &'static str {
    if source == "ORT_DYLIB_PATH" {
        "from $ORT_DYLIB_PATH"
    } else {
        "the path recorded at build time"
    }
}

/// Open ONNX Runtime (once per process) and return which library it is. Later calls
/// return the library opened first, whatever `$ORT_DYLIB_PATH` says by then.
pub fn library() -> Result<&'static Library> {
    Ok(&loaded()?.library)
}

/// Whether the library opens (for `--backend auto`); the error says why not.
pub fn available() -> std::result::Result<&'static Library, String> {
    library().map_err(|e| e.to_string())
}

fn loaded() -> Result<&'static Loaded> {
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let _guard = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let (path, source) = dylib_path();
    let fail = |why: String| {
        Error::Other(format!(
            "ONNX Runtime: {why} ({} {}): {SETUP_HINT}",
            path.display(),
            source_text(source)
        ))
    };
    if !path.is_file() {
        return Err(fail("no library at the path tried".into()));
    }
    // `init_from` reports a failed dlopen or a too-old library as an error; the crate's
    // other steps assert on what a broken library returns, so a panic is caught too.
    let opened = std::panic::catch_unwind(|| -> std::result::Result<_, String> {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        let env = builder
            .with_name("allconv")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(env)
    });
    let env = match opened {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return Err(fail(format!("cannot use the library: {why}"))),
        Err(_) => return Err(fail("the library failed to initialise".into())),
    };
    let library = Library {
        version: loaded_version(&path).unwrap_or_else(|| "unknown".into()),
        path: path.clone(),
        source,
    };
    Ok(LOADED.get_or_init(|| Loaded { env, library }))
}

/// The version the library reports (`OrtGetApiBase()->GetVersionString()`, e.g. `1.32.0`),
/// read from the copy `ort` already opened (`RTLD_NOLOAD`: nothing new is loaded).
#[cfg(not(unix))]
fn loaded_version(_path: &Path) -> Option<String> {
    None
}

/// The version the library reports (`OrtGetApiBase()->GetVersionString()`, e.g. `1.32.0`),
/// read from the copy `ort` already opened (`RTLD_NOLOAD`: nothing new is loaded).
#[cfg(unix)]
fn loaded_version(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: the handle is only taken for a library already loaded; the symbol is the C
    // API's entry point, whose signature ort-sys declares; the version string is static.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if sym.is_null() {
            None
        } else {
            let get_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase =
                std::mem::transmute(sym);
            let base = get_base();
            if base.is_null() {
                None
            } else {
                let v = ((*base).GetVersionString)();
                (!v.is_null()).then(|| std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
            }
        };
        libc::dlclose(handle);
        version
    }
}

fn oerr<R>(what: &'static str) -> impl Fn(ort::Error<R>) -> Error {
    move |e| Error::Other(format!("ONNX Runtime: {what}: {e}"))
}

/// An ONNX model in an ONNX Runtime session, run with fixed input shapes.
pub struct OrtModel {
    /// `Session::run` takes `&mut`: one run at a time per model.
    session: Mutex<Session>,
    input_names: Vec<String>,
    input_shapes: Vec<Vec<usize>>,
    threads: usize,
}

impl OrtModel {
    /// Load an ONNX model with its (single) input of `input_shape` (batch included), run
    /// on `threads` intra-op threads (at least 1).
    pub fn load(onnx: &[u8], input_shape: &[usize], threads: usize) -> Result<OrtModel> {
        Self::load_multi(onnx, &[input_shape.to_vec()], threads)
    }

    /// Load a model with one shape per graph input (batch included).
    pub fn load_multi(
        onnx: &[u8],
        input_shapes: &[Vec<usize>],
        threads: usize,
    ) -> Result<OrtModel> {
        let env = &loaded()?.env;
        let threads = threads.max(1);
        let session = Session::builder(env)
            .map_err(oerr("making a session"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(oerr("setting the optimisation level"))?
            .with_intra_threads(threads)
            .map_err(oerr("setting the threads"))?
            .commit_from_memory(onnx)
            .map_err(oerr("loading the ONNX model"))?;
        let input_names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        if input_names.len() != input_shapes.len() {
            return Err(Error::Other(format!(
                "the model has {} inputs, {} shapes given",
                input_names.len(),
                input_shapes.len()
            )));
        }
        Ok(OrtModel {
            session: Mutex::new(session),
            input_names,
            input_shapes: input_shapes.to_vec(),
            threads,
        })
    }

    /// Load an ONNX file.
    pub fn load_file(path: &Path, input_shapes: &[Vec<usize>], threads: usize) -> Result<OrtModel> {
        let bytes = crate::files::read(path)?;
        Self::load_multi(&bytes, input_shapes, threads)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    }

    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run on `data` (row-major, the input's shape); returns every graph output in order.
    pub fn run(&self, data: &[f32]) -> Result<Vec<Output>> {
        self.run_multi(&[data])
    }

    /// Run with one buffer per graph input.
    pub fn run_multi(&self, data: &[&[f32]]) -> Result<Vec<Output>> {
        if data.len() != self.input_shapes.len() {
            return Err(Error::Other(format!(
                "the model has {} inputs, {} given",
                self.input_shapes.len(),
                data.len()
            )));
        }
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
        for ((name, shape), d) in self.input_names.iter().zip(&self.input_shapes).zip(data) {
            let n: usize = shape.iter().product();
            if d.len() != n {
                return Err(Error::Other(format!(
                    "input {name}: {} values for shape {shape:?} ({n})",
                    d.len()
                )));
            }
            let t = TensorRef::from_array_view((shape.clone(), *d))
                .map_err(oerr("building the input"))?;
            inputs.push((Cow::Borrowed(name.as_str()), t.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outs = session.run(inputs).map_err(oerr("running"))?;
        outs.iter()
            .map(|(name, v)| {
                let (shape, values) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| Error::Other(format!("ONNX Runtime: output {name}: {e}")))?;
                Ok(Output {
                    shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                    data: values.to_vec(),
                })
            })
            .collect()
    }
}

/// Load and run once.
pub fn run_once(
    onnx: &[u8],
    input_shape: &[usize],
    data: &[f32],
    threads: usize,
) -> Result<Vec<Output>> {
    OrtModel::load(onnx, input_shape, threads)?.run(data)
}
