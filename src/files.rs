//! Output files are written whole or not at all: a temp file in the same directory,
//! synced, then renamed into place. Every writer of the project goes through here.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Run `f` on a fresh temp path beside `path`, then rename it into place; on any error
/// the temp file is removed and `path` is untouched. Returns what `f` returned.
pub fn atomic_write<T>(path: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let io = |message: String| Error::Io {
        file: path.to_path_buf(),
        message,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io("not a file path".into()))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{nanos}", std::process::id()));
    // Claim the name first: fails cleanly on an unwritable directory.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io(format!("cannot create a file in {}: {e}", dir.display())))?;
    let result = f(&tmp).and_then(|value| {
        std::fs::File::open(&tmp)
            .and_then(|h| h.sync_all())
            .map_err(|e| io(format!("flushing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| io(format!("renaming into place: {e}")))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::Io {
            file: path.to_path_buf(),
            message: e.to_string(),
        })
    })
}

/// Read a whole file, naming it on error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_bytes(&read(path)?))
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
