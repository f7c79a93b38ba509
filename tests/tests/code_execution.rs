//! HumanEval end to end: the executor that scores pass@1 passes every canonical solution
//! and stops what must not run (a program that never ends, one that reaches for the
//! network); the `humaneval` task refuses to run code without `--allow-code-execution`,
//! and with it reports pass@1 from the same executor.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use evalmesh::tasks::code_execution::{Sandbox, TIME_LIMIT};
use evalmesh::tasks::yaml::files::{DataFile, Origin};
use evalmesh_tests::{assert_clean_error, humaneval_data_dir, read_report, read_samples, RunArgs};
use serde_json::Value;

fn problems() -> Vec<Value> {
    let file = DataFile { path: humaneval_data_dir().join("humaneval/HumanEval.jsonl.gz"), origin: Origin::Disk };
    file.text().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// What code_eval runs: the candidate (prompt and completion), a newline, the test and
/// the call of `check` (the task's target).
fn program(problem: &Value, completion: &str) -> String {
    let field = |name: &str| problem[name].as_str().unwrap();
    format!("{}{completion}\n{}\ncheck({})", field("prompt"), field("test"), field("entry_point"))
}

#[test]
fn canonical_solutions_pass_and_harmful_programs_are_stopped() {
    let sandbox = Sandbox::new().unwrap();
    let problems = problems();
    assert_eq!(problems.len(), 164);
    let failed: Vec<&str> = problems
        .iter()
        .filter(|p| !sandbox.passes(&program(p, p["canonical_solution"].as_str().unwrap())).unwrap())
        .map(|p| p["task_id"].as_str().unwrap())
        .collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?} (pass@1 must be 1.0)");
    let first = &problems[0];
    // A wrong answer fails.
    assert!(!sandbox.passes(&program(first, "    return not True\n")).unwrap());
    // A program that never ends is stopped at the time limit and fails.
    let started = Instant::now();
    assert!(!sandbox.passes(&program(first, "    while True:\n        pass\n")).unwrap());
    assert!(started.elapsed() < TIME_LIMIT + Duration::from_secs(5), "the loop was not stopped");
    // Sockets: refused by the interpreter, and with the raw module nothing is reachable.
    let socket = "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    return True\n";
    assert!(!sandbox.passes(&program(first, socket)).unwrap());
    let raw = "    import _socket\n    s = _socket.socket()\n    s.settimeout(1)\n    s.connect(('1.1.1.1', 80))\n    return True\n";
    assert!(!sandbox.passes(&program(first, raw)).unwrap());
    // Starting other programs is refused too.
    let spawn = "    import subprocess\n    subprocess.run(['true'])\n    return True\n";
    assert!(!sandbox.passes(&program(first, spawn)).unwrap());
}

#[test]
fn humaneval_runs_code_only_when_allowed() {
    let data_dir = humaneval_data_dir();
    let args = RunArgs::new().flag("--task", "humaneval").path("--data-dir", &data_dir).flag("--limit", 4);
    let refused = args.run();
    assert_clean_error(&refused, &["humaneval", "--allow-code-execution", "sandboxed"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let output = args.extend(&["--allow-code-execution"]).samples_beside(&out).run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results = &read_report(&out).tasks.results["humaneval"];
    let pass_at_1 = results["pass@1,create_test"].as_f64().unwrap();
    let samples: Vec<Value> = String::from_utf8(read_samples(dir.path(), "humaneval"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 4);
    let problems = problems();
    let sandbox = Sandbox::new().unwrap();
    let mut passed = 0.0;
    for s in &samples {
        // The filtered response is the prompt and the completion (build_predictions)…
        let problem = &problems[s["doc_id"].as_u64().unwrap() as usize];
        let filtered = s["filtered_resps"][0].as_str().unwrap();
        let completion = s["resps"][0][0].as_str().unwrap();
        assert_eq!(filtered, format!("{}{completion}", problem["prompt"].as_str().unwrap()));
        // …and its pass@1 is what the executor says of it.
        let want = sandbox.passes(&format!("{filtered}\n{}", s["target"].as_str().unwrap())).unwrap();
        assert_eq!(s["pass@1"].as_f64().unwrap(), f64::from(u8::from(want)));
        passed += s["pass@1"].as_f64().unwrap();
    }
    assert_eq!(pass_at_1, passed / 4.0);
}
