//! The forward pass against llama.cpp: perplexity on the built-in wikitext excerpt, chunk
//! by chunk, against `shared/reference`'s cumulative figures, and tokenisation of the
//! whole wikitext file against llama.cpp's token ids.

#![allow(clippy::unwrap_used)]

use evalmesh_tests::{gemma_model, read_report, repo_dir, run_evalmesh, shared_dir, test_model, RunArgs};

/// The reference's cumulative perplexity after each chunk (`chunks<TAB>cumulative_ppl`,
/// under a header line or none).
fn reference_curve(file: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(shared_dir().join("reference").join(file)).unwrap();
    let figures = text.lines().filter_map(|l| l.split_once('\t')).filter(|(chunks, _)| chunks.parse::<usize>().is_ok());
    figures.map(|(_, ppl)| ppl.parse().unwrap()).collect()
}

#[test]
fn llamacpp_perplexity_matches_llama_cpp_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let output = RunArgs::new().flag("--perplexity-mode", "llamacpp").flag("--ctx", 512).path("--output", &out).run();
    assert!(output.status.success());
    let results = read_report(&out);
    let curve = results.evalmesh.tasks["perplexity"].cumulative_perplexity.clone().unwrap();
    // The built-in excerpt is the start of the reference file: 6867 tokens, 13 chunks.
    assert_eq!(curve.len(), 13);
    let f32_ref = reference_curve("wikitext-ppl-llamacpp-f32.tsv");
    let q4_ref = reference_curve("wikitext-ppl-llamacpp-q4_1.tsv");
    for (i, ppl) in curve.iter().enumerate() {
        // Same weights, same f32 math as llama.cpp's F32 run; what differs is summation
        // order, worth about 1e-5 relative, and the reference's 4 decimals (≤ 8e-6).
        let f32_err = (ppl / f32_ref[i] - 1.0).abs();
        assert!(f32_err < 1e-4, "chunk {}: {ppl} vs llama.cpp F32 {} ({:.2e})", i + 1, f32_ref[i], f32_err);
        // llama.cpp's native Q4_1 run rounds activations to 8 bits in its dot products
        // and keeps an f16 KV cache: about 0.3% apart over the whole file.
        let q4_err = (ppl / q4_ref[i] - 1.0).abs();
        assert!(q4_err < 1e-2, "chunk {}: {ppl} vs llama.cpp Q4_1 {} ({:.2e})", i + 1, q4_ref[i], q4_err);
    }
    assert_eq!(results.tasks.results["perplexity"]["perplexity,none"].as_f64(), curve.last().copied());
}

#[test]
fn tokenisation_of_wikitext_matches_llama_cpp() {
    let model = test_model();
    let data = shared_dir().join("data/wikitext-2/wiki.test.raw");
    let output =
        run_evalmesh(&["tokenize", "--model", model.to_str().unwrap(), "--file", data.to_str().unwrap(), "--ids"]);
    assert!(output.status.success());
    let ours: Vec<&str> = std::str::from_utf8(&output.stdout).unwrap().lines().collect();
    let reference = std::fs::read_to_string(shared_dir().join("reference/wikitext-token-ids.txt")).unwrap();
    let theirs: Vec<&str> = reference.lines().collect();
    assert_eq!(ours.len(), 301_948);
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("token {i} differs: {} vs llama.cpp's {}", ours[i], theirs[i]);
    }
    assert_eq!(ours.len(), theirs.len());
}

#[test]
fn rolling_perplexity_reports_word_and_byte_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let model = test_model();
    // Windows of 1024 tokens over the excerpt: 7 windows, every token scored once.
    let output = RunArgs::new().flag("--ctx", 1024).path("--output", &out).run();
    assert!(output.status.success());
    let r = read_report(&out);
    let m = &r.tasks.results["perplexity"];
    let stats = &r.evalmesh.tasks["perplexity"];
    let excerpt = repo_dir().join("coordinator/tasks/perplexity/wikitext-2-excerpt.txt");
    let tokens =
        run_evalmesh(&["tokenize", "--model", model.to_str().unwrap(), "--file", excerpt.to_str().unwrap(), "--ids"]);
    let token_count = String::from_utf8_lossy(&tokens.stdout).lines().count();
    assert_eq!(stats.tokens_scored, token_count, "every token is scored once");
    assert_eq!(stats.trees, token_count.div_ceil(1024));
    let (ppl, word, byte, bpb) = (
        m["perplexity,none"].as_f64().unwrap(),
        m["word_perplexity,none"].as_f64().unwrap(),
        m["byte_perplexity,none"].as_f64().unwrap(),
        m["bits_per_byte,none"].as_f64().unwrap(),
    );
    // A sane range for a 135M model on wikitext (llamacpp mode gives 27.7 here), and the
    // per-word figure exceeds the per-token one (a word spans more than one token).
    assert!(ppl > 5.0 && ppl < 100.0, "token perplexity {ppl}");
    assert!(word > ppl && byte > 1.0 && byte < ppl);
    assert!((bpb - byte.log2()).abs() < 1e-9);
}

/// Gemma 3 270M (GGUF: Q4_K, Q5_0, Q6_K and Q8_0 tensors, sliding and global layers, two
/// rotary bases, a SentencePiece vocabulary with BOS) against llama.cpp's dequantised-F32
/// run, chunk by chunk, over the first 20 chunks of the reference's text.
#[test]
fn gemma3_perplexity_matches_llama_cpp_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("wiki.txt");
    let wiki = std::fs::read(shared_dir().join("data/wikitext-2/wiki.test.raw")).unwrap();
    // About 21 chunks of 512 tokens: every chunk but the last is the reference's.
    std::fs::write(&text, &wiki[..48_000]).unwrap();
    let out = dir.path().join("results.json");
    let args = RunArgs::with_model(&gemma_model()).perplexity_of(&text).flag("--perplexity-mode", "llamacpp");
    let output = args.flag("--ctx", 512).path("--output", &out).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let curve = read_report(&out).evalmesh.tasks["perplexity"].cumulative_perplexity.clone().unwrap();
    let reference = reference_curve("architectures/gemma3-wiki200k-ppl-llamacpp-f32.tsv");
    assert!(curve.len() >= 20, "{} chunks", curve.len());
    for (i, (ppl, want)) in curve.iter().zip(&reference).take(curve.len() - 1).enumerate() {
        // Same weights widened to f32, f32 math: summation order and the reference's four
        // decimals differ; over the whole 200,000 bytes evalmesh gives 18.5893 against 18.5895.
        let err = (ppl / want - 1.0).abs();
        assert!(err < 1e-3, "chunk {}: {ppl} vs llama.cpp F32 {want} ({err:.2e})", i + 1);
    }
}

/// `--weights-in-memory stored` keeps the test model's Q4_1 blocks as the file stores them:
/// the weights take under 1.2 × the file's size (against over 5 × widened to f32), and
/// every chunk's perplexity is the same bits as with the weights widened at load.
#[test]
fn stored_weights_give_the_same_perplexity_in_the_files_memory() {
    let dir = tempfile::tempdir().unwrap();
    let run = |mode: &str| {
        let out = dir.path().join(format!("{mode}.json"));
        let output = RunArgs::new()
            .flag("--perplexity-mode", "llamacpp")
            .flag("--ctx", 512)
            .flag("--weights-in-memory", mode)
            .path("--output", &out)
            .run();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let weights = report["evalmesh"]["monitoring"][0]["stats"]["weight_memory_bytes"].as_u64().unwrap();
        (report["evalmesh"]["tasks"]["perplexity"]["cumulative_perplexity"].clone(), weights)
    };
    let ((widened, f32_bytes), (stored, stored_bytes)) = (run("f32"), run("stored"));
    assert!(widened.as_array().is_some_and(|chunks| chunks.len() == 13), "{widened}");
    assert_eq!(widened, stored);
    let file = std::fs::metadata(test_model()).unwrap().len();
    assert!((stored_bytes as f64) < 1.2 * file as f64, "{stored_bytes} bytes of weights from a {file}-byte file");
    assert!(f32_bytes > 5 * file, "{f32_bytes} bytes widened from a {file}-byte file");
}
