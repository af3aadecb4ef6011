//! The code interpreter sandbox: runs the untrusted Python that the orchestrator's
//! `enhance_reasoning` tool has a model write, and reports what it printed.
//!
//! Each run gets a fresh temporary working directory, an empty environment and a Python in
//! isolated mode (`-I -S -B`), started in its own session and process group under resource limits
//! (CPU, address space, file size, processes, no core dumps) with stdin at `/dev/null`. When the
//! engine runs as root the child also drops to `nobody` (uid/gid 65534), because `RLIMIT_NPROC`
//! does not bind root and a fork bomb must not take the host down. At the end of a run, whether
//! the program exited, timed out or the run's future was dropped, the whole process group is
//! killed and the directory removed.
//!
//! This is a self-contained core that knows nothing of the engine; a backend wraps it.
//!
//! What it does not do: it is no container. The program sees the host's filesystem with
//! `nobody`'s permissions (or the engine user's, when not root) and can use the network. A
//! program that calls `setsid()` leaves the process group and is not killed with it; it is still
//! bounded by the CPU limit, but only a cgroup or a PID namespace would catch it for certain.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// The user a root engine runs sandboxed code as: `nobody`, who owns nothing, so
/// `RLIMIT_NPROC` applies and the code can touch only what everyone may.
const NOBODY_UID: libc::uid_t = 65534;
const NOBODY_GID: libc::gid_t = 65534;

/// The program's file name inside the working directory; relative, so tracebacks show
/// `main.py` and not a random temporary path.
const PROGRAM: &str = "main.py";

/// The sandbox's whole `PATH`; a bare interpreter name given to [`Sandbox::new`] is looked up
/// here too, not on the engine's `PATH`.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long to keep reading output after the process group has been killed. The pipes close as
/// soon as the group is gone, so this only matters when a process escaped the group (with
/// `setsid()`) and holds them open: the run then ends without the rest of its output.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The bounds one run is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SandboxLimits {
    /// Wall-clock time before the whole process group is killed ([`Outcome::TimedOut`]).
    pub timeout: Duration,
    /// CPU seconds per process (`RLIMIT_CPU`): `SIGXCPU` at this limit, `SIGKILL` a second later.
    pub cpu_seconds: u64,
    /// Address space per process (`RLIMIT_AS`), so a huge allocation fails inside the sandbox
    /// with `MemoryError` instead of pressing the host.
    pub memory_bytes: u64,
    /// Bytes kept of each of stdout and stderr; the rest is read and discarded.
    pub max_output_bytes: usize,
    /// Processes (`RLIMIT_NPROC`). The kernel counts every process of the sandbox's user, so
    /// this is shared by all concurrent runs (see [`Sandbox`]).
    pub max_processes: u64,
    /// Size of any file the program writes (`RLIMIT_FSIZE`).
    pub max_file_bytes: u64,
}

impl Default for SandboxLimits {
    /// A minute of wall clock and of CPU, 1 GiB of address space, 64 KiB of output per stream,
    /// 32 processes and 16 MiB files: room for real computation, not for abuse.
    fn default() -> SandboxLimits {
        SandboxLimits {
            timeout: Duration::from_secs(60),
            cpu_seconds: 60,
            memory_bytes: 1 << 30,
            max_output_bytes: 64 << 10,
            max_processes: 32,
            max_file_bytes: 16 << 20,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The interpreter exited with this code (1 for an uncaught exception).
    Exited(i32),
    /// The interpreter was killed by this signal, e.g. `SIGXCPU` at the CPU limit.
    Signalled(i32),
    /// The wall-clock timeout passed and the process group was killed.
    TimedOut,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SandboxRun {
    pub outcome: Outcome,
    /// What the program printed, as lossy UTF-8, at most `limits.max_output_bytes` bytes.
    pub stdout: String,
    /// What the program wrote to stderr (tracebacks), capped like `stdout`.
    pub stderr: String,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// Time from start to the end of the run.
    pub wall: Duration,
    /// The limits the run was held to, so [`SandboxRun::observation`] can name them.
    pub limits: SandboxLimits,
}

impl SandboxRun {
    /// What the orchestrator sees: stdout, then stderr, then one line for each thing that went
    /// wrong (`[output truncated to 65536 bytes]`, `[exit code 1]`,
    /// `[killed after 60 s timeout]`), so the model can tell a wrong answer from a crash.
    pub(crate) fn observation(&self) -> String {
        let mut text = self.stdout.clone();
        if !self.stderr.is_empty() {
            push_block(&mut text, &self.stderr);
        }
        if self.truncated {
            let cap = self.limits.max_output_bytes;
            push_block(&mut text, &format!("[output truncated to {cap} bytes]"));
        }
        match self.outcome {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => push_block(&mut text, &format!("[exit code {code}]")),
            Outcome::Signalled(signal) => push_block(&mut text, &self.signal_note(signal)),
            Outcome::TimedOut => {
                let secs = self.limits.timeout.as_secs_f64();
                push_block(&mut text, &format!("[killed after {secs} s timeout]"));
            }
        }
        text
    }

    fn signal_note(&self, signal: i32) -> String {
        match signal {
            libc::SIGXCPU => format!(
                "[killed by signal {signal} (SIGXCPU): CPU limit of {} s reached]",
                self.limits.cpu_seconds
            ),
            libc::SIGKILL => format!("[killed by signal {signal} (SIGKILL)]"),
            libc::SIGSEGV => format!("[killed by signal {signal} (SIGSEGV)]"),
            libc::SIGABRT => format!("[killed by signal {signal} (SIGABRT)]"),
            _ => format!("[killed by signal {signal}]"),
        }
    }
}

/// Appends `block` to `text` on a line of its own.
fn push_block(text: &mut String, block: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(block);
}

/// Why a run could not start; what the program itself does is never an error but a
/// [`SandboxRun`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    #[error("cannot create a sandbox working directory in {parent}: {source}")]
    WorkDir { parent: PathBuf, source: io::Error },
    #[error("cannot write the sandboxed program to {path}: {source}")]
    WriteProgram { path: PathBuf, source: io::Error },
    #[error("cannot hand {path} to the sandbox user (uid {NOBODY_UID}): {source}")]
    Chown { path: PathBuf, source: io::Error },
    #[error("cannot start the sandbox interpreter {python} in {workdir}: {source}")]
    Spawn {
        python: PathBuf,
        workdir: PathBuf,
        source: io::Error,
    },
    #[error("lost track of the sandboxed process {pid}: {source}")]
    Wait { pid: u32, source: io::Error },
}

/// Runs untrusted Python, one fresh confined process group per [`Sandbox::run`]; runs are
/// independent and may proceed concurrently.
///
/// Concurrent runs of a root engine all run as `nobody`, so they share `max_processes` and can
/// signal one another's processes.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    python: PathBuf,
    limits: SandboxLimits,
    /// Whether the child drops from root to `nobody`; decided once, since the engine's user
    /// does not change.
    as_nobody: bool,
}

impl Sandbox {
    /// A sandbox running `python` (an absolute path, or a name looked up on the sandbox's
    /// `PATH`, `/usr/local/bin:/usr/bin:/bin`) under `limits`. When the engine is root, the
    /// interpreter must be one `nobody` may execute: a system Python, not one under `/root`.
    pub(crate) fn new(python: impl Into<PathBuf>, limits: SandboxLimits) -> Sandbox {
        Sandbox {
            python: python.into(),
            limits,
            as_nobody: running_as_root(),
        }
    }

    /// Runs `code` and returns what it printed and how it ended. Errors only when the run
    /// cannot start; the working directory is removed and every process of the run killed
    /// before this returns, or when the future is dropped.
    pub(crate) async fn run(&self, code: &str) -> Result<SandboxRun, SandboxError> {
        let limits = self.limits;
        let workdir = self.prepare(code)?;
        let mut command = Command::new(&self.python);
        command
            .args(["-I", "-S", "-B", PROGRAM])
            .current_dir(workdir.path())
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", workdir.path())
            // Python's `tempfile` would otherwise write to /tmp, outside what is cleaned up.
            .env("TMPDIR", workdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        confine(&mut command, &limits, self.as_nobody);

        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
            python: self.python.clone(),
            workdir: workdir.path().to_owned(),
            source,
        })?;
        let pid = child.id().expect("a child not yet waited for has a pid");
        // From here on, dropping `group` (a return, a panic, a cancelled future) kills every
        // process of the run and removes its directory.
        let mut group = ProcessGroup {
            pgid: pid as libc::pid_t,
            killed: false,
            workdir: Some(workdir),
        };
        tracing::debug!(pid, "sandbox run started");

        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut out = Capture::new(limits.max_output_bytes);
        let mut err = Capture::new(limits.max_output_bytes);
        let deadline = tokio::time::Instant::from_std(started + limits.timeout);
        let status = {
            // Output is read while the program runs, or it would block on a full pipe.
            let reading = async { tokio::join!(out.drain(stdout), err.drain(stderr)) };
            tokio::pin!(reading);
            let mut pipes_open = true;
            let exited = loop {
                tokio::select! {
                    _ = &mut reading, if pipes_open => pipes_open = false,
                    status = child.wait() => break Some(status),
                    () = tokio::time::sleep_until(deadline) => break None,
                }
            };
            // Kill what the program left behind (or everything, on a timeout) so the pipes
            // close; on a timeout the leader is not yet reaped, so its pid cannot be reused.
            group.kill();
            let status = match exited {
                Some(status) => Some(status),
                None => {
                    child
                        .wait()
                        .await
                        .map_err(|source| SandboxError::Wait { pid, source })?;
                    None
                }
            };
            if pipes_open
                && tokio::time::timeout(DRAIN_GRACE, &mut reading)
                    .await
                    .is_err()
            {
                tracing::warn!(
                    pid,
                    "sandbox output still open after its process group was killed"
                );
            }
            status
        };
        let outcome = match status {
            Some(status) => outcome(status.map_err(|source| SandboxError::Wait { pid, source })?),
            None => Outcome::TimedOut,
        };
        drop(group);

        let (stdout, stdout_truncated) = out.into_string();
        let (stderr, stderr_truncated) = err.into_string();
        let run = SandboxRun {
            outcome,
            stdout,
            stderr,
            truncated: stdout_truncated || stderr_truncated,
            wall: started.elapsed(),
            limits,
        };
        tracing::debug!(pid, outcome = ?run.outcome, wall_ms = run.wall.as_millis() as u64,
            truncated = run.truncated, "sandbox run finished");
        Ok(run)
    }

    /// Creates the working directory holding the program, owned by the user who will run it.
    /// (Blocking file I/O on the async thread: one small file, cheaper than a thread hop.)
    fn prepare(&self, code: &str) -> Result<TempDir, SandboxError> {
        let workdir = tempfile::Builder::new()
            .prefix("tutti-sandbox-")
            // Private to the user who runs the code.
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|source| SandboxError::WorkDir {
                parent: std::env::temp_dir(),
                source,
            })?;
        let program = workdir.path().join(PROGRAM);
        std::fs::write(&program, code).map_err(|source| SandboxError::WriteProgram {
            path: program.clone(),
            source,
        })?;
        if self.as_nobody {
            for path in [workdir.path(), program.as_path()] {
                std::os::unix::fs::chown(path, Some(NOBODY_UID), Some(NOBODY_GID)).map_err(
                    |source| SandboxError::Chown {
                        path: path.to_owned(),
                        source,
                    },
                )?;
            }
        }
        Ok(workdir)
    }
}

fn outcome(status: ExitStatus) -> Outcome {
    match status.code() {
        Some(code) => Outcome::Exited(code),
        None => Outcome::Signalled(status.signal().unwrap_or_default()),
    }
}

/// Makes the child, between fork and exec, into a sandbox: a session and process group of its
/// own (so [`ProcessGroup`] can kill everything it starts), the resource limits, no way to gain
/// privileges through setuid binaries, and, when `as_nobody`, the `nobody` user with no
/// supplementary groups. The limits are set before dropping root, while lowering them is
/// certain to be allowed.
fn confine(command: &mut Command, limits: &SandboxLimits, as_nobody: bool) {
    let rlimits = [
        (
            libc::RLIMIT_CPU,
            limits.cpu_seconds,
            limits.cpu_seconds.saturating_add(1),
        ),
        (libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (libc::RLIMIT_CORE, 0, 0),
        (
            libc::RLIMIT_FSIZE,
            limits.max_file_bytes,
            limits.max_file_bytes,
        ),
        (
            libc::RLIMIT_NPROC,
            limits.max_processes,
            limits.max_processes,
        ),
    ];
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes only direct system calls (setsid, setrlimit, prctl, setgroups,
    // setgid, setuid) on plain values copied into it before the fork; it neither allocates nor
    // takes a lock, and the error it may return wraps an errno, which needs no allocation.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            for (resource, soft, hard) in rlimits {
                let limit = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                check(libc::setrlimit(resource, &limit))?;
            }
            check(libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if as_nobody {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(NOBODY_GID))?;
                check(libc::setuid(NOBODY_UID))?;
            }
            Ok(())
        });
    }
}

/// Turns a libc return code into the errno it signals.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A run's process group and the directory it works in. Dropping it kills the group, then
/// removes the directory, so nothing of a run outlives it, even when its future is cancelled.
struct ProcessGroup {
    /// The group's id: the leader's pid, since the leader called `setsid()`.
    pgid: libc::pid_t,
    /// Set once the group has been killed, so a drop does not signal it again: after the
    /// leader has been reaped and the group has emptied, its id could belong to someone else.
    killed: bool,
    /// Always `Some` until dropped.
    workdir: Option<TempDir>,
}

impl ProcessGroup {
    fn kill(&mut self) {
        self.killed = true;
        // SAFETY: killpg only sends a signal; the group is the run's own, created by setsid().
        let rc = unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
        let error = io::Error::last_os_error();
        // ESRCH: every process of the group has already exited.
        if rc == -1 && error.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid = self.pgid, %error, "cannot kill a sandbox process group");
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.killed {
            self.kill();
        }
        if let Some(workdir) = self.workdir.take() {
            let path = workdir.path().to_owned();
            if let Err(error) = workdir.close() {
                tracing::warn!(path = %path.display(), %error, "cannot remove a sandbox working directory");
            }
        }
    }
}

/// One output stream, kept up to a cap. Past the cap it keeps reading and discards, rather than
/// killing the program: the program is not blocked on a full pipe, its exit code still counts,
/// and the wall-clock timeout bounds how long it can go on printing.
struct Capture {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn new(cap: usize) -> Capture {
        Capture {
            bytes: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Reads `stream` to its end, chunk by chunk, keeping what fits under the cap.
    async fn drain(&mut self, mut stream: impl AsyncRead + Unpin) {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => n,
                Err(error) => {
                    tracing::debug!(%error, "sandbox output stream failed");
                    return;
                }
            };
            let keep = n.min(self.cap - self.bytes.len());
            self.bytes.extend_from_slice(&chunk[..keep]);
            self.truncated |= keep < n;
        }
    }

    /// The text kept, and whether it was truncated. Lossy decoding can lengthen invalid bytes
    /// (each becomes a 3-byte U+FFFD), so the text is cut again to stay within the cap.
    fn into_string(self) -> (String, bool) {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        let mut truncated = self.truncated;
        if text.len() > self.cap {
            let mut end = self.cap;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            truncated = true;
        }
        (text, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    /// Every run of a root engine is `nobody`, and `RLIMIT_NPROC` counts all of `nobody`'s
    /// processes: the fork bomb test takes this exclusively so it neither starves nor counts the
    /// other tests' processes; every other run takes it shared.
    static NOBODY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

    /// Defaults with a timeout short enough that a hang fails the test soon.
    fn limits() -> SandboxLimits {
        SandboxLimits {
            timeout: Duration::from_secs(30),
            ..SandboxLimits::default()
        }
    }

    fn sandbox(limits: SandboxLimits) -> Sandbox {
        Sandbox::new("python3", limits)
    }

    /// Polls `done` for up to 20 s (a loaded machine may take a while to reap killed processes).
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..400 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done()
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// The processes whose process group is `pgid`, from /proc/<pid>/stat.
    fn group_members(pgid: i32) -> Vec<u32> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the command name in parentheses: state, ppid, pgrp.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .collect();
            if fields.get(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid) {
                members.push(pid);
            }
        }
        members
    }

    fn processes_of(uid: u32) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|s| s.parse::<u32>().is_ok())
            })
            .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
            .count()
    }

    /// A directory every user may write to, for sandboxed code to report through.
    fn shared_dir() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    #[tokio::test]
    async fn prints_and_exits_zero() {
        let _shared = NOBODY.read().await;
        let run = sandbox(limits()).run("print(2+2)").await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(0));
        assert_eq!(run.stdout, "4\n");
        assert_eq!(run.stderr, "");
        assert!(!run.truncated);
        assert_eq!(run.observation(), "4\n");
    }

    #[tokio::test]
    async fn working_directory_and_its_files_are_removed_after_the_run() {
        let _shared = NOBODY.read().await;
        let code = r#"
import os, tempfile
open('out.txt', 'w').write('x')
os.mkdir('sub')
open('sub/nested.txt', 'w').write('y')
fd, tmp = tempfile.mkstemp()
os.write(fd, b'z')
print(os.getcwd())
print(tmp)
print(oct(os.stat('.').st_mode & 0o777), os.stat('.').st_uid == os.getuid())
"#;
        let run = sandbox(limits()).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let mut lines = run.stdout.lines();
        let cwd = Path::new(lines.next().unwrap());
        let tmp = Path::new(lines.next().unwrap());
        assert!(cwd
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("tutti-sandbox-"));
        assert!(
            tmp.starts_with(cwd),
            "tempfile wrote outside the workdir: {tmp:?}"
        );
        assert_eq!(lines.next(), Some("0o700 True"));
        assert!(!cwd.exists(), "{cwd:?} left behind");

        // The same after a timeout.
        let code = "import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd(), flush=True)\nwhile True: pass";
        let short = SandboxLimits {
            timeout: Duration::from_secs(5),
            ..limits()
        };
        let run = sandbox(short).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::TimedOut);
        let cwd = Path::new(run.stdout.trim());
        assert!(cwd.is_absolute(), "{}", run.observation());
        assert!(!cwd.exists(), "{cwd:?} left behind");
    }

    #[tokio::test]
    async fn dropping_a_run_kills_its_processes_and_removes_its_directory() {
        let _shared = NOBODY.read().await;
        let shared = shared_dir();
        let report = shared.path().join("report");
        let code = format!(
            r#"
import os, subprocess, time
child = subprocess.Popen(['sleep', '1000'])
with open('{0}.tmp', 'w') as f:
    f.write(f'{{os.getcwd()}} {{child.pid}}')
os.rename('{0}.tmp', '{0}')
while True:
    time.sleep(1)
"#,
            report.display()
        );
        let sandbox = sandbox(limits());
        tokio::select! {
            run = sandbox.run(&code) => panic!("the run ended by itself: {run:?}"),
            reported = eventually(|| report.exists()) => assert!(reported, "no report"),
        }
        let report = std::fs::read_to_string(&report).unwrap();
        let (cwd, pid) = report.split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        assert!(!Path::new(cwd).exists(), "{cwd} left behind");
        assert!(
            eventually(|| !alive(pid)).await,
            "grandchild {pid} survived"
        );
    }

    #[tokio::test]
    async fn environment_holds_none_of_the_engines_variables() {
        let _exclusive = NOBODY.write().await;
        std::env::set_var("TUTTI_SECRET", "hunter2");
        let code = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')";
        let run = sandbox(limits()).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        assert!(!run.stdout.contains("hunter2"), "{}", run.stdout);
        let cwd = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("HOME="))
            .unwrap();
        let names: Vec<&str> = run
            .stdout
            .lines()
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert_eq!(names, ["HOME", "LANG", "PATH", "TMPDIR"], "{}", run.stdout);
        assert!(run.stdout.contains(&format!("TMPDIR={cwd}\n")));
        assert!(run.stdout.contains(&format!("PATH={SANDBOX_PATH}\n")));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let _shared = NOBODY.read().await;
        let code = r#"
import os, subprocess
child = subprocess.Popen(['sleep', '1000'])
print(os.getpgrp(), child.pid, flush=True)
while True:
    pass
"#;
        let limits = SandboxLimits {
            timeout: Duration::from_secs(5),
            ..limits()
        };
        let run = sandbox(limits).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::TimedOut, "{}", run.observation());
        assert!(run.observation().ends_with("[killed after 5 s timeout]"));
        let (pgid, pid) = run.stdout.trim().split_once(' ').unwrap();
        let (pgid, pid): (i32, u32) = (pgid.parse().unwrap(), pid.parse().unwrap());
        assert!(
            eventually(|| !alive(pid)).await,
            "grandchild {pid} survived"
        );
        assert!(eventually(|| group_members(pgid).is_empty()).await);
    }

    #[tokio::test]
    async fn huge_allocation_fails_inside_the_sandbox() {
        let _shared = NOBODY.read().await;
        let run = sandbox(limits())
            .run("bytearray(10*1024**3)")
            .await
            .unwrap();
        assert_eq!(run.outcome, Outcome::Exited(1));
        assert!(run.stderr.contains("MemoryError"), "{}", run.stderr);
        assert!(run.observation().ends_with("MemoryError\n[exit code 1]"));
    }

    #[tokio::test]
    async fn fork_bomb_is_contained() {
        let _exclusive = NOBODY.write().await;
        let nobody_before = processes_of(NOBODY_UID);
        let code = r#"
import os
print(os.getpgrp(), flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
"#;
        let limits = SandboxLimits {
            timeout: Duration::from_secs(5),
            max_processes: 16,
            ..limits()
        };
        let run = sandbox(limits).run(code).await.unwrap();
        // Timed out, or died of the bomb's own errors: either way, it ended.
        assert_ne!(run.outcome, Outcome::Exited(0));
        let pgid: i32 = run.stdout.lines().next().unwrap().parse().unwrap();
        assert!(std::process::Command::new("true")
            .status()
            .unwrap()
            .success());
        assert!(
            eventually(|| group_members(pgid).is_empty()).await,
            "survivors: {:?}",
            group_members(pgid)
        );
        if running_as_root() {
            assert!(eventually(|| processes_of(NOBODY_UID) <= nobody_before).await);
        }
    }

    #[tokio::test]
    async fn output_is_capped_while_the_program_runs_on() {
        let _shared = NOBODY.read().await;
        let code =
            "import sys\nsys.stdout.write('x' * 100_000_000)\nprint('done', file=sys.stderr)";
        let run = sandbox(limits()).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(0));
        assert!(run.truncated);
        assert_eq!(run.stdout.len(), 64 << 10);
        assert!(run.stdout.bytes().all(|b| b == b'x'));
        assert_eq!(run.stderr, "done\n");
        assert!(run
            .observation()
            .ends_with("done\n[output truncated to 65536 bytes]"));
    }

    #[tokio::test]
    async fn limits_user_and_stdin_are_applied() {
        let _shared = NOBODY.read().await;
        let code = r#"
import os, resource as r, sys
for name in ['RLIMIT_CORE', 'RLIMIT_FSIZE', 'RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_CPU']:
    print(name, *r.getrlimit(getattr(r, name)))
print('stdin', os.readlink('/proc/self/fd/0'), repr(sys.stdin.read()))
print('uid', os.getuid(), os.getgid(), os.getgroups())
print('session', os.getsid(0) == os.getpid() == os.getpgrp())
"#;
        let run = sandbox(limits()).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let id = if running_as_root() {
            "65534 65534 []".to_owned()
        } else {
            let stat = std::fs::metadata("/proc/self").unwrap();
            format!("{} {}", stat.uid(), stat.gid())
        };
        let expected = [
            "RLIMIT_CORE 0 0".to_owned(),
            format!("RLIMIT_FSIZE {0} {0}", 16 << 20),
            format!("RLIMIT_AS {0} {0}", 1u64 << 30),
            "RLIMIT_NPROC 32 32".to_owned(),
            "RLIMIT_CPU 60 61".to_owned(),
            "stdin /dev/null ''".to_owned(),
        ];
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines[..6], expected, "{}", run.stdout);
        assert!(lines[6].starts_with(&format!("uid {id}")), "{}", lines[6]);
        assert_eq!(lines[7], "session True");
    }

    #[tokio::test]
    async fn writing_past_the_file_size_limit_fails() {
        let _shared = NOBODY.read().await;
        let limits = SandboxLimits {
            max_file_bytes: 1 << 20,
            ..limits()
        };
        let code = "with open('big', 'wb') as f:\n    f.write(b'x' * (2 << 20))";
        let run = sandbox(limits).run(code).await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(1));
        assert!(run.stderr.contains("File too large"), "{}", run.stderr);
    }

    #[tokio::test]
    async fn runs_proceed_concurrently() {
        let _shared = NOBODY.read().await;
        // Each run announces itself and waits to see all four: runs one after another would
        // each wait alone until they give up.
        let shared = shared_dir();
        let sandbox = sandbox(limits());
        let codes: Vec<String> = (0..4)
            .map(|i| {
                format!(
                    r#"
import os, time
open(os.path.join('{dir}', '{i}'), 'w').close()
for _ in range(400):
    if len(os.listdir('{dir}')) == 4:
        print('together', {i})
        break
    time.sleep(0.05)
else:
    print('alone', {i})
"#,
                    dir = shared.path().display()
                )
            })
            .collect();
        let (a, b, c, d) = tokio::join!(
            sandbox.run(&codes[0]),
            sandbox.run(&codes[1]),
            sandbox.run(&codes[2]),
            sandbox.run(&codes[3]),
        );
        for (i, run) in [a, b, c, d].into_iter().enumerate() {
            let run = run.unwrap();
            assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
            assert_eq!(run.stdout, format!("together {i}\n"));
        }
    }

    #[tokio::test]
    async fn missing_interpreter_is_a_spawn_error() {
        let error = Sandbox::new("/nonexistent/python3", limits())
            .run("print(1)")
            .await
            .unwrap_err();
        assert!(matches!(error, SandboxError::Spawn { .. }), "{error:?}");
        assert!(
            error.to_string().contains("/nonexistent/python3"),
            "{error}"
        );
    }

    fn finished(outcome: Outcome, stdout: &str, stderr: &str, truncated: bool) -> SandboxRun {
        SandboxRun {
            outcome,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            truncated,
            wall: Duration::from_secs(1),
            limits: SandboxLimits::default(),
        }
    }

    #[test]
    fn observation_notes_what_went_wrong() {
        let run = finished(Outcome::Exited(0), "4\n", "", false);
        assert_eq!(run.observation(), "4\n");
        let run = finished(
            Outcome::Exited(1),
            "partial",
            "Traceback\nValueError\n",
            false,
        );
        assert_eq!(
            run.observation(),
            "partial\nTraceback\nValueError\n[exit code 1]"
        );
        let run = finished(Outcome::TimedOut, "xx", "", true);
        assert_eq!(
            run.observation(),
            "xx\n[output truncated to 65536 bytes]\n[killed after 60 s timeout]"
        );
        let run = finished(Outcome::Signalled(libc::SIGXCPU), "", "", false);
        assert_eq!(
            run.observation(),
            "[killed by signal 24 (SIGXCPU): CPU limit of 60 s reached]"
        );
    }

    #[test]
    fn capture_stays_within_its_cap_after_lossy_decoding() {
        let capture = Capture {
            bytes: vec![0xff; 10],
            cap: 10,
            truncated: false,
        };
        let (text, truncated) = capture.into_string();
        assert!(text.len() <= 10 && truncated, "{text:?}");
    }
}
