//! Hardened, read-only access to Keras HDF5 files.
//!
//! Keras files come from strangers. This module is the only place that touches HDF5 and
//! it refuses on purpose: soft and external links (arbitrary file reads), external raw
//! storage and virtual datasets (same), filter plugins (dlopen of foreign code), and
//! datasets that declare far more data than the file can hold (allocation bombs).
//! Attribute strings are read in every encoding Keras and h5py have written.

use crate::error::{Error, Result};
use crate::ir::Tensor;
use hdf5::dataset::Layout;
use hdf5_sys::h5i::hid_t;
use hdf5_sys::h5l::{H5L_info2_t, H5L_type_t, H5Lexists, H5Lget_info2};
use hdf5_sys::h5p::H5P_DEFAULT;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

const HDF5_MAGIC: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
/// A dataset may declare at most this many times the file size (compressed data).
const MAX_DECLARED_OVER_FILE: u64 = 1000;
const MAX_ATTR_ITEMS: usize = 1 << 20;

extern "C" {
    // Declared here: hdf5-sys gives it a pointer argument, the C API takes a mask.
    fn H5PLset_loading_state(plugin_control_mask: std::os::raw::c_uint) -> hdf5_sys::h5::herr_t;
}

/// An open Keras `.h5` file.
pub struct H5File {
    file: hdf5::File,
    path: PathBuf,
    size: u64,
}

impl H5File {
    /// Open read-only after checking the HDF5 signature; plugin loading is switched off
    /// before the library sees the file.
    pub fn open(path: &Path) -> Result<H5File> {
        let io = |message: String| Error::Io {
            file: path.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
        if !meta.is_file() {
            return Err(io("not a regular file".into()));
        }
        check_signature(path)?;
        check_global_heaps(path)?;
        hdf5::sync::sync(|| unsafe {
            H5PLset_loading_state(0);
        });
        let file = open_read_only_unlocked(path).map_err(|e| Error::NotHdf5 {
            file: path.to_path_buf(),
            message: explain_open_error(&e.to_string()),
        })?;
        Ok(H5File {
            file,
            path: path.to_path_buf(),
            size: meta.len(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unsafe_obj(&self, object: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeHdf5 {
            file: self.path.clone(),
            object: object.into(),
            reason: reason.into(),
        }
    }

    fn format_err(&self, what: &str, message: impl Into<String>) -> Error {
        Error::BadFormat {
            file: self.path.clone(),
            what: what.into(),
            message: message.into(),
        }
    }

    /// Whether `path` exists, every component being a hard link. A soft or external link
    /// anywhere on the way is an error, never followed.
    pub fn exists(&self, path: &str) -> Result<bool> {
        let mut sofar = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            sofar.push('/');
            sofar.push_str(part);
            let c = CString::new(sofar.as_str())
                .map_err(|_| self.format_err(path, "name contains a NUL byte"))?;
            let fid = self.file.id();
            let (exists, kind) = hdf5::sync::sync(|| unsafe {
                if H5Lexists(fid, c.as_ptr(), H5P_DEFAULT) <= 0 {
                    return (false, None);
                }
                let mut info = H5L_info2_t::default();
                if H5Lget_info2(fid, c.as_ptr(), &mut info, H5P_DEFAULT) < 0 {
                    return (true, None);
                }
                (true, Some(info.type_))
            });
            match (exists, kind) {
                (false, _) => return Ok(false),
                (true, Some(H5L_type_t::H5L_TYPE_HARD)) => {}
                (true, Some(H5L_type_t::H5L_TYPE_SOFT)) => {
                    return Err(self.unsafe_obj(&sofar, "soft link (links are never followed)"))
                }
                (true, Some(H5L_type_t::H5L_TYPE_EXTERNAL)) => {
                    return Err(
                        self.unsafe_obj(&sofar, "external link to another file (never followed)")
                    )
                }
                (true, _) => return Err(self.unsafe_obj(&sofar, "link of unknown type")),
            }
        }
        Ok(true)
    }

    pub fn group(&self, path: &str) -> Result<hdf5::Group> {
        if !self.exists(path)? {
            return Err(self.format_err(path, "group not found"));
        }
        self.file
            .group(path)
            .map_err(|e| self.format_err(path, e.to_string()))
    }

    fn location(&self, path: &str) -> Result<hdf5::Location> {
        if path.is_empty() || path == "/" {
            return Ok((**self.file).clone());
        }
        Ok((*self.group(path)?).clone())
    }

    /// Names of the attributes on a group ("/" for the root).
    pub fn attr_names(&self, path: &str) -> Result<Vec<String>> {
        self.location(path)?
            .attr_names()
            .map_err(|e| self.format_err(path, e.to_string()))
    }

    /// A string attribute stored as a scalar or a one-element array, fixed or variable
    /// length. `None` when absent.
    pub fn string_attr(&self, path: &str, name: &str) -> Result<Option<String>> {
        let loc = self.location(path)?;
        if !loc
            .attr_names()
            .map_err(|e| self.format_err(path, e.to_string()))?
            .iter()
            .any(|n| n == name)
        {
            return Ok(None);
        }
        let what = format!("{path} attribute {name}");
        let attr = loc
            .attr(name)
            .map_err(|e| self.format_err(&what, e.to_string()))?;
        let mut v = read_strings(attr.id()).map_err(|m| self.format_err(&what, m))?;
        match v.len() {
            1 => Ok(v.pop()),
            n => Err(self.format_err(&what, format!("expected one string, found {n}"))),
        }
    }

    /// A list-of-strings attribute (`layer_names`, `weight_names`) in any encoding: fixed
    /// NUL-padded or variable length, an empty list stored as a zero-length float array,
    /// or split by Keras >= 2.1.5 into `name0`, `name1`, ... when it exceeded 64 KB.
    pub fn string_list_attr(&self, path: &str, name: &str) -> Result<Option<Vec<String>>> {
        let loc = self.location(path)?;
        let names = loc
            .attr_names()
            .map_err(|e| self.format_err(path, e.to_string()))?;
        let read = |n: &str| -> Result<Vec<String>> {
            let what = format!("{path} attribute {n}");
            let attr = loc
                .attr(n)
                .map_err(|e| self.format_err(&what, e.to_string()))?;
            read_strings(attr.id()).map_err(|m| self.format_err(&what, m))
        };
        if names.iter().any(|n| n == name) {
            return read(name).map(Some);
        }
        let mut out = Vec::new();
        let mut chunk = 0;
        while names.iter().any(|n| *n == format!("{name}{chunk}")) {
            out.extend(read(&format!("{name}{chunk}"))?);
            chunk += 1;
        }
        Ok(if chunk == 0 { None } else { Some(out) })
    }

    /// Open a weight dataset and run every safety check on its metadata, reading no data:
    /// hard links only, no virtual or external storage, no filter beyond deflate, shuffle
    /// and fletcher32, a float type, rank at most 5, and no more declared bytes than the
    /// file can hold (a shape bomb). Returns the dataset and its declared shape.
    fn open_weight(&self, path: &str) -> Result<(hdf5::Dataset, Vec<usize>)> {
        if !self.exists(path)? {
            return Err(self.format_err(path, "dataset not found"));
        }
        let ds = self
            .file
            .dataset(path)
            .map_err(|e| self.format_err(path, e.to_string()))?;
        let dcpl = ds
            .create_plist()
            .map_err(|e| self.format_err(path, e.to_string()))?;
        if matches!(dcpl.layout(), Layout::Virtual) {
            return Err(self.unsafe_obj(path, "virtual dataset (reads other files)"));
        }
        if !dcpl.external().is_empty() {
            return Err(self.unsafe_obj(path, "external raw storage (reads other files)"));
        }
        for f in dcpl.filters() {
            use hdf5::filters::Filter;
            if !matches!(f, Filter::Deflate(_) | Filter::Shuffle | Filter::Fletcher32) {
                return Err(self.unsafe_obj(path, format!("unsupported HDF5 filter {f:?}")));
            }
        }
        let shape = ds.shape();
        if shape.len() > 5 {
            return Err(self.format_err(path, format!("rank {} is not a weight", shape.len())));
        }
        let dtype = ds
            .dtype()
            .map_err(|e| self.format_err(path, e.to_string()))?;
        let desc = dtype
            .to_descriptor()
            .map_err(|e| self.format_err(path, e.to_string()))?;
        let item = match desc {
            hdf5::types::TypeDescriptor::Float(s) => s as u64,
            other => {
                return Err(self.format_err(path, format!("weights must be floats, found {other}")))
            }
        };
        let declared = shape
            .iter()
            .try_fold(item, |acc, &d| acc.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        let max_dataset = crate::limits::current().h5_dataset_bytes;
        if declared > max_dataset {
            return Err(self.unsafe_obj(
                path,
                format!(
                    "declares {shape:?} ({declared} bytes), above the {} limit for one weight: shape bomb (--limit h5-dataset-bytes=SIZE raises it)",
                    crate::limits::bytes_text(max_dataset)
                ),
            ));
        }
        if declared > self.size.saturating_mul(MAX_DECLARED_OVER_FILE)
            || (!dcpl.has_filters() && declared > self.size)
        {
            return Err(self.unsafe_obj(
                path,
                format!(
                    "declares {shape:?} ({declared} bytes) in a file of {} bytes: shape bomb",
                    self.size
                ),
            ));
        }
        Ok((ds, shape))
    }

    /// The declared shape of a weight dataset, from its HDF5 dataspace, after the safety
    /// checks of [`Self::read_tensor`]; no data is read. The Keras reader compares it with
    /// the shape the config implies before it reads anything.
    pub fn weight_shape(&self, path: &str) -> Result<Vec<usize>> {
        self.open_weight(path).map(|(_, shape)| shape)
    }

    /// Read a float dataset as f32 after the safety checks. `expected` is checked against
    /// the declared shape before a byte is read, so a wrong or hostile shape never
    /// allocates.
    pub fn read_tensor(&self, path: &str, expected: Option<&[usize]>) -> Result<Tensor> {
        let (ds, shape) = self.open_weight(path)?;
        if let Some(exp) = expected {
            if exp != shape.as_slice() {
                return Err(self.format_err(path, format!("shape {shape:?}, expected {exp:?}")));
            }
        }
        let data: Vec<f32> = ds
            .read_raw()
            .map_err(|e| self.format_err(path, e.to_string()))?;
        Tensor::new(shape, data).map_err(|e| self.format_err(path, e.to_string()))
    }

    /// Shape of a dataset, without reading it (after the link checks).
    pub fn dataset_shape(&self, path: &str) -> Result<Option<Vec<usize>>> {
        if !self.exists(path)? {
            return Ok(None);
        }
        let ds = self
            .file
            .dataset(path)
            .map_err(|e| self.format_err(path, e.to_string()))?;
        Ok(Some(ds.shape()))
    }
}

/// Open read-only without HDF5's advisory file lock: a reader needs none, and the lock
/// fails spuriously (`unable to lock file`) while any other handle holds the file, such as
/// a writer in this process or Keras in another.
/// HDF5 1.14's global-heap decoder (`H5HG__cache_heap_deserialize`) loops forever on a
/// free-space object (index 0) of length 0: for index 0 it advances by the object's
/// length alone, so the cursor returns to the object's start. Fuzzing found it (the
/// reproducers are `tests/fuzz_regressions/h5/hang-*.h5`; variable-length string
/// attributes live in global heaps). Every global heap collection in the file (`GCOL`,
/// 8-byte lengths, as h5py writes) is walked the way HDF5 walks it, and a file with that
/// object is refused before HDF5 sees it. A collection that HDF5 would reject anyway
/// (overflow, bad version) ends the walk.
fn check_global_heaps(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const HEADER: u64 = 16; // "GCOL", version, 3 reserved, 8-byte collection size
    const MAX_COLLECTION: u64 = 64 << 20;
    let io = |e: std::io::Error| Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    // Find every "GCOL" in chunks that overlap by 3 bytes.
    let mut offsets = vec![];
    let mut buf = vec![0u8; 8 << 20];
    let mut base = 0u64;
    loop {
        f.seek(SeekFrom::Start(base)).map_err(io)?;
        let n = f.read(&mut buf).map_err(io)?;
        if n < 4 {
            break;
        }
        offsets.extend(
            buf[..n]
                .windows(4)
                .enumerate()
                .filter(|(_, w)| w == b"GCOL")
                .map(|(i, _)| base + i as u64),
        );
        if base + (n as u64) >= len {
            break;
        }
        base += n as u64 - 3;
    }
    for o in offsets {
        let mut head = [0u8; HEADER as usize];
        f.seek(SeekFrom::Start(o)).map_err(io)?;
        if f.read_exact(&mut head).is_err() || head[4] != 1 {
            continue;
        }
        let size = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        if size < HEADER || size > MAX_COLLECTION || o.saturating_add(size) > len {
            continue;
        }
        let mut heap = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(o)).map_err(io)?;
        f.read_exact(&mut heap).map_err(io)?;
        let end = heap.len();
        let mut p = HEADER as usize;
        while p < end {
            if p + HEADER as usize > end {
                break; // HDF5 takes the rest as free space and stops
            }
            let idx = u16::from_le_bytes([heap[p], heap[p + 1]]);
            let obj = u64::from_le_bytes(heap[p + 8..p + 16].try_into().unwrap_or_default());
            let need = if idx > 0 {
                obj.checked_add(7).map(|v| HEADER + (v & !7))
            } else {
                Some(obj)
            };
            match need {
                Some(0) => {
                    return Err(Error::UnsafeHdf5 {
                        file: path.to_path_buf(),
                        object: format!("global heap collection at byte {o}"),
                        reason:
                            "a free-space object of length 0, on which HDF5's decoder loops forever"
                                .into(),
                    })
                }
                Some(n) if (p as u64).saturating_add(n) <= end as u64 => p += n as usize,
                _ => break, // HDF5 reports an overflow itself
            }
        }
    }
    Ok(())
}

fn open_read_only_unlocked(path: &Path) -> hdf5::Result<hdf5::File> {
    use hdf5_sys::h5f::{H5Fopen, H5F_ACC_RDONLY};
    use hdf5_sys::h5p::{H5Pclose, H5Pcreate, H5Pset_file_locking, H5P_CLS_FILE_ACCESS};
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| hdf5::Error::from("path contains a NUL byte"))?;
    let id = hdf5::sync::sync(|| unsafe {
        let fapl = hdf5::h5check(H5Pcreate(*H5P_CLS_FILE_ACCESS))?;
        let opened = hdf5::h5check(H5Pset_file_locking(fapl, 0, 1))
            .and_then(|_| hdf5::h5check(H5Fopen(c.as_ptr(), H5F_ACC_RDONLY, fapl)));
        H5Pclose(fapl);
        opened
    })?;
    // SAFETY: `id` is a file identifier just returned by H5Fopen; the File owns it.
    unsafe { hdf5::from_id::<hdf5::File>(id) }
}

fn check_signature(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // The superblock sits at 0, 512, 1024, 2048... (after an optional user block).
    let mut offset = 0u64;
    while offset + 8 <= len {
        let mut buf = [0u8; 8];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::Io {
                file: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if &buf == HDF5_MAGIC {
            return Ok(());
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    Err(Error::NotHdf5 {
        file: path.to_path_buf(),
        message: "no HDF5 signature: not an HDF5 file (is it a SavedModel, a .keras zip, or JSON?)"
            .into(),
    })
}

fn explain_open_error(msg: &str) -> String {
    if msg.contains("truncated") || msg.contains("eof") || msg.contains("addr overflow") {
        format!("the file is truncated or corrupt: {msg}")
    } else {
        msg.to_string()
    }
}

/// Read a string attribute of any encoding into a list (one entry for a scalar).
fn read_strings(attr_id: hid_t) -> std::result::Result<Vec<String>, String> {
    use hdf5_sys::h5a::{H5Aget_space, H5Aget_type, H5Aread};
    use hdf5_sys::h5s::{H5Sclose, H5Sget_simple_extent_npoints};
    use hdf5_sys::h5t::*;
    hdf5::sync::sync(|| unsafe {
        let ftype = H5Aget_type(attr_id);
        let space = H5Aget_space(attr_id);
        if ftype < 0 || space < 0 {
            return Err("cannot read the attribute's type".to_string());
        }
        let max_bytes = crate::limits::current().h5_attribute_bytes;
        let too_big = |what: String| {
            format!(
                "attribute holds {what}, above the {} limit (--limit h5-attribute-bytes=SIZE raises it)",
                crate::limits::bytes_text(max_bytes as u64)
            )
        };
        let result = (|| {
            let n = H5Sget_simple_extent_npoints(space);
            if n < 0 || n as usize > MAX_ATTR_ITEMS {
                return Err(format!("attribute has {n} items"));
            }
            let n = n as usize;
            if H5Tget_class(ftype) != H5T_class_t::H5T_STRING {
                // h5py stores an empty Python list as a zero-length float64 array.
                return if n == 0 {
                    Ok(vec![])
                } else {
                    Err("not a string attribute".into())
                };
            }
            if H5Tis_variable_str(ftype) > 0 {
                let mem = H5Tcopy(*H5T_C_S1);
                H5Tset_size(mem, H5T_VARIABLE);
                H5Tset_cset(mem, H5Tget_cset(ftype));
                let mut ptrs: Vec<*mut std::os::raw::c_char> = vec![std::ptr::null_mut(); n];
                let rc = H5Aread(attr_id, mem, ptrs.as_mut_ptr().cast());
                let out = if rc < 0 {
                    Err("cannot read variable-length strings".to_string())
                } else {
                    let mut total = 0usize;
                    let mut v = Vec::with_capacity(n);
                    for p in &ptrs {
                        let s = if p.is_null() {
                            String::new()
                        } else {
                            CStr::from_ptr(*p).to_string_lossy().into_owned()
                        };
                        total += s.len();
                        v.push(s);
                    }
                    H5Treclaim(mem, space, H5P_DEFAULT, ptrs.as_mut_ptr().cast());
                    if total > max_bytes {
                        Err(too_big(format!("{total} bytes")))
                    } else {
                        Ok(v)
                    }
                };
                H5Tclose(mem);
                out
            } else {
                let size = H5Tget_size(ftype);
                if size == 0 {
                    return Err("fixed strings of 0 bytes".into());
                }
                if size.saturating_mul(n) > max_bytes {
                    return Err(too_big(format!("fixed strings of {size} bytes x {n}")));
                }
                let pad = H5Tget_strpad(ftype);
                let mut buf = vec![0u8; size * n];
                if H5Aread(attr_id, ftype, buf.as_mut_ptr().cast()) < 0 {
                    return Err("cannot read fixed-length strings".into());
                }
                Ok(buf
                    .chunks(size)
                    .map(|c| {
                        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                        let s = String::from_utf8_lossy(&c[..end]).into_owned();
                        if pad == H5T_str_t::H5T_STR_SPACEPAD {
                            s.trim_end().to_string()
                        } else {
                            s
                        }
                    })
                    .collect())
            }
        })();
        H5Tclose(ftype);
        H5Sclose(space);
        result
    })
}
