//! Replays every committed fuzz input (fuzz/corpus/TARGET/ and fuzz/regressions/TARGET/)
//! through the same entry function its cargo-fuzz target calls: a panic fails the test.

use std::path::Path;

use lvmsync::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_is_handled_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for &(target, entry) in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no inputs");
        let regressions = inputs(&fuzz.join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap();
            let run = std::panic::catch_unwind(|| entry(&data));
            assert!(run.is_ok(), "{target}: {} panics", file.display());
        }
    }
}
