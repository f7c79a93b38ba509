//! Faults under a real `mpirun`: a rank killed with SIGKILL part-way (a worker, or rank 0)
//! and SIGUSR1 sent to every rank, as Slurm does before a time limit. Each run ends within
//! seconds with a non-zero exit (a lost rank named by the launcher, an orderly stop with
//! exit code 75); `--resume` then finishes it with per-request scores bit-identical to an
//! uninterrupted single process, and the journal shows no request scored twice.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use evalmesh_tests::{
    hellaswag_sample_args, hellaswag_samples, journal_keys, mpirun_command, print_output, rank_pid, read_report,
    run_evalmesh,
};

const LIMIT: usize = 40;

/// The samples of the uninterrupted single process, computed once for every test.
fn uninterrupted() -> &'static [u8] {
    static SAMPLES: OnceLock<Vec<u8>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.json");
        let args = hellaswag_sample_args(&out, LIMIT);
        assert!(run_evalmesh(&args.iter().map(String::as_str).collect::<Vec<_>>()).status.success());
        hellaswag_samples(&out)
    })
}

enum Fault {
    /// SIGKILL to one rank.
    Kill { rank: usize },
    /// SIGUSR1 to every rank.
    UsrOneToAll,
}

/// Starts a data-parallel run on three ranks, applies `fault` once the journal holds a few
/// trees, checks how the run ended, resumes it, and compares with the uninterrupted run.
fn interrupt_and_resume(fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let journal = dir.path().join("r.journal.jsonl");
    let marker = format!("EVALMESH_FAULT_TEST={}", dir.path().display());
    let (name, value) = marker.split_once('=').unwrap();
    let mut args = hellaswag_sample_args(&out, LIMIT);
    args.extend(["--strategy", "dp"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child =
        mpirun_command(3, &args).env(name, value).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while journal_keys(&journal).len() < 6 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the fault");
        assert!(started.elapsed() < Duration::from_secs(300), "no journal records after 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signal = |signal: &str, rank: usize| {
        let pid = rank_pid(&marker, rank).unwrap_or_else(|| panic!("rank {rank} not found"));
        assert!(std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
    };
    match fault {
        Fault::Kill { rank } => signal("-KILL", rank),
        Fault::UsrOneToAll => (0..3).for_each(|rank| signal("-USR1", rank)),
    }
    // A hang guard, not a timing claim: a lost rank must end the job, not leave it waiting.
    let faulted = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if faulted.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the job still runs a minute after the fault");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    print_output("mpirun -np 3 evalmesh run … (interrupted)", &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match fault {
        Fault::Kill { rank } => {
            assert!(!output.status.success());
            assert!(stderr.contains(&format!("rank {rank}")), "the lost rank {rank} is not named");
        }
        Fault::UsrOneToAll => {
            assert_eq!(output.status.code(), Some(75), "an orderly stop exits with EX_TEMPFAIL");
            assert!(stderr.contains("--resume"));
        }
    }
    assert!(!out.exists(), "an interrupted run writes no results");
    let journaled = journal_keys(&journal).len();

    let mut resume_args = args.clone();
    resume_args.push("--resume");
    let resumed = mpirun_command(3, &resume_args).output().unwrap();
    print_output("mpirun -np 3 evalmesh run … --resume", &resumed);
    assert!(resumed.status.success());
    assert!(hellaswag_samples(&out) == uninterrupted(), "resumed scores differ from an uninterrupted run");
    let keys = journal_keys(&journal);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "a request was scored twice");
    let report = read_report(&out);
    let task = &report.evalmesh.tasks["multiple_choice"];
    // A record cut short by the kill is not reused.
    let reused = task.trees_from_journal;
    assert!(reused == journaled || reused + 1 == journaled, "{reused} trees reused of {journaled} journaled");
    assert_eq!(keys.len(), task.trees);
}

#[test]
fn a_worker_killed_part_way_ends_the_job_and_resume_gives_the_same_bits() {
    interrupt_and_resume(Fault::Kill { rank: 1 });
}

#[test]
fn the_coordinator_killed_part_way_ends_the_job_and_resume_gives_the_same_bits() {
    interrupt_and_resume(Fault::Kill { rank: 0 });
}

#[test]
fn usr1_to_every_rank_stops_in_order_and_resume_gives_the_same_bits() {
    interrupt_and_resume(Fault::UsrOneToAll);
}
