//! A real Slurm: `scripts/slurm-local.sh` brings up a single-node cluster (munged,
//! slurmctld, slurmd from Debian's packages) in a temporary folder, and the templates of
//! `slurm/` run on it as a user submits them, with three ranks. Their scores are the
//! single process's, bit for bit, after an uninterrupted run, after `scontrol requeue`
//! mid-run, and after SIGUSR1 (Slurm's warning before a time limit), on which the
//! template requeues the job itself.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use evalmesh_tests::{
    evalmesh_bin, hellaswag_sample_args, hellaswag_samples, journal_keys, path_str, print_output, repo_dir,
    run_evalmesh,
};

const LIMIT: usize = 24;

/// A running local cluster, stopped (jobs cancelled, daemons ended) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // Ports of their own, so that another cluster on this machine does not answer.
        let port = 20000 + 2 * (std::process::id() % 5000);
        let output = Command::new(repo_dir().join("scripts/slurm-local.sh"))
            .args(["start", path_str(dir.path())])
            .env("EVALMESH_SLURM_PORT", port.to_string())
            .env("EVALMESH_SLURM_GPUS", "2")
            .output()
            .unwrap();
        print_output("scripts/slurm-local.sh start", &output);
        assert!(output.status.success(), "the local Slurm did not start (scripts/setup.sh installs it)");
        Cluster { dir }
    }

    /// A Slurm client command talking to this cluster.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.dir.path().join("slurm.conf")).env("EVALMESH", evalmesh_bin());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = self.command(program).args(args).output().unwrap();
        print_output(&format!("{program} {}", args.join(" ")), &output);
        assert!(output.status.success());
        output
    }

    /// Submits a template with the sample's arguments; returns the job id.
    fn submit(&self, sbatch_args: &[&str], template: &str, out: &Path) -> String {
        let log = out.with_file_name("job.out");
        let template = repo_dir().join("slurm").join(template);
        let mut args = vec!["--parsable", "--output", path_str(&log)];
        args.extend_from_slice(sbatch_args);
        args.push(path_str(&template));
        let evalmesh_args = hellaswag_sample_args(out, LIMIT);
        args.extend(evalmesh_args[1..].iter().map(String::as_str)); // the template says `run`
        String::from_utf8(self.run("sbatch", &args).stdout).unwrap().trim().to_string()
    }

    /// Waits until the job has completed. A requeued job is held back for about two
    /// minutes (its begin time) while the previous start's step daemons wind down; it
    /// is released as soon as they are gone.
    fn wait_completed(&self, job: &str) {
        let started = Instant::now();
        loop {
            let state = self.run("squeue", &["--noheader", "--states=all", "--jobs", job, "--format=%T %r"]).stdout;
            let state = String::from_utf8(state).unwrap();
            match state.trim() {
                "COMPLETED None" => return,
                "PENDING BeginTime" if !step_daemons_left(job) => {
                    drop(self.run("scontrol", &["update", &format!("JobId={job}"), "StartTime=now"]))
                }
                s if s.is_empty()
                    || ["FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].iter().any(|f| s.starts_with(f)) =>
                {
                    panic!("job {job} did not complete: `{s}`")
                }
                _ => {}
            }
            assert!(started.elapsed() < Duration::from_secs(600), "job {job} still queued after 10 minutes: {state}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let status =
            Command::new(repo_dir().join("scripts/slurm-local.sh")).args(["stop", path_str(self.dir.path())]).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("scripts/slurm-local.sh stop {} failed", self.dir.path().display());
        }
    }
}

/// Whether any of the job's step daemons (`slurmstepd: [JOB.batch]`, `[JOB.0]`) still run.
fn step_daemons_left(job: &str) -> bool {
    let title = format!("slurmstepd: [{job}.");
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).starts_with(&title))
    })
}

/// A fresh folder for one job's results.
fn job_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir(&dir).unwrap();
    dir.join("r.json")
}

fn waits_for_records(journal: &Path, records: usize) {
    let started = Instant::now();
    while journal_keys(journal).len() < records {
        assert!(started.elapsed() < Duration::from_secs(300), "no journal records after 5 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks a finished job's results against the single process's, and that its journal
/// scored no request twice.
fn assert_same_scores(out: &Path, single: &[u8]) {
    let log = std::fs::read_to_string(out.with_file_name("job.out")).unwrap_or_default();
    eprintln!("job log:\n{log}");
    assert!(hellaswag_samples(out) == single, "the job's scores differ from the single process");
    let keys = journal_keys(&out.with_file_name("r.journal.jsonl"));
    assert_eq!(keys.len(), LIMIT);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), LIMIT, "a request was scored twice");
}

/// Submits the one-node template, applies `interrupt` to the job once its journal holds
/// a few trees, and checks that it starts again and completes with the single process's
/// scores. Returns the job's log.
fn interrupted_job(cluster: &Cluster, out: &Path, single: &[u8], interrupt: &dyn Fn(&str)) -> String {
    let job = cluster.submit(&["--ntasks=3", "--gpus-per-node=2"], "evalmesh.sbatch", out);
    waits_for_records(&out.with_file_name("r.journal.jsonl"), 4);
    interrupt(&job);
    cluster.wait_completed(&job);
    assert_same_scores(out, single);
    let log = std::fs::read_to_string(out.with_file_name("job.out")).unwrap();
    assert!(log.contains(&format!("job {job} start 2")), "the job did not start again");
    log
}

#[test]
fn the_templates_score_like_the_single_process_across_requeues() {
    let base = tempfile::tempdir().unwrap();
    let single_out = job_dir(base.path(), "single");
    let args = hellaswag_sample_args(&single_out, LIMIT);
    assert!(run_evalmesh(&args.iter().map(String::as_str).collect::<Vec<_>>()).status.success());
    let single = hellaswag_samples(&single_out);

    let cluster = Cluster::start();
    // One node: a coordinator and one worker per GPU.
    let out = job_dir(base.path(), "one-node");
    let job = cluster.submit(&["--ntasks=3", "--gpus-per-node=2", "--wait"], "evalmesh.sbatch", &out);
    cluster.wait_completed(&job);
    assert_same_scores(&out, &single);
    // The multi-node template, on the one node there is.
    let out = job_dir(base.path(), "multi-node");
    let sbatch = ["--nodes=1", "--ntasks-per-node=3", "--gpus-per-node=2", "--wait"];
    let job = cluster.submit(&sbatch, "evalmesh-multinode.sbatch", &out);
    cluster.wait_completed(&job);
    assert_same_scores(&out, &single);

    // `scontrol requeue` mid-run: the job starts again and resumes from its journal.
    let log = interrupted_job(&cluster, &job_dir(base.path(), "requeued"), &single, &|job| {
        cluster.run("scontrol", &["requeue", job]);
    });
    assert!(!log.contains("requeueing job"), "the template requeued a job Slurm requeued");
    // SIGUSR1 to the job's ranks: rank 0 stops in order and the template requeues the job.
    let log = interrupted_job(&cluster, &job_dir(base.path(), "usr1"), &single, &|job| {
        cluster.run("scancel", &["--signal=USR1", job]);
    });
    assert!(log.contains("requeueing job"), "the template did not requeue the job on SIGUSR1");
}
