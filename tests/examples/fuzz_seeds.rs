//! Writes the fuzz inputs the repository makes rather than keeps (see
//! `evalmesh_tests::fuzz::generated_inputs`) into a corpus folder, one folder per target:
//! `cargo run -p evalmesh-tests --example fuzz_seeds -- fuzz/corpus` (scripts/fuzz.sh does).

use std::path::PathBuf;

fn main() {
    let Some(corpus) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds CORPUS_DIR");
        std::process::exit(2);
    };
    for (target, name, bytes) in evalmesh_tests::fuzz::generated_inputs() {
        let dir = corpus.join(target);
        let path = dir.join(name);
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes)) {
            eprintln!("fuzz_seeds: {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
