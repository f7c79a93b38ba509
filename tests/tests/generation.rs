//! generate_until through the generic `generate` task: greedy continuations of the test
//! model against Hugging Face transformers' (shared/reference/generation), the same
//! tokens whatever the batch, and bad generation input.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evalmesh_tests::{assert_clean_error, evalmesh_bin, journal_keys, read_report, read_samples, shared_dir, RunArgs};
use evalmesh_worker::weights::gguf::Value as GgufValue;
use serde_json::{json, Value};

/// The reference: per HumanEval prompt, its tokens, transformers' 64 greedy tokens and
/// each step's logit margin.
fn reference() -> Vec<Value> {
    let path = shared_dir().join("reference/generation/humaneval-0-23.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn write_lines(dir: &Path, lines: &[Value]) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the `generate` task on `data` with `extra` flags; returns the samples' lines.
fn generate(data: &Path, out: &Path, extra: &[&str]) -> Vec<Value> {
    let args = RunArgs::new().flag("--task", "generate").path("--data", data).extend(extra);
    let output = args.samples_beside(&out.join("r.json")).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let bytes = read_samples(out, "generate");
    String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The first generation of a sample (`evalmesh.generations`, one per repeat).
fn generation(sample: &Value) -> &Value {
    &sample["evalmesh"]["generations"][0]
}

fn tokens(sample: &Value) -> Vec<u64> {
    generation(sample)["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

/// transformers ran `generate(min_new_tokens=64, max_new_tokens=64, do_sample=False)` in
/// f32 on the same weights (dequantised from the GGUF) from the same prompt tokens;
/// `ignore_eos` suppresses the end-of-text token as `min_new_tokens` does. The sums run
/// in another order, so a step whose two best logits lie within about 1e-3 may flip; the
/// reference's smallest margin is 0.0037, so every token should agree.
#[test]
fn greedy_continuations_are_those_of_transformers() {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = reference
        .iter()
        .map(|r| json!({"prompt": r["prompt"], "prompt_ids": r["prompt_ids"], "max_tokens": 64, "ignore_eos": true}))
        .collect();
    let samples = generate(&write_lines(dir.path(), &lines), dir.path(), &[]);
    assert_eq!(samples.len(), reference.len());
    let (mut whole, mut first_16) = (0, 0);
    for (sample, want) in samples.iter().zip(&reference) {
        let got = tokens(sample);
        let want_ids: Vec<u64> = want["greedy_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert_eq!(got.len(), 64, "prompt {}: {} tokens", sample["doc_id"], got.len());
        match got.iter().zip(&want_ids).position(|(a, b)| a != b) {
            None => {
                whole += 1;
                first_16 += 1;
            }
            Some(at) => {
                let margin = want["logit_margins"][at].as_f64().unwrap();
                let logprob = generation(sample)["logprobs"][at].as_f64().unwrap();
                println!(
                    "prompt {}: first difference at token {at}: evalmesh {} (log-probability {logprob}), transformers {} (its logit margin {margin})",
                    sample["doc_id"], got[at], want_ids[at]
                );
                assert!(margin < 1e-3, "token {at} differs where transformers' margin is {margin}: not a near-tie");
                first_16 += usize::from(at >= 16);
            }
        }
        // The text is the tokens decoded.
        assert_eq!(sample["resps"][0][0], want["greedy_text"], "prompt {}", sample["doc_id"]);
    }
    assert!(whole * 100 >= reference.len() * 95, "{whole} of {} prompts agree over 64 tokens", reference.len());
    assert_eq!(first_16, reference.len(), "every prompt agrees over its first 16 tokens");
}

/// 64 prompts of many lengths (HumanEval's and LAMBADA passages cut short), some stopping
/// at a string, some at the end-of-text token, some at their token limit.
fn mixed_prompts() -> Vec<Value> {
    let mut lines: Vec<Value> = reference()
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"prompt": r["prompt"], "max_tokens": 12 + i % 9, "until": ["\n\n"]}))
        .collect();
    let lambada = std::fs::read_to_string(shared_dir().join("data/lambada/lambada_test.jsonl")).unwrap();
    for (i, line) in lambada.lines().take(40).enumerate() {
        let text = serde_json::from_str::<Value>(line).unwrap()["text"].as_str().unwrap().to_string();
        let cut: String = text.chars().take(40 + 23 * i).collect();
        lines.push(json!({"prompt": cut, "max_tokens": 8 + i % 13, "until": ["."]}));
    }
    lines
}

/// A sequence's tokens do not depend on what decodes beside it: the same samples, byte for
/// byte, whether steps hold 256 or 8192 tokens and whether 1 or 48 sequences decode at once.
#[test]
fn generated_tokens_do_not_depend_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_lines(dir.path(), &mixed_prompts());
    let mut runs = Vec::new();
    for (name, flags) in [
        ("wide", ["--batch-tokens", "8192", "--max-sequences", "48"]),
        ("narrow", ["--batch-tokens", "256", "--max-sequences", "48"]),
        ("one at a time", ["--batch-tokens", "8192", "--max-sequences", "1"]),
    ] {
        let out = dir.path().join(name.replace(' ', "-"));
        std::fs::create_dir(&out).unwrap();
        let samples = generate(&data, &out, &flags);
        runs.push((name, read_samples(&out, "generate"), samples));
    }
    let (_, first_bytes, first) = &runs[0];
    assert_eq!(first.len(), 64);
    let stops: Vec<&str> = first.iter().map(|s| generation(s)["stop"].as_str().unwrap()).collect();
    assert!(stops.contains(&"until") && stops.contains(&"max_tokens"), "stops: {stops:?}");
    for (name, bytes, _) in &runs[1..] {
        assert!(bytes == first_bytes, "{name}: samples differ from the first run's");
    }
}

/// Under mpirun each sequence decodes on the pipeline holding its cache, each stage the
/// cache of its layers, each shard of its KV heads: the samples are byte for byte those of
/// one process, for data, pipeline and tensor parallelism.
#[test]
fn generated_tokens_are_the_same_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_lines(dir.path(), &mixed_prompts());
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    generate(&data, &alone, &[]);
    let want = read_samples(&alone, "generate");
    for layout in ["--dp", "--pp", "--tp"] {
        let out = dir.path().join(&layout[2..]);
        std::fs::create_dir(&out).unwrap();
        let args = RunArgs::new().flag("--task", "generate").path("--data", &data).flag(layout, 2).flag("--threads", 1);
        let output = args.samples_beside(&out.join("r.json")).mpirun(3);
        assert!(output.status.success(), "{layout} 2: {}", String::from_utf8_lossy(&output.stderr));
        assert!(read_samples(&out, "generate") == want, "{layout} 2: samples differ from one process's");
    }
}

/// A run killed part-way keeps its finished sequences in the journal; `--resume`
/// generates only the rest, and the samples are byte for byte those of a run left alone.
#[test]
fn a_generation_killed_part_way_resumes_to_the_same_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_lines(dir.path(), &mixed_prompts()[..32]);
    let whole = dir.path().join("whole");
    std::fs::create_dir(&whole).unwrap();
    generate(&data, &whole, &["--max-sequences", "4"]);
    let killed = dir.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    let out = killed.join("r.json");
    let journal = killed.join("r.journal.jsonl");
    let args = RunArgs::new().flag("--task", "generate").path("--data", &data).extend(&["--max-sequences", "4"]);
    let args = args.samples_beside(&out);
    let mut child = Command::new(evalmesh_bin()).args(args.args()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while journal_keys(&journal).len() < 6 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no journal records after 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run writes no results");
    let journaled = journal_keys(&journal).len();
    assert!(journaled < 32, "every sequence was done before the kill");
    let resumed = args.extend(&["--resume"]).run();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(read_samples(&killed, "generate") == read_samples(&whole, "generate"), "resumed text differs");
    let task = &read_report(&out).evalmesh.tasks["generate"];
    assert!(task.trees_from_journal + 1 >= journaled && task.trees_from_journal <= journaled);
    assert_eq!(journal_keys(&journal).len(), 32, "a sequence was generated twice or not at all");
}

/// Stops are lm-evaluation-harness's: the text is cut before the first `until` string,
/// which generation reached.
#[test]
fn until_strings_cut_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_lines(dir.path(), &mixed_prompts()[24..34]);
    let mut stops = Vec::new();
    for sample in generate(&data, dir.path(), &[]) {
        let text = sample["resps"][0][0].as_str().unwrap();
        assert!(!text.contains('.'), "{text:?} holds its stop string");
        let (got, limit) = (tokens(&sample).len(), sample["doc"]["max_tokens"].as_u64().unwrap() as usize);
        let stop = generation(&sample)["stop"].as_str().unwrap().to_string();
        match stop.as_str() {
            "until" => assert!(got <= limit, "{got} tokens past the limit of {limit}"),
            "max_tokens" => assert_eq!(got, limit, "stopped for its limit"),
            // SmolLM2's end of text is token 2.
            "eos" => assert_eq!(tokens(&sample).last(), Some(&2)),
            other => panic!("stop {other}"),
        }
        stops.push(stop);
    }
    assert!(stops.iter().any(|s| s == "until"), "no sequence stopped at its string: {stops:?}");
}

/// A prompt given as its tokens alone (`prompt_ids`, no `prompt`) generates what it does
/// beside its text.
#[test]
fn a_prompt_given_as_tokens_alone_generates_as_with_its_text() {
    let first = &reference()[0];
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"prompt": first["prompt"], "prompt_ids": first["prompt_ids"], "max_tokens": 8, "ignore_eos": true}),
        json!({"prompt_ids": first["prompt_ids"], "max_tokens": 8, "ignore_eos": true}),
    ];
    let samples = generate(&write_lines(dir.path(), &lines), dir.path(), &[]);
    assert_eq!(tokens(&samples[0]).len(), 8);
    assert_eq!(tokens(&samples[1]), tokens(&samples[0]));
}

#[test]
fn bad_generation_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |lines: &[Value], extra: &[&str]| {
        let data = write_lines(dir.path(), lines);
        RunArgs::new().flag("--task", "generate").path("--data", &data).extend(extra).run()
    };
    let output = run(&[json!({"prompt": "def f():", "max_tokens": 0})], &[]);
    assert_clean_error(&output, &["prompts.jsonl line 1", "`max_tokens`", "at least 1"]);
    let output = run(&[json!({"prompt": "def f():", "until": 5})], &[]);
    assert_clean_error(&output, &["prompts.jsonl line 1", "`until`", "list of strings"]);
    let output = run(&[json!({"prompt": "def f():", "prompt_ids": [1, 99999999]})], &[]);
    assert_clean_error(&output, &["prompt token 99999999", "vocabulary"]);
    let output = run(&[json!({"max_tokens": 4})], &[]);
    assert_clean_error(&output, &["prompts.jsonl line 1", "`prompt`", "`prompt_ids`"]);
    // 1 MiB holds no 16-token page of this model's cache (90 KiB a token).
    let output = run(&[json!({"prompt": "def f():", "max_tokens": 64})], &["--kv-cache-mb", "1"]);
    assert_clean_error(&output, &["KV cache", "--kv-cache-mb 1"]);
    let output = run(&[json!({"prompt": "def f():", "max_tokens": 9000})], &[]);
    assert_clean_error(&output, &["max_gen_toks 9000", "8192 positions"]);
    let output = run(&[json!({"prompt": "x"})], &["--max-sequences", "0"]);
    assert_clean_error(&output, &["--max-sequences"]);
    // An empty `until` list is no stop string: generation runs to its limit.
    let out = tempfile::tempdir().unwrap();
    let data =
        write_lines(dir.path(), &[json!({"prompt": "def f():", "until": [], "max_tokens": 5, "ignore_eos": true})]);
    let samples = generate(&data, out.path(), &[]);
    assert_eq!(tokens(&samples[0]).len(), 5);
}

/// A task file's `generation_kwargs` and templates are checked with the file named.
#[test]
fn bad_generation_task_files_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("items.jsonl"), "{\"q\": \"2+2?\", \"a\": \"4\"}\n").unwrap();
    let base =
        "task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\ntest_split: test\n\
                output_type: generate_until\ndoc_to_text: \"{{q}}\"\ndoc_to_target: \"{{a}}\"\n";
    let run = |body: String| {
        std::fs::write(dir.path().join("bad.yaml"), body).unwrap();
        RunArgs::new().path("--include-path", dir.path()).flag("--task", "bad").run()
    };
    let output = run(format!("{base}generation_kwargs:\n  max_gen_toks: 0\n"));
    assert_clean_error(&output, &["bad.yaml", "`generation_kwargs.max_gen_toks`", "at least 1"]);
    let output = run(format!("{base}generation_kwargs:\n  until: 3\n"));
    assert_clean_error(&output, &["bad.yaml", "`generation_kwargs.until`"]);
    let output = run(format!("{base}metric_list:\n  - metric: exact_match\n    regexes_to_ignore: [3]\n"));
    assert_clean_error(&output, &["bad.yaml", "`metric_list.regexes_to_ignore`", "regular expressions"]);
    let output = run(base.replace("{{q}}", "{{ question }}"));
    assert_clean_error(&output, &["bad.yaml", "`doc_to_text`", "items.jsonl line 1", "no field `question`"]);
    let output = run(format!(
        "{base}filter_list:\n  - name: m\n    filter:\n      - function: regex\n        regex_pattern: \"(\"\n"
    ));
    assert_clean_error(&output, &["bad.yaml", "`filter_list`", "regular expression"]);
}

/// lm-evaluation-harness's gsm8k_cot file as shipped: its 8 demonstrations written in the
/// file, its target template (Python's `split` and `strip`), both filter chains, each
/// scored with its `exact_match` options, one samples line per document and filter.
#[test]
fn gsm8k_cot_runs_its_filters_and_metric() {
    let dir = tempfile::tempdir().unwrap();
    let data = evalmesh_tests::repo_dir().join("tests/fixtures/gsm8k/test.jsonl");
    let args = RunArgs::new().flag("--task", "gsm8k_cot").path("--data", &data);
    let output = args.samples_beside(&dir.path().join("r.json")).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results = &read_report(&dir.path().join("r.json")).tasks.results["gsm8k_cot"];
    for key in ["exact_match,strict-match", "exact_match,flexible-extract"] {
        assert!(results.contains_key(key), "{key} missing from {results:?}");
    }
    let samples: Vec<Value> = String::from_utf8(read_samples(dir.path(), "gsm8k_cot"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let filters: Vec<&str> = samples.iter().map(|s| s["filter"].as_str().unwrap()).collect();
    assert_eq!(filters, ["strict-match", "strict-match", "flexible-extract", "flexible-extract"]);
    let targets: Vec<&str> = samples.iter().map(|s| s["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["18", "3", "18", "3"]);
    for s in &samples {
        let prompt = s["arguments"]["gen_args_0"]["arg_0"].as_str().unwrap();
        assert_eq!(prompt.matches("The answer is").count(), 8, "eight demonstrations before the question");
        assert!(!s["resps"][0][0].as_str().unwrap().contains("Q:"), "the text holds its stop string");
        // exact_match with ignore_case and regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"].
        let answer = s["filtered_resps"][0].as_str().unwrap().replace([',', '$'], "");
        let answer = answer.strip_suffix('.').unwrap_or(&answer).to_lowercase();
        assert_eq!(s["exact_match"].as_f64().unwrap(), f64::from(u8::from(answer == s["target"].as_str().unwrap())));
    }
}

/// `--apply-chat-template` writes the context through the model's own template (SmolLM2's,
/// from its GGUF): the system instruction as the system turn, the prompt as the user's, the
/// assistant's turn opened; generation stops at the end-of-turn token.
#[test]
fn chat_templates_write_the_context_and_end_the_turn() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_lines(dir.path(), &[json!({"prompt": "What is 2+2?", "max_tokens": 40})]);
    let samples = generate(&data, dir.path(), &["--apply-chat-template", "--system-instruction", "Answer briefly."]);
    let context = samples[0]["arguments"]["gen_args_0"]["arg_0"].as_str().unwrap();
    assert_eq!(
        context,
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // SmolLM2's <|im_end|> is token 2, its end of text.
    assert_eq!(generation(&samples[0])["stop"], "eos");
    assert_eq!(tokens(&samples[0]).last(), Some(&2));
    assert!(!samples[0]["resps"][0][0].as_str().unwrap().contains("<|im_end|>"));
}

/// A model without a chat template, and a template that does not render, are one clear error each.
#[test]
fn chat_template_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_lines(dir.path(), &[json!({"prompt": "Hi"})]);
    let run = |model: &Path| {
        RunArgs::with_model(model)
            .flag("--task", "generate")
            .path("--data", &data)
            .extend(&["--apply-chat-template"])
            .run()
    };
    let (_keep, without) = evalmesh_tests::edited_model(|m| m.metadata.retain(|(k, _)| k != "tokenizer.chat_template"));
    assert_clean_error(&run(&without), &["--apply-chat-template", "has no chat template"]);
    let broken = "{{ raise_exception('Conversation roles must alternate') }}".to_string();
    let (_keep, raising) =
        evalmesh_tests::edited_model(|m| m.set("tokenizer.chat_template", GgufValue::String(broken.clone())));
    assert_clean_error(&run(&raising), &["chat template", "prompts.jsonl line 1", "roles must alternate"]);
    let (_keep, unparsable) =
        evalmesh_tests::edited_model(|m| m.set("tokenizer.chat_template", GgufValue::String("{% for %}".into())));
    assert_clean_error(&run(&unparsable), &["chat template", "prompts.jsonl line 1"]);
}

/// Sampling with `repeats` and `majority_vote`, as lm-eval's self-consistency tasks: each
/// repeat draws with its own seed, so the texts differ, the vote picks the most frequent
/// answer, and the same request draws the same tokens whatever the batch (the repeats of a
/// document share their prompt's cache, computed once).
#[test]
fn sampled_repeats_vote_and_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let items: String = ["2+2", "3+5", "10-4"].iter().map(|q| format!("{{\"q\": \"{q}=\", \"a\": \"4\"}}\n")).collect();
    std::fs::write(dir.path().join("items.jsonl"), items).unwrap();
    let yaml = "task: vote\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\ntest_split: test\n\
                output_type: generate_until\ndoc_to_text: \"Work out this small sum of whole numbers and give the number alone: {{q}}\"\n\
                doc_to_target: \"{{a}}\"\nrepeats: 5\n\
                generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n  do_sample: true\n  temperature: 1.0\n\
                filter_list:\n  - name: maj\n    filter:\n      - function: regex\n        regex_pattern: \"(\\\\d+)\"\n      - function: majority_vote\n      - function: take_first\n\
                metric_list:\n  - metric: exact_match\n";
    std::fs::write(dir.path().join("vote.yaml"), yaml).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let args = RunArgs::new().path("--include-path", dir.path()).flag("--task", "vote").extend(extra);
        let output = args.samples_beside(&out.join("r.json")).run();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        read_samples(&out, "vote")
    };
    let bytes = run("wide", &[]);
    assert!(bytes == run("one", &["--max-sequences", "1"]), "sampled text depends on the batch");
    let samples: Vec<Value> =
        String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut distinct = 0;
    for sample in &samples {
        let texts: Vec<&str> = sample["resps"][0].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(texts.len(), 5);
        assert_eq!(sample["evalmesh"]["generations"].as_array().unwrap().len(), 5);
        distinct += usize::from(texts.iter().any(|t| *t != texts[0]));
        // The vote: the first of the most frequent numbers (or the regex's fallback).
        let answers: Vec<String> = texts
            .iter()
            .map(|t| t.split(|c: char| !c.is_ascii_digit()).find(|w| !w.is_empty()).unwrap_or("[invalid]").to_string())
            .collect();
        let count = |a: &String| answers.iter().filter(|b| *b == a).count();
        let most = answers.iter().map(count).max().unwrap();
        let want = answers.iter().find(|a| count(a) == most).unwrap();
        assert_eq!(sample["filtered_resps"][0].as_str().unwrap(), want, "{texts:?}");
    }
    assert!(distinct > 0, "five draws at temperature 1 gave the same text for every document");
}

/// A head every document shares (the description here; a task's fixed demonstrations
/// alike) is prefilled once and its cache shared: the samples are byte for byte the same
/// one sequence at a time, all at once, and under mpirun for DP (a copy of the prefix per
/// replica) and PP; the prompt tokens computed fall by the head's for every document but
/// the first; and each sequence's tokens are those of its whole prompt prefilled at once
/// (`--no-prefix-sharing`). Every run reports the cost model's prediction of its steps.
#[test]
fn a_shared_head_is_computed_once_and_changes_no_token() {
    let dir = tempfile::tempdir().unwrap();
    // The last document's own text is empty: its prompt is all head, and all of it but
    // the last token is shared.
    let questions = ["2+2", "3+5", "10-4", "7*3", "9+9", "12/4"];
    let texts = questions.iter().map(|q| format!("Question: {q}\\nAnswer:")).chain([String::new()]);
    let items: String = texts.map(|q| format!("{{\"q\": \"{q}\", \"a\": \"0\"}}\n")).collect();
    std::fs::write(dir.path().join("items.jsonl"), items).unwrap();
    let yaml =
        "task: sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\ntest_split: test\n\
                output_type: generate_until\n\
                description: \"You are a careful calculator. Each question below is a small sum of whole numbers; \
                work it out and give the number alone, with no words, no units and no working. Some questions add, \
                some subtract, some multiply and some divide, and every answer is a whole number.\\n\\n\"\n\
                doc_to_text: \"{{q}}\"\ndoc_to_target: \"{{a}}\"\n\
                generation_kwargs:\n  until: [\"\\n\\n\"]\n  max_gen_toks: 10\nmetric_list:\n  - metric: exact_match\n";
    std::fs::write(dir.path().join("sums.yaml"), yaml).unwrap();
    let run = |name: &str, extra: &[&str], layout: Option<&str>| {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let args = RunArgs::new().path("--include-path", dir.path()).flag("--task", "sums").extend(extra);
        let args = args.samples_beside(&out.join("r.json"));
        let output = match layout {
            Some(layout) => args.flag(layout, 2).flag("--threads", 1).mpirun(3),
            None => args.run(),
        };
        assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        let report = read_report(&out.join("r.json"));
        let stats = &report.evalmesh.tasks["sums"];
        // The cost model predicts the steps it ran.
        assert!(stats.predicted_seconds.is_some_and(|s| s > 0.0) && report.evalmesh.prediction.is_some(), "{name}");
        let computed = stats.tokens_computed;
        let bytes = read_samples(&out, "sums");
        let samples: Vec<Value> =
            String::from_utf8(bytes.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (bytes, samples, computed)
    };
    let (bytes, shared, computed) = run("all", &[], None);
    for (name, extra, layout) in
        [("one", &["--max-sequences", "1"][..], None), ("dp", &[], Some("--dp")), ("pp", &[], Some("--pp"))]
    {
        assert!(run(name, extra, layout).0 == bytes, "{name}: samples differ from one process's, all at once");
    }
    let (_, whole, whole_computed) = run("whole", &["--no-prefix-sharing"], None);
    let generated: usize = shared.iter().map(|s| tokens(s).len()).sum();
    let head = whole_computed - generated - (computed - generated);
    assert!(head >= 5 * 40, "{computed} tokens computed with the head shared, {whole_computed} without");
    for (s, w) in shared.iter().zip(&whole) {
        assert_eq!(tokens(s), tokens(w), "doc {}", s["doc_id"]);
        // The rest's attention reads the prefix's keys from the cache, in another order of sums.
        let logprobs = |s: &Value| -> Vec<f64> {
            generation(s)["logprobs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect()
        };
        for (a, b) in logprobs(s).iter().zip(logprobs(w)) {
            assert!((a - b).abs() < 1e-4, "doc {}: log-probabilities {a} and {b}", s["doc_id"]);
        }
    }
}
