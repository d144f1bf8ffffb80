//! Every input scripts/fuzz.sh found a crash, hang or runaway allocation with, saved under
//! tests/fuzz_regressions/TARGET/, replayed through the same entry point the fuzzer ran
//! (allconv::fuzz_entry): it must now end in a clear error, not a crash. The `hang-*`
//! files send the HDF5 C library into an endless loop (a corrupt global heap); allconv
//! refuses them before HDF5 reads them (`check_global_heaps` in src/keras/h5.rs), so they
//! replay like the others, and the command line names the reason well inside its deadline.
#![cfg(feature = "keras")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn hdf5_hangs_end_in_a_named_error_from_the_cli() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/h5");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("hang-")
        {
            continue;
        }
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_allconv"))
            .arg("inspect")
            .arg(&path)
            .env("ALLCONV_H5_DEADLINE_S", "30")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", path.display());
        assert!(
            err.contains("global heap") && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
        // Refused by the check, not by the deadline.
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        n += 1;
    }
    assert!(n >= 1, "the HDF5 hang reproducer is missing");
}

#[test]
fn saved_fuzz_findings_end_in_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut replayed = 0;
    for (name, entry) in allconv::fuzz_entry::TARGETS {
        let dir = root.join(name);
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files {
            let path = f.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // Each must return (a panic fails the test), within a hang guard of 20 s, and
            // with an error: every saved finding is a malformed file.
            let t = Instant::now();
            let accepted = entry(&data);
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{}: {:?}",
                path.display(),
                t.elapsed()
            );
            assert!(!accepted, "{}: accepted, not refused", path.display());
            eprintln!("{name}: {} -> error", path.display());
            replayed += 1;
        }
    }
    eprintln!("{replayed} saved findings replayed through allconv::fuzz_entry");
    assert!(replayed >= 2, "the saved findings are missing");
}

/// The `oom-*` files: a metadata entry claims gigabytes, and HDF5 allocates what the entry
/// claims before reading it. The read is bounded by the file, so the claim costs address
/// space, never memory: under a 1 GB address-space cap (`ulimit -v`) each ends in a named
/// error, while a valid model still reads under the same cap.
#[test]
fn hdf5_size_claims_end_in_errors_under_an_address_space_cap() {
    let run = |file: &Path| {
        Command::new("bash")
            .arg("-c")
            .arg("ulimit -v 1000000 && exec \"$0\" inspect \"$1\"")
            .arg(env!("CARGO_BIN_EXE_allconv"))
            .arg(file)
            .output()
            .unwrap()
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let valid = root.join("fixtures/k208_conv/model.h5");
    let out = run(&valid);
    assert!(
        out.status.success(),
        "a valid model fails under the cap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut n = 0;
    for f in std::fs::read_dir(root.join("tests/fuzz_regressions/h5")).unwrap() {
        let path = f.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("oom-")
        {
            continue;
        }
        let out = run(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", path.display());
        assert!(
            err.starts_with("error: ") && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
        n += 1;
    }
    assert!(n >= 2, "the size-claim reproducers are missing");
}

#[test]
fn every_fuzz_target_has_an_entry_point() {
    let targets =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            })
            .collect::<std::collections::BTreeSet<_>>();
    let entries = allconv::fuzz_entry::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(targets, entries);
}
