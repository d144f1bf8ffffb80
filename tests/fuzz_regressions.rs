//! Every input scripts/fuzz.sh found a crash, hang or runaway allocation with, saved under
//! tests/fuzz_regressions/TARGET/, replayed through the same entry point the fuzzer ran
//! (allconv::fuzz_entry): it must now end in a clear error, not a crash. A `hang-*` file
//! loops inside the HDF5 C library, where Rust cannot stop it: it is replayed through the
//! command line, whose deadline (allconv::keras::hang_guard) must refuse it by name.
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
            .env("ALLCONV_H5_DEADLINE_S", "3")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", path.display());
        assert!(
            err.contains("did not finish reading") && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the deadline did not fire"
        );
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
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("hang-")
            {
                continue; // replayed through the CLI above
            }
            let data = std::fs::read(&path).unwrap();
            // Returning at all is the check (a panic fails the test); an accepted input
            // is fine too, if the fix made it valid.
            let accepted = entry(&data);
            eprintln!(
                "{name}: {} -> {}",
                path.display(),
                if accepted { "accepted" } else { "error" }
            );
            replayed += 1;
        }
    }
    eprintln!("{replayed} saved findings replayed through allconv::fuzz_entry");
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
