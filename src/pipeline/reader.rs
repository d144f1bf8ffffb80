//! The reader: images decoded, resized, preprocessed and flipped ahead of the jobs that
//! run the model, so that decoding overlaps inference.

use super::plan::Plan;
use super::Res;
use crate::data::{flip_h, flip_v, read_image_with_attributes, DicomAttributes, GrayImage};

/// A decoded image and, for a DICOM file, its identifying attributes.
pub(crate) type Decoded = (GrayImage, Option<DicomAttributes>);

fn decode(path: &Path) -> Res<Decoded> {
    read_image_with_attributes(path).map_err(|e| e.to_string())
}
use std::path::{Path, PathBuf};

/// When the reader decodes and resizes the next images.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadAhead {
    /// While the jobs run (tract: each job is one thread of its own, so a busy reader
    /// only slows the job it shares a core with).
    Overlapped,
    /// Only while no network runs, `batch` images at once on as many threads
    /// (libtorch: one run spreads over every core through OpenMP, and a reader taking
    /// a core stalls the whole run at each barrier: 20 images took 520 ms a run
    /// overlapped against 400 alone).
    BetweenRuns { batch: usize },
}

impl ReadAhead {
    pub(crate) fn batch(self) -> usize {
        match self {
            ReadAhead::Overlapped => 1,
            ReadAhead::BetweenRuns { batch } => batch,
        }
    }
}

pub(crate) type ReadMessage = (usize, (Res<Prepared>, Option<String>));

/// The first images, decoded on a thread of their own while the model loads (which
/// keeps one core: reading the `.h5` and building the weights). Preprocessing waits for
/// the model (its input size), decoding does not. Full-width model on libtorch: the
/// first run starts 27 ms after the load instead of 88 (two 4096x3328 PNGs).
///
/// The thread decodes one image after another, and stops at the first one the reader
/// has claimed: on a many-core machine, the images it has not reached when the model is
/// loaded are decoded by the reader, in parallel, not queued behind it.
pub(crate) struct EarlyDecode {
    /// Image `i`'s result arrives on `images[i]` once the thread has claimed it.
    pub(crate) images: Vec<Option<std::sync::mpsc::Receiver<Res<Decoded>>>>,
    /// Per image: [`UNCLAIMED`], [`EARLY`] (the thread decodes it) or [`READER`].
    pub(crate) claims: std::sync::Arc<Vec<std::sync::atomic::AtomicU8>>,
}

pub(crate) const UNCLAIMED: u8 = 0;
pub(crate) const EARLY: u8 = 1;
pub(crate) const READER: u8 = 2;

impl EarlyDecode {
    /// Decode at most as many images as the reader's first batch takes (one per thread).
    pub(crate) fn start(images: &[PathBuf], threads: usize) -> EarlyDecode {
        use std::sync::atomic::{AtomicU8, Ordering};
        let paths: Vec<PathBuf> = images.iter().take(threads).cloned().collect();
        let claims: std::sync::Arc<Vec<AtomicU8>> =
            std::sync::Arc::new(paths.iter().map(|_| AtomicU8::new(UNCLAIMED)).collect());
        let (senders, images): (Vec<_>, Vec<_>) = paths
            .iter()
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                (tx, Some(rx))
            })
            .unzip();
        let theirs = std::sync::Arc::clone(&claims);
        // Detached: if the model fails to load, the process ends without waiting.
        std::thread::spawn(move || {
            for (i, (path, tx)) in paths.iter().zip(senders).enumerate() {
                let claimed = theirs[i].compare_exchange(
                    UNCLAIMED,
                    EARLY,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if claimed.is_err() {
                    return; // the reader has taken over from here
                }
                if tx.send(decode(path)).is_err() {
                    return;
                }
            }
        });
        EarlyDecode { images, claims }
    }

    /// Image `i`, if the thread decodes it (waits for it); `None`: the reader decodes it.
    pub(crate) fn take(&mut self, i: usize) -> Option<Res<Decoded>> {
        use std::sync::atomic::Ordering;
        let rx = self.images.get_mut(i)?.take()?;
        let mine =
            self.claims[i].compare_exchange(UNCLAIMED, READER, Ordering::AcqRel, Ordering::Acquire);
        if mine.is_ok() {
            return None;
        }
        Some(
            rx.recv()
                .unwrap_or_else(|_| Err("internal: the early decoder stopped".into())),
        )
    }
}

/// The reader thread: every image prepared and sent in order, as `ahead` says.
pub(crate) fn read_images(
    images: &[PathBuf],
    mut early: EarlyDecode,
    plan: &Plan,
    host_tta: bool,
    ahead: ReadAhead,
    tx: &std::sync::mpsc::SyncSender<ReadMessage>,
    scored: &std::sync::mpsc::Receiver<()>,
) {
    let batch = ahead.batch();
    for (b, chunk) in images.chunks(batch).enumerate() {
        let first = b * batch;
        let prepared: Vec<_> = if chunk.len() == 1 {
            vec![prepare(&chunk[0], early.take(first), plan, host_tta)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(k, path)| {
                        let decoded = early.take(first + k);
                        s.spawn(move || prepare(path, decoded, plan, host_tta))
                    })
                    .collect();
                handles
                    .into_iter()
                    .zip(chunk)
                    .map(|(h, path)| {
                        h.join().unwrap_or_else(|_| {
                            (
                                Err(format!("{}: the reader panicked", path.display())),
                                None,
                            )
                        })
                    })
                    .collect()
            })
        };
        for (k, p) in prepared.into_iter().enumerate() {
            if tx.send((first + k, p)).is_err() {
                return;
            }
        }
        if let ReadAhead::BetweenRuns { .. } = ahead {
            // Wait until the jobs have scored this batch: the cores are then free.
            for _ in 0..chunk.len() {
                if scored.recv().is_err() {
                    return;
                }
            }
        }
    }
}

/// An image read, preprocessed and flipped, ready to score. Made on a reader thread
/// while the previous image runs, so decoding and resizing overlap inference.
pub(crate) struct Prepared {
    pub(crate) img: GrayImage,
    /// The DICOM attributes, for the results' rows.
    pub(crate) dicom: Option<DicomAttributes>,
    pub(crate) views: Vec<Vec<f32>>,
    pub(crate) shape: [usize; 3],
}

/// Read (unless `decoded` already holds it) and preprocess one image; the warning says
/// its values do not fit `p`.
pub(crate) fn prepare(
    path: &Path,
    decoded: Option<Res<Decoded>>,
    p: &Plan,
    host_tta: bool,
) -> (Res<Prepared>, Option<String>) {
    let decoded = decoded.unwrap_or_else(|| decode(path));
    let (img, dicom): Decoded = match decoded {
        Ok(i) => i,
        Err(e) => return (Err(e), None),
    };
    let warning = p.effective.range_warning(&img);
    let prepared = (|| {
        let (mut x, shape) = p.host.apply(&img).map_err(|e| e.to_string())?;
        if let Some(g) = p.compensate {
            for v in &mut x {
                *v = (*v + g.mean) / g.rescale;
            }
        }
        let mut views = vec![x];
        if host_tta {
            let e = |e: crate::data::DataError| e.to_string();
            let h = flip_h(&views[0], shape).map_err(e)?;
            views.push(flip_v(&views[0], shape).map_err(e)?);
            views.push(flip_v(&h, shape).map_err(e)?);
            views.insert(1, h);
        }
        Ok((views, shape))
    })();
    let prepared = prepared.map(|(views, shape)| Prepared {
        img,
        views,
        shape,
        dicom,
    });
    (prepared, warning)
}
