//! Replays every input under `fuzz/regressions/<target>/` (crashers the fuzzers found,
//! fixed since, and hand-made seeds) through the same harness the fuzz targets run: each
//! must load or fail with a one-line error, never panic.

#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_saved_fuzz_input_gives_a_one_line_verdict() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for (name, run) in harness::TARGETS {
        let dir = root.join(name);
        let Ok(rd) = std::fs::read_dir(&dir) else { panic!("{}: missing (one folder per fuzz target)", dir.display()) };
        let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no inputs", dir.display());
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| run(&bytes)) {
                let msg =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{}: {}", f.display(), msg.unwrap_or_default());
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} fuzz inputs");
}
