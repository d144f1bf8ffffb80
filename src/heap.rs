//! The process's heap policy: keep freed memory for the next run instead of handing it back.
//!
//! The full build (feature `jemalloc`) links jemalloc as the whole process's malloc, so it
//! serves libtorch's tensors as well as our own allocations, configured with
//! [`JEMALLOC_CONF`]. Builds without it (the edge build) tune the C library's malloc with
//! [`keep_freed_memory`].

/// jemalloc's options: freed pages are never purged (`dirty_decay_ms:-1`,
/// `muzzy_decay_ms:-1`), so the next step or run reuses them without faulting them in
/// from the kernel, while jemalloc's size classes keep the heap from fragmenting. Training the
/// full-width model at 1152x896, batch 2 (one AVX-512 EPYC, 2 threads), against glibc with
/// [`keep_freed_memory`]: 4.4 GiB peak instead of 6.0, and 0.30 images/s instead of 0.28
/// (glibc handing big blocks back instead: 4.6 GiB, 0.22 images/s, 30 s of page faults a
/// 16-image epoch). NUL-terminated: jemalloc reads it as a C string.
pub const JEMALLOC_CONF: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

/// Whether [`keep_freed_memory`] took effect (false off glibc, or if glibc refused; true
/// where jemalloc is the process's malloc, configured by [`JEMALLOC_CONF`] instead).
pub fn keep_freed_memory() -> bool {
    if cfg!(feature = "jemalloc") {
        return true;
    }
    // glibc serves every block above its mmap threshold with a mapping of its own and unmaps
    // it on free, so each tract run faulted its activations back in from the kernel: a fifth
    // of a run on the full-width model (1033 -> 834 ms at 2 threads, system time over 7 runs
    // 2.3 -> 0.5 s). With both thresholds at their maximum, freed blocks stay in the heap for
    // the next run. The process keeps its peak heap until it exits, which a command that
    // scores images or trains reaches on its first step anyway; main() calls this for those
    // commands only (for convert's single run it raised the peak by 100 MiB).
    //
    // One arena: glibc gives other threads arenas of their own, made of 64 MiB heaps, and a
    // block that does not fit one (a decoded 4096x3328 mammogram as f32 is 54 MB, next to
    // its 27 MB of 16-bit pixels) is mapped and unmapped on its own whatever the
    // thresholds. `predict`'s reader threads faulted 5 GB back in over 20 images (2.4 s of
    // system time; 20 images on libtorch 10.7 -> 9.5-9.7 s, 8 on tract 7.65 -> 7.33 s and
    // 2.1 -> 1.9 GiB peak). The threads that share it allocate a few large blocks per
    // image or layer, so the arena's lock is not contended.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before any threads start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
