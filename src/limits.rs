//! What one untrusted input may cost before allconv refuses it with an error: image sizes,
//! HDF5 dataset and attribute sizes, JSON size and depth, layer counts, and the activation
//! memory a model's declared shapes imply at the chosen input size.
//!
//! The defaults fit every published model and real mammogram with room to spare. One
//! process-wide setting, read where each parser checks, so a user raises (or lowers) a
//! bound once on the command line (`--limit NAME=VALUE`) and every reader obeys it.

use crate::error::Error;
use std::sync::{OnceLock, RwLock};

/// Every bound, in the units its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted image width or height.
    pub image_side: usize,
    /// Largest accepted image pixel count.
    pub image_pixels: usize,
    /// Largest single HDF5 dataset (one weight array) read from a file.
    pub h5_dataset_bytes: u64,
    /// Largest single HDF5 attribute (the model config JSON lives in one).
    pub h5_attribute_bytes: usize,
    /// Largest model config JSON.
    pub json_bytes: usize,
    /// Deepest JSON nesting.
    pub json_depth: usize,
    /// Most layers in one model, nested models included.
    pub layers: usize,
    /// Most activation memory live at once when a model runs at the chosen input size
    /// (estimated from the declared shapes before anything runs).
    pub activation_bytes: u64,
}

/// One bound's command-line name, what it bounds, and how it is read and written.
pub struct LimitName {
    pub name: &'static str,
    pub about: &'static str,
    pub bytes: bool,
}

/// The names `--limit NAME=VALUE` accepts, in the order the README lists them.
pub const NAMES: &[LimitName] = &[
    LimitName {
        name: "image-side",
        about: "largest image width or height",
        bytes: false,
    },
    LimitName {
        name: "image-pixels",
        about: "largest image pixel count",
        bytes: false,
    },
    LimitName {
        name: "h5-dataset-bytes",
        about: "largest HDF5 dataset (one weight array)",
        bytes: true,
    },
    LimitName {
        name: "h5-attribute-bytes",
        about: "largest HDF5 attribute (the model config)",
        bytes: true,
    },
    LimitName {
        name: "json-bytes",
        about: "largest model config JSON",
        bytes: true,
    },
    LimitName {
        name: "json-depth",
        about: "deepest JSON nesting",
        bytes: false,
    },
    LimitName {
        name: "layers",
        about: "most layers in one model, nested models included",
        bytes: false,
    },
    LimitName {
        name: "activation-bytes",
        about: "most activation memory live at once at the chosen input size",
        bytes: true,
    },
];

/// Used when the machine's memory cannot be read.
const FALLBACK_MEMORY: u64 = 16 << 30;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // OpenCV and DICOM both top out at 65535 per side.
            image_side: 65_535,
            // 2^28 pixels: a 16-bit 65535x4096 scan fits, a header claiming 10^5 x 10^5 does not.
            image_pixels: 1 << 28,
            // Keras never wrote a single weight this large (VGG16's biggest is 411 MB).
            h5_dataset_bytes: 4 << 30,
            h5_attribute_bytes: 64 << 20,
            json_bytes: 64 << 20,
            // Keras configs nest about 5 levels per nested model.
            json_depth: 100,
            // ResNet152 has 517 layers, DenseNet201 708.
            layers: 20_000,
            // Three quarters of the machine: room for weights, the process and the OS.
            activation_bytes: machine_memory().unwrap_or(FALLBACK_MEMORY) / 4 * 3,
        }
    }
}

static CURRENT: RwLock<Option<Limits>> = RwLock::new(None);
/// The defaults, computed once (they read the machine's memory).
static DEFAULT: OnceLock<Limits> = OnceLock::new();

/// The bounds in force: the defaults unless [`set`] changed them.
pub fn current() -> Limits {
    let set = *CURRENT.read().unwrap_or_else(|e| e.into_inner());
    set.unwrap_or_else(|| *DEFAULT.get_or_init(Limits::default))
}

/// Replace the bounds for the whole process (the command line does this once at start).
pub fn set(limits: Limits) {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(limits);
}

impl Limits {
    /// Apply one `NAME=VALUE` override. Byte values take K, M, G or T suffixes (powers of
    /// 1024, `KiB` spellings too).
    pub fn with(mut self, spec: &str) -> Result<Limits, String> {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("--limit {spec:?}: expected NAME=VALUE ({})", names()))?;
        let name = name.trim();
        let known = NAMES
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("--limit {spec:?}: unknown limit {name:?} ({})", names()))?;
        let n = parse_amount(value.trim(), known.bytes)
            .ok_or_else(|| format!("--limit {spec:?}: {value:?} is not a positive amount"))?;
        let usize_n = usize::try_from(n).map_err(|_| format!("--limit {spec:?}: too large"))?;
        match name {
            "image-side" => self.image_side = usize_n,
            "image-pixels" => self.image_pixels = usize_n,
            "h5-dataset-bytes" => self.h5_dataset_bytes = n,
            "h5-attribute-bytes" => self.h5_attribute_bytes = usize_n,
            "json-bytes" => self.json_bytes = usize_n,
            "json-depth" => self.json_depth = usize_n,
            "layers" => self.layers = usize_n,
            "activation-bytes" => self.activation_bytes = n,
            _ => unreachable!("every name in NAMES is matched"),
        }
        Ok(self)
    }

    /// The value of a bound by its command-line name, as a user would write it.
    pub fn value_text(&self, name: &str) -> Option<String> {
        let v = match name {
            "image-side" => self.image_side as u64,
            "image-pixels" => self.image_pixels as u64,
            "h5-dataset-bytes" => self.h5_dataset_bytes,
            "h5-attribute-bytes" => self.h5_attribute_bytes as u64,
            "json-bytes" => self.json_bytes as u64,
            "json-depth" => self.json_depth as u64,
            "layers" => self.layers as u64,
            "activation-bytes" => self.activation_bytes,
            _ => return None,
        };
        let bytes = NAMES.iter().any(|n| n.name == name && n.bytes);
        Some(if bytes { bytes_text(v) } else { v.to_string() })
    }
}

fn names() -> String {
    NAMES.iter().map(|n| n.name).collect::<Vec<_>>().join(", ")
}

/// `123`, or for byte amounts `64M`, `4GiB`, `1.5G`.
fn parse_amount(s: &str, bytes: bool) -> Option<u64> {
    let (digits, scale) = if bytes {
        let t = s.trim_end_matches(['B', 'b']).trim_end_matches(['i', 'I']);
        match t.chars().last()? {
            'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
            'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
            'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
            't' | 'T' => (&t[..t.len() - 1], 1 << 40),
            _ => (t, 1),
        }
    } else {
        (s, 1)
    };
    let digits = digits.trim();
    let n = if let Ok(n) = digits.parse::<u64>() {
        n.checked_mul(scale)?
    } else {
        let f: f64 = digits.parse().ok()?;
        let v = f * scale as f64;
        if !(v.is_finite() && v >= 1.0 && v < u64::MAX as f64) {
            return None;
        }
        v as u64
    };
    (n > 0).then_some(n)
}

/// Refuse a run whose activations (an estimate from the plan's shapes, made before anything
/// is allocated) exceed the `activation-bytes` limit: the same message for every runtime.
pub fn check_activations(bytes: u64, at: &str, input_shapes: &[Vec<usize>]) -> Result<(), Error> {
    let limit = current().activation_bytes;
    if bytes <= limit {
        return Ok(());
    }
    Err(Error::Other(format!(
        "at input shape {} the model holds about {} of activations at once (at node {at:?}), above the {} limit; choose a smaller input size, or raise it with --limit activation-bytes=SIZE",
        input_shapes
            .iter()
            .map(|s| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"))
            .collect::<Vec<_>>()
            .join(", "),
        bytes_text(bytes),
        bytes_text(limit)
    )))
}

/// Bytes as a user reads them: `18.0 GiB`, `64 MiB`, `512 B`.
pub fn bytes_text(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            return if n % size == 0 {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} B")
}

/// Physical memory, from /proc/meminfo (Linux); `None` elsewhere.
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_with_units() {
        let l = Limits::default()
            .with("activation-bytes=8G")
            .unwrap()
            .with("image-side = 1000")
            .unwrap()
            .with("json-bytes=1.5MiB")
            .unwrap();
        assert_eq!(l.activation_bytes, 8 << 30);
        assert_eq!(l.image_side, 1000);
        assert_eq!(l.json_bytes, 3 << 19);
        assert_eq!(l.value_text("activation-bytes").unwrap(), "8 GiB");
    }

    #[test]
    fn bad_overrides_are_refused_by_name() {
        let d = Limits::default();
        let e = d.with("imagesize=10").unwrap_err();
        assert!(
            e.contains("unknown limit") && e.contains("image-side"),
            "{e}"
        );
        assert!(d.with("layers").unwrap_err().contains("NAME=VALUE"));
        for bad in [
            "layers=0",
            "layers=-3",
            "layers=1G",
            "json-bytes=x",
            "json-bytes=99999999T",
        ] {
            assert!(d.with(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn every_name_round_trips() {
        let d = Limits::default();
        for n in NAMES {
            let v = d.value_text(n.name).unwrap();
            let back = d
                .with(&format!("{}={}", n.name, v.replace(' ', "")))
                .unwrap();
            assert_eq!(back.value_text(n.name).unwrap(), v, "{}", n.name);
        }
    }
}
