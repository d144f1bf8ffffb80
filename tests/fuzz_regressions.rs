//! Every input scripts/fuzz.sh found a crash, hang or runaway allocation with, minimised
//! and saved under tests/fuzz_regressions/TARGET/, replayed through the same entry point
//! the fuzzer ran (allconv::fuzz_entry): it must now end in a clear error, not a crash.
#![cfg(feature = "keras")]

use std::path::Path;

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
    eprintln!("{replayed} saved findings replayed");
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
