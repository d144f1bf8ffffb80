//! A deadline on reading one `.h5` file: the second line of defence against HDF5's C code
//! looping forever on a malformed file. Fuzzing found one such loop (a corrupt global
//! heap: `H5HG__cache_heap_deserialize`, reproducers `tests/fuzz_regressions/h5/hang-*.h5`),
//! which `h5::check_global_heaps` now refuses before HDF5 reads the file; others may
//! exist. Nothing in Rust can stop a thread looping inside C, so the command-line tool
//! arms this guard: when a read overruns the deadline, it prints an error naming the file
//! and ends the process with status 1 instead of hanging. Library users who read
//! untrusted files can arm it too, or read them in a child process.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Seconds a read may take when armed; 0 = not armed (the library's default).
static DEADLINE_S: AtomicU64 = AtomicU64::new(0);

/// The command line's default: a full-width ResNet50 (137 MB) reads in ~1.5 s here.
pub const DEFAULT_DEADLINE_S: u64 = 120;

/// Arm the guard for every later read (0 disarms).
pub fn arm(seconds: u64) {
    DEADLINE_S.store(seconds, Ordering::Relaxed);
}

/// Watches one read while alive; dropping it means the read finished.
pub struct Guard {
    done: Option<mpsc::Sender<()>>,
}

impl Guard {
    pub fn start(path: &Path) -> Guard {
        let secs = DEADLINE_S.load(Ordering::Relaxed);
        if secs == 0 {
            return Guard { done: None };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let file = path.display().to_string();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!(
                    "error: {file}: HDF5 did not finish reading this file within {secs} s. A malformed file can send the HDF5 C library into an endless loop; the file is refused. (ALLCONV_H5_DEADLINE_S sets the limit.)"
                );
                std::process::exit(1);
            }
        });
        Guard { done: Some(tx) }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}
