//! The code interpreter sandbox: runs the untrusted Python that the orchestrator's
//! `enhance_reasoning` tool has a model write, and reports what it printed.
//!
//! Each run is a jail of its own ([`jail`]): the interpreter (in isolated mode, `-I -S -B`, with
//! an empty environment and stdin at `/dev/null`) is PID 1 of new PID, mount, network, IPC and
//! UTS namespaces, sees a private root with only the system directories (read-only), its own
//! `/proc` and a private `/tmp` capped in size, has no network, runs as a uid of its own (a
//! root engine) or in a user namespace of its own, under resource limits (CPU, address space,
//! file size, processes, open files, no core dumps) and a seccomp filter ([`filter`]). When the
//! interpreter exits, times out, or the run's future is dropped, it is killed through its
//! pidfd, and the kernel kills everything else in its namespace with it: nothing of a run
//! outlives it, and no run can see or touch another's files or processes.
//!
//! Where the kernel refuses namespaces (a container without the privilege, user namespaces
//! turned off), the sandbox falls back, once and loudly (an error in the log), to the confinement it had before: a process group
//! of its own under the same resource limits, as `nobody` when the engine is root, in a fresh
//! host directory, with the host's filesystem and network visible.
//!
//! This is a self-contained core that knows nothing of the engine; a backend wraps it.

mod filter;
mod jail;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::net::unix::pipe;
use tokio::process::Command;

/// The user a root engine runs sandboxed code as in the fallback confinement: `nobody`, who owns
/// nothing, so `RLIMIT_NPROC` applies and the code can touch only what everyone may.
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
    /// Wall-clock time before the whole run is killed ([`Outcome::TimedOut`]).
    pub timeout: Duration,
    /// CPU seconds per process (`RLIMIT_CPU`): the interpreter is killed at this limit
    /// ([`Outcome::CpuLimit`]).
    pub cpu_seconds: u64,
    /// Address space per process (`RLIMIT_AS`), so a huge allocation fails inside the sandbox
    /// with `MemoryError` instead of pressing the host.
    pub memory_bytes: u64,
    /// Bytes kept of each of stdout and stderr; the rest is read and discarded.
    pub max_output_bytes: usize,
    /// Processes (`RLIMIT_NPROC`), counted per run (each has its own user).
    pub max_processes: u64,
    /// Size of any file the program writes (`RLIMIT_FSIZE`).
    pub max_file_bytes: u64,
    /// Everything the run may write, in all (the size of its private `/tmp`).
    pub max_disk_bytes: u64,
    /// Files and directories the run may create (inodes of its `/tmp`).
    pub max_files: u64,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
}

impl Default for SandboxLimits {
    /// A minute of wall clock and of CPU, 1 GiB of address space, 64 KiB of output per stream,
    /// 32 processes, 16 MiB files and 64 MiB written in all, 4,096 files, 256 open descriptors:
    /// room for real computation, not for abuse.
    fn default() -> SandboxLimits {
        SandboxLimits {
            timeout: Duration::from_secs(60),
            cpu_seconds: 60,
            memory_bytes: 1 << 30,
            max_output_bytes: 64 << 10,
            max_processes: 32,
            max_file_bytes: 16 << 20,
            max_disk_bytes: 64 << 20,
            max_files: 4096,
            max_open_files: 256,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The interpreter exited with this code (1 for an uncaught exception).
    Exited(i32),
    /// The interpreter was killed by this signal.
    Signalled(i32),
    /// The interpreter used up its CPU seconds and was killed.
    CpuLimit,
    /// The wall-clock timeout passed and the run was killed.
    TimedOut,
}

/// How a run was confined.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// Its own namespaces, root, `/tmp`, user and seccomp filter (see the module's header).
    Jail,
    /// The fallback: a process group under resource limits, on the host's filesystem and
    /// network, because the kernel refused what the jail needs (the reason).
    ProcessGroup { reason: String },
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
            Outcome::CpuLimit => push_block(
                &mut text,
                &format!(
                    "[killed: CPU limit of {} s reached]",
                    self.limits.cpu_seconds
                ),
            ),
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
    #[error("cannot start the sandbox interpreter {python}: {source}")]
    Spawn { python: PathBuf, source: io::Error },
    #[error("cannot set up the sandbox for {python}: {what} failed: {source}")]
    Setup {
        python: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// The kernel refused a feature the jail needs; the sandbox falls back.
    #[error("the kernel refused the sandbox's isolation: {what}: {source}")]
    Refused {
        what: &'static str,
        source: io::Error,
    },
    #[error("lost track of the sandboxed process {pid}: {source}")]
    Wait { pid: u32, source: io::Error },
}

/// Set once, for the whole process, when the kernel refuses the jail: every later run uses the
/// fallback confinement. Holds the reason.
static REFUSED: OnceLock<String> = OnceLock::new();

/// Runs untrusted Python, one fresh jail per [`Sandbox::run`]; runs are independent and may
/// proceed concurrently.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    python: PathBuf,
    limits: SandboxLimits,
    /// The layout of every run's root, or why it cannot be made (the interpreter is missing).
    plan: Result<Arc<jail::Plan>, Arc<io::Error>>,
    /// Whether the fallback's child drops from root to `nobody`; decided once, since the
    /// engine's user does not change.
    as_nobody: bool,
}

impl Sandbox {
    /// A sandbox running `python` (an absolute path, or a name looked up on the sandbox's
    /// `PATH`, `/usr/local/bin:/usr/bin:/bin`) under `limits`. The interpreter's installation
    /// is bound read-only into each run; in the fallback confinement of a root engine it must
    /// be one `nobody` may execute.
    pub(crate) fn new(python: impl Into<PathBuf>, limits: SandboxLimits) -> Sandbox {
        let python = python.into();
        let plan = jail::Plan::new(&python).map(Arc::new).map_err(Arc::new);
        Sandbox {
            python,
            limits,
            plan,
            as_nobody: running_as_root(),
        }
    }

    /// A sandbox whose runs see the host directory `shared` at `/shared`, writable.
    #[cfg(test)]
    fn sharing(python: &str, limits: SandboxLimits, shared: &std::path::Path) -> Sandbox {
        let mut plan = jail::Plan::new(std::path::Path::new(python)).unwrap();
        plan.share(shared);
        Sandbox {
            plan: Ok(Arc::new(plan)),
            ..Sandbox::new(python, limits)
        }
    }

    /// How runs are confined now: the jail, unless the kernel has refused it.
    #[cfg(test)]
    pub(crate) fn isolation(&self) -> Isolation {
        match REFUSED.get() {
            Some(reason) => Isolation::ProcessGroup {
                reason: reason.clone(),
            },
            None => Isolation::Jail,
        }
    }

    /// Runs `code` and returns what it printed and how it ended. Errors only when the run
    /// cannot start; every process of the run is killed (and its files gone) before this
    /// returns, or when the future is dropped.
    pub(crate) async fn run(&self, code: &str) -> Result<SandboxRun, SandboxError> {
        let plan = match &self.plan {
            Ok(plan) => plan,
            Err(error) => {
                return Err(SandboxError::Spawn {
                    python: self.python.clone(),
                    source: io::Error::new(error.kind(), error.to_string()),
                })
            }
        };
        if REFUSED.get().is_none() {
            match self.run_jailed(plan, code).await {
                Err(SandboxError::Refused { what, source }) => {
                    let reason = format!("{what}: {source}");
                    if REFUSED.set(reason.clone()).is_ok() {
                        tracing::error!(
                            reason,
                            "the kernel refused the sandbox's namespaces: sandboxed code now runs \
                             WITHOUT them, in a process group on the host's filesystem and \
                             network; run the engine where user namespaces (or root) are allowed"
                        );
                    }
                }
                other => return other,
            }
        }
        self.run_in_group(code).await
    }

    /// A run in its own jail.
    async fn run_jailed(&self, plan: &jail::Plan, code: &str) -> Result<SandboxRun, SandboxError> {
        let limits = self.limits;
        let started = Instant::now();
        let jailed =
            jail::spawn(plan, code.as_bytes(), &limits, filter::filters()).map_err(|source| {
                match source.raw_os_error() {
                    Some(libc::EPERM | libc::EINVAL | libc::ENOSYS | libc::EUSERS) => {
                        SandboxError::Refused {
                            what: "clone3 into new namespaces",
                            source,
                        }
                    }
                    _ => SandboxError::Spawn {
                        python: self.python.clone(),
                        source,
                    },
                }
            })?;
        let pid = jailed.pid as u32;
        let wait_error = |source| SandboxError::Wait { pid, source };
        // From here on, dropping `reaper` (a return, a panic, a cancelled future) kills the
        // run's namespace and reaps its PID 1.
        // SAFETY: the `OwnedFd` stays open, and names the same pidfd, for as long as the
        // `AsyncFd` holds it.
        let pidfd = unsafe { AsyncFd::register_with_interest(jailed.pidfd, Interest::READABLE) }
            .map_err(|e| wait_error(e.into()))?;
        let mut reaper = Reaper { pidfd: Some(pidfd) };
        let deadline = tokio::time::Instant::from_std(started + limits.timeout);
        // The report ends at the child's exec (or exit); a setup that never gets there is
        // killed at the run's deadline like a program that never ends.
        let mut report = Vec::new();
        let mut report_pipe = pipe::Receiver::from_owned_fd(jailed.report).map_err(wait_error)?;
        match tokio::time::timeout_at(deadline, report_pipe.read_to_end(&mut report)).await {
            Ok(read) => {
                read.map_err(wait_error)?;
            }
            Err(_) => {
                reaper.kill();
                reaper.wait().await.map_err(wait_error)?;
                return Err(SandboxError::Setup {
                    python: self.python.clone(),
                    what: "set up the jail",
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the jail's setup did not finish within the run's timeout",
                    ),
                });
            }
        }
        let steps = jail::parse_report(&report);
        for warning in steps.iter().filter(|s| !jail::is_fatal(s)) {
            warn_once(warning);
        }
        if let Some(failed) = steps.iter().find(|s| jail::is_fatal(s)) {
            reaper.wait().await.map_err(wait_error)?;
            return Err(if failed.step == jail::Step::Exec {
                SandboxError::Spawn {
                    python: self.python.clone(),
                    source: failed.error(),
                }
            } else if failed.refused() {
                SandboxError::Refused {
                    what: failed.step.describe(),
                    source: failed.error(),
                }
            } else {
                SandboxError::Setup {
                    python: self.python.clone(),
                    what: failed.step.describe(),
                    source: failed.error(),
                }
            });
        }
        tracing::debug!(pid, uid = jailed.host_uid, "sandbox run started");

        let stdout = pipe::Receiver::from_owned_fd(jailed.stdout).map_err(wait_error)?;
        let stderr = pipe::Receiver::from_owned_fd(jailed.stderr).map_err(wait_error)?;
        let mut out = Capture::new(limits.max_output_bytes);
        let mut err = Capture::new(limits.max_output_bytes);
        let exit = {
            let reading = async { tokio::join!(out.drain(stdout), err.drain(stderr)) };
            tokio::pin!(reading);
            let mut pipes_open = true;
            let exited = loop {
                tokio::select! {
                    _ = &mut reading, if pipes_open => pipes_open = false,
                    exit = reaper.wait() => break Some(exit.map_err(wait_error)?),
                    () = tokio::time::sleep_until(deadline) => break None,
                }
            };
            let exit = match exited {
                Some(exit) => Some(exit),
                None => {
                    reaper.kill();
                    reaper.wait().await.map_err(wait_error)?;
                    None
                }
            };
            // The namespace is gone with its PID 1, so every write end is closed: what is left
            // in the pipes is read to the end.
            if pipes_open
                && tokio::time::timeout(DRAIN_GRACE, &mut reading)
                    .await
                    .is_err()
            {
                tracing::warn!(pid, "sandbox output still open after its run ended");
            }
            exit
        };
        let outcome = match exit {
            None => Outcome::TimedOut,
            Some(jail::Exit {
                code: Some(code), ..
            }) => Outcome::Exited(code),
            // As PID 1 of its namespace the interpreter ignores SIGXCPU; the kernel's SIGKILL at
            // the hard limit, with the CPU time used, tells the limit apart from other kills.
            Some(jail::Exit {
                signal: Some(libc::SIGKILL) | Some(libc::SIGXCPU),
                cpu,
                ..
            }) if cpu >= Duration::from_secs(limits.cpu_seconds) => Outcome::CpuLimit,
            Some(jail::Exit { signal, .. }) => Outcome::Signalled(signal.unwrap_or_default()),
        };
        Ok(self.finished(outcome, out, err, started))
    }

    fn finished(
        &self,
        outcome: Outcome,
        out: Capture,
        err: Capture,
        started: Instant,
    ) -> SandboxRun {
        let (stdout, stdout_truncated) = out.into_string();
        let (stderr, stderr_truncated) = err.into_string();
        let run = SandboxRun {
            outcome,
            stdout,
            stderr,
            truncated: stdout_truncated || stderr_truncated,
            wall: started.elapsed(),
            limits: self.limits,
        };
        tracing::debug!(outcome = ?run.outcome, wall_ms = run.wall.as_millis() as u64,
            truncated = run.truncated, "sandbox run finished");
        run
    }

    /// A run in the fallback confinement: a process group of its own under the resource limits,
    /// in a fresh host directory.
    async fn run_in_group(&self, code: &str) -> Result<SandboxRun, SandboxError> {
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
        tracing::debug!(pid, "sandbox run started (process group)");

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
        Ok(self.finished(outcome, out, err, started))
    }

    /// Creates the fallback's working directory holding the program, owned by the user who
    /// will run it. (Blocking file I/O on the async thread: one small file, cheaper than a
    /// thread hop.)
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

/// Logs a setup step the jail went on without, once per step for the process.
fn warn_once(step: &jail::StepError) {
    static WARNED: std::sync::Mutex<Vec<jail::Step>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&step.step) {
        warned.push(step.step);
        tracing::error!(error = %step.error(), "sandbox: {} failed; runs go on without it", step.step.describe());
    }
}

/// A jailed run's PID 1. Dropping it before the run was reaped kills the run's namespace and
/// reaps it on a thread of its own.
struct Reaper {
    pidfd: Option<AsyncFd<std::os::fd::OwnedFd>>,
}

impl Reaper {
    fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            if let Err(error) = jail::kill(pidfd.get_ref().as_raw_fd()) {
                tracing::warn!(%error, "cannot kill a sandbox run");
            }
        }
    }

    /// Waits for PID 1 to exit and reaps it; the pidfd is closed after.
    async fn wait(&mut self) -> io::Result<jail::Exit> {
        let pidfd = self.pidfd.as_ref().expect("waited for once");
        let exit = jail::wait(pidfd).await?;
        self.pidfd = None;
        Ok(exit)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            self.pidfd = None;
            if let Err(error) = jail::kill(pidfd.get_ref().as_raw_fd()) {
                tracing::warn!(%error, "cannot kill a sandbox run");
            }
            let pidfd = pidfd.into_inner();
            std::thread::spawn(move || jail::reap(pidfd.as_raw_fd(), 0));
        }
    }
}

fn outcome(status: ExitStatus) -> Outcome {
    match status.code() {
        Some(code) => Outcome::Exited(code),
        None => Outcome::Signalled(status.signal().unwrap_or_default()),
    }
}

/// The resource limits of a run, as `(resource, soft, hard)`: both the jail and the fallback set
/// them. The CPU's hard limit is a second past the soft one (`SIGXCPU`, then `SIGKILL`).
fn rlimits(limits: &SandboxLimits) -> [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6] {
    [
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
        (
            libc::RLIMIT_NOFILE,
            limits.max_open_files,
            limits.max_open_files,
        ),
    ]
}

/// The fallback confinement, between fork and exec: a session and process group of its own (so
/// [`ProcessGroup`] can kill everything it starts), the resource limits, no way to gain
/// privileges through setuid binaries, and, when `as_nobody`, the `nobody` user with no
/// supplementary groups. The limits are set before dropping root, while lowering them is
/// certain to be allowed.
fn confine(command: &mut Command, limits: &SandboxLimits, as_nobody: bool) {
    let rlimits = rlimits(limits);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes only direct system calls (setsid, setrlimit, prctl, setgroups,
    // setgid, setuid) on plain values copied into it before the fork; it neither allocates nor
    // takes a lock, and the error it may return wraps an errno, which needs no allocation.
    unsafe {
        command.pre_exec(move || {
            check(libc::setsid())?;
            for (resource, soft, hard) in rlimits {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
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

    use futures::StreamExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

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

    /// A run that must have been jailed: these tests are about the jail, not the fallback.
    async fn jailed(sandbox: &Sandbox, code: &str) -> SandboxRun {
        let run = sandbox.run(code).await.unwrap();
        assert_eq!(sandbox.isolation(), Isolation::Jail);
        run
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

    /// A word no other process on the machine has on its command line.
    fn marker() -> String {
        format!("{}.{}", 1000 + std::process::id() % 1000, rand_suffix())
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000_007
    }

    /// Host processes whose command line holds `marker`.
    fn processes_with(marker: &str) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
            })
            .collect()
    }

    /// A directory every user may write to, shared with sandboxed code at `/shared`.
    /// Not under /tmp: the jail assembles its root there, hiding the host's.
    fn shared_dir() -> TempDir {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    #[tokio::test]
    async fn prints_and_exits_zero() {
        let run = jailed(&sandbox(limits()), "print(2+2)").await;
        assert_eq!(run.outcome, Outcome::Exited(0));
        assert_eq!(run.stdout, "4\n");
        assert_eq!(run.stderr, "");
        assert!(!run.truncated);
        assert_eq!(run.observation(), "4\n");
    }

    /// B2: the program saw the host's files (`/etc/passwd`, the configs), the engine's command
    /// line in `/proc`, and other runs' directories.
    #[tokio::test]
    async fn a_run_sees_only_its_own_root() {
        let engine = std::process::id();
        let code = format!(
            r#"
import os
print(sorted(os.listdir('/')))
print(sorted(os.listdir('/etc')), sorted(os.listdir('/dev')))
print(os.getcwd(), os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
print(os.path.exists('/proc/{engine}'), os.path.exists('/etc/passwd'), os.path.exists('/root'))
try:
    open('/usr/new', 'w')
except OSError as e:
    print('usr', e.errno)
try:
    open('/new', 'w')
except OSError as e:
    print('root', e.errno)
"#
        );
        let run = jailed(&sandbox(limits()), &code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let lines: Vec<&str> = run.stdout.lines().collect();
        for entry in ["'dev'", "'etc'", "'proc'", "'tmp'", "'usr'"] {
            assert!(lines[0].contains(entry), "{}", lines[0]);
        }
        for absent in ["'root'", "'home'", "'work'", "'var'", "'opt'"] {
            assert!(!lines[0].contains(absent), "{}", lines[0]);
        }
        assert_eq!(
            lines[1],
            "['ld.so.cache'] ['null', 'random', 'shm', 'urandom', 'zero']"
        );
        assert_eq!(lines[2], "/tmp 1 [1]");
        assert_eq!(lines[3], "False False False");
        assert_eq!(lines[4], format!("usr {}", libc::EROFS));
        assert_eq!(lines[5], format!("root {}", libc::EROFS));
    }

    /// B2: code spoke gRPC to a `tutti serve` on loopback.
    #[tokio::test]
    async fn network_connections_fail() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let code = format!(
            r#"
import socket
for host in ['127.0.0.1', '10.0.0.1']:
    try:
        socket.create_connection((host, {port}), timeout=5)
        print(host, 'connected')
    except OSError as e:
        print(host, type(e).__name__, e.errno)
"#
        );
        let run = jailed(&sandbox(limits()), &code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let unreachable = libc::ENETUNREACH;
        assert_eq!(
            run.stdout,
            format!("127.0.0.1 OSError {unreachable}\n10.0.0.1 OSError {unreachable}\n")
        );
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    /// B1: a process that called `setsid()` outlived its run, and read and rewrote later runs'
    /// code.
    #[tokio::test]
    async fn a_setsid_child_is_gone_when_its_run_ends() {
        let marker = marker();
        let code = format!(
            r#"
import os, subprocess
subprocess.Popen(['sleep', '{marker}'], start_new_session=True)
pid = os.fork()
if pid == 0:
    os.setsid()
    os.execvp('sleep', ['sleep', '{marker}'])
print('left behind')
"#
        );
        let run = jailed(&sandbox(limits()), &code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        assert_eq!(run.stdout, "left behind\n");
        // No polling: once the run's PID 1 is reaped, its namespace is empty.
        assert_eq!(processes_with(&marker), Vec::<u32>::new());
    }

    /// B1: runs shared a user and saw each other's directories and processes.
    #[tokio::test]
    async fn a_run_cannot_see_or_change_another_runs_files_or_processes() {
        let shared = shared_dir();
        let sandbox = Sandbox::sharing("python3", limits(), shared.path());
        let first = r#"
import os, time
open('/tmp/secret-of-the-first', 'w').write('mine')
os.system('sleep 1000 &')
open('/shared/first-ready', 'w').close()
for _ in range(400):
    if os.path.exists('/shared/second-done'):
        break
    time.sleep(0.05)
print(open('/tmp/secret-of-the-first').read(), os.getuid())
"#;
        let second = r#"
import os, time
for _ in range(400):
    if os.path.exists('/shared/first-ready'):
        break
    time.sleep(0.05)
found = [os.path.join(d, f) for d, _, fs in os.walk('/') if not d.startswith(('/proc', '/usr'))
         for f in fs if 'secret' in f]
print(found, sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.getuid())
open('/shared/second-done', 'w').close()
"#;
        let (a, b) = tokio::join!(jailed(&sandbox, first), jailed(&sandbox, second));
        assert_eq!(a.outcome, Outcome::Exited(0), "{}", a.observation());
        assert_eq!(b.outcome, Outcome::Exited(0), "{}", b.observation());
        let (a_text, a_uid) = a.stdout.trim().split_once(' ').unwrap();
        assert_eq!(a_text, "mine");
        let b_words: Vec<&str> = b.stdout.trim().rsplitn(2, ' ').collect();
        assert_eq!(b_words[1], "[] [1]", "{}", b.stdout);
        if running_as_root() {
            assert_ne!(a_uid, b_words[0], "two runs with one uid");
            assert_ne!(a_uid, "0");
        }
    }

    /// B3: files written to /tmp, /dev/shm and /var/tmp persisted, 20 × 15 MiB with no total.
    #[tokio::test]
    async fn tmp_is_private_capped_in_total_and_gone_after_the_run() {
        let marker = format!("tutti-test-{}", rand_suffix());
        let code = format!(
            r#"
import os
written = 0
for i in range(20):
    for d in ['/tmp', '/dev/shm', '/var/tmp']:
        try:
            with open(f'{{d}}/{marker}-{{i}}-{{len(d)}}', 'wb') as f:
                f.write(b'x' * (15 << 20))
            written += 1
        except OSError as e:
            last = (d, e.errno)
s = os.statvfs('/tmp')
print(written, last, s.f_blocks * s.f_frsize)
"#
        );
        let sandbox = sandbox(limits());
        let run = jailed(&sandbox, &code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        // 64 MiB in all: four 15 MiB files, then the fifth fails for want of space.
        let (written, rest) = run.stdout.trim().split_once(' ').unwrap();
        let (last, size) = rest.rsplit_once(' ').unwrap();
        assert_eq!(written, "4", "{}", run.stdout);
        assert_eq!(size, (64u64 << 20).to_string());
        assert!(
            last == format!("('/var/tmp', {})", libc::ENOENT)
                || last == format!("('/tmp', {})", libc::ENOSPC)
                || last == format!("('/dev/shm', {})", libc::ENOSPC),
            "{last}"
        );
        for dir in ["/tmp", "/dev/shm", "/var/tmp"] {
            let left: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(&marker))
                .collect();
            assert!(left.is_empty(), "{dir}: {left:?}");
        }
        let next = jailed(&sandbox, "import os\nprint(os.listdir('/tmp'))").await;
        assert_eq!(next.stdout, "['main.py']\n");
    }

    /// B3: 31 sleeping processes left by one program made later runs fail with EAGAIN.
    #[tokio::test]
    async fn leftover_processes_do_not_fail_the_next_runs() {
        let marker = marker();
        let code = format!(
            r#"
import os
for _ in range(31):
    if os.fork() == 0:
        os.setsid()
        os.execvp('sleep', ['sleep', '{marker}'])
print('forked')
"#
        );
        let sandbox = sandbox(limits());
        let run = jailed(&sandbox, &code).await;
        assert_eq!(run.stdout, "forked\n", "{}", run.observation());
        assert_eq!(processes_with(&marker), Vec::<u32>::new());
        for _ in 0..5 {
            let run = jailed(
                &sandbox,
                "import subprocess\nprint(subprocess.run(['echo', 'ok'], capture_output=True).stdout.decode().strip())",
            )
            .await;
            assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
            assert_eq!(run.stdout, "ok\n");
        }
    }

    /// B3: a fork bomb in one job failed 3 of 4 runs of a concurrent job.
    #[tokio::test]
    async fn a_fork_bomb_does_not_fail_concurrent_runs() {
        let shared = shared_dir();
        let bomb_limits = SandboxLimits {
            timeout: Duration::from_secs(10),
            max_processes: 16,
            ..limits()
        };
        let bomb = Sandbox::sharing("python3", bomb_limits, shared.path());
        let others = sandbox(limits());
        let bomb_code = r#"
import os
open('/shared/bombing', 'w').close()
while True:
    try:
        os.fork()
    except OSError:
        pass
"#;
        let code = r#"
import subprocess
print(subprocess.run(['echo', 'ok'], capture_output=True).stdout.decode().strip())
"#;
        let bombing = shared.path().join("bombing");
        let others_run = async {
            assert!(
                eventually(|| bombing.exists()).await,
                "the bomb never started"
            );
            let runs = futures::future::join_all((0..4).map(|_| jailed(&others, code))).await;
            runs
        };
        let (bomb_run, runs) = tokio::join!(jailed(&bomb, bomb_code), others_run);
        assert_ne!(bomb_run.outcome, Outcome::Exited(0));
        for run in runs {
            assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
            assert_eq!(run.stdout, "ok\n");
        }
    }

    #[tokio::test]
    async fn dropping_a_run_kills_its_processes() {
        let shared = shared_dir();
        let marker = marker();
        let code = format!(
            r#"
import subprocess, time
subprocess.Popen(['sleep', '{marker}'], start_new_session=True)
open('/shared/started', 'w').close()
while True:
    time.sleep(1)
"#
        );
        let started = shared.path().join("started");
        let sandbox = Sandbox::sharing("python3", limits(), shared.path());
        let mut run = Box::pin(sandbox.run(&code));
        tokio::select! {
            run = &mut run => panic!("the run ended by itself: {run:?}"),
            reported = eventually(|| started.exists()) => assert!(reported, "never started"),
        }
        // The run is still held here: its processes are alive until it is dropped.
        assert!(!processes_with(&marker).is_empty());
        drop(run);
        assert!(
            eventually(|| processes_with(&marker).is_empty()).await,
            "left behind: {:?}",
            processes_with(&marker)
        );
    }

    #[tokio::test]
    async fn environment_holds_none_of_the_engines_variables() {
        std::env::set_var("TUTTI_SECRET", "hunter2");
        let code = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')";
        let run = jailed(&sandbox(limits()), code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        assert_eq!(
            run.stdout,
            format!("HOME=/tmp\nLANG=C.UTF-8\nPATH={SANDBOX_PATH}\nTMPDIR=/tmp\n")
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_run() {
        let marker = marker();
        let code = format!(
            "import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nprint('spinning', flush=True)\nwhile True:\n    pass"
        );
        let limits = SandboxLimits {
            timeout: Duration::from_secs(3),
            ..limits()
        };
        let run = jailed(&sandbox(limits), &code).await;
        assert_eq!(run.outcome, Outcome::TimedOut, "{}", run.observation());
        assert_eq!(run.observation(), "spinning\n[killed after 3 s timeout]");
        assert_eq!(processes_with(&marker), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn cpu_limit_ends_the_run() {
        let limits = SandboxLimits {
            cpu_seconds: 1,
            ..limits()
        };
        let run = jailed(&sandbox(limits), "while True:\n    pass").await;
        assert_eq!(run.outcome, Outcome::CpuLimit, "{}", run.observation());
        assert_eq!(run.observation(), "[killed: CPU limit of 1 s reached]");
    }

    #[tokio::test]
    async fn huge_allocation_fails_inside_the_sandbox() {
        let run = jailed(&sandbox(limits()), "bytearray(10*1024**3)").await;
        assert_eq!(run.outcome, Outcome::Exited(1));
        assert!(run.stderr.contains("MemoryError"), "{}", run.stderr);
        assert!(run.observation().ends_with("MemoryError\n[exit code 1]"));
    }

    #[tokio::test]
    async fn fork_bomb_is_contained() {
        let marker = marker();
        let code = format!(
            r#"
import os
while True:
    try:
        if os.fork() == 0:
            os.execvp('sleep', ['sleep', '{marker}'])
    except OSError:
        pass
"#
        );
        let limits = SandboxLimits {
            timeout: Duration::from_secs(5),
            max_processes: 16,
            ..limits()
        };
        let run = jailed(&sandbox(limits), &code).await;
        assert_eq!(run.outcome, Outcome::TimedOut, "{}", run.observation());
        assert_eq!(processes_with(&marker), Vec::<u32>::new());
        assert!(std::process::Command::new("true")
            .status()
            .unwrap()
            .success());
    }

    #[tokio::test]
    async fn output_is_capped_while_the_program_runs_on() {
        let code =
            "import sys\nsys.stdout.write('x' * 100_000_000)\nprint('done', file=sys.stderr)";
        let run = jailed(&sandbox(limits()), code).await;
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
        let code = r#"
import os, resource as r, sys
for name in ['RLIMIT_CORE', 'RLIMIT_FSIZE', 'RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_CPU', 'RLIMIT_NOFILE']:
    print(name, *r.getrlimit(getattr(r, name)))
print('stdin', os.readlink('/proc/self/fd/0'), repr(sys.stdin.read()))
print('uid', os.getuid(), os.getgid(), os.getgroups())
print('pid', os.getpid())
print('fds', sorted(int(f) for f in os.listdir('/proc/self/fd')))
"#;
        let run = jailed(&sandbox(limits()), code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let expected = [
            "RLIMIT_CORE 0 0".to_owned(),
            format!("RLIMIT_FSIZE {0} {0}", 16 << 20),
            format!("RLIMIT_AS {0} {0}", 1u64 << 30),
            "RLIMIT_NPROC 32 32".to_owned(),
            "RLIMIT_CPU 60 61".to_owned(),
            "RLIMIT_NOFILE 256 256".to_owned(),
            "stdin /dev/null ''".to_owned(),
        ];
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines[..7], expected, "{}", run.stdout);
        let words: Vec<&str> = lines[7].split(' ').collect();
        let uid: u32 = words[1].parse().unwrap();
        if running_as_root() {
            assert!(uid >= 1_500_000_000, "{}", lines[7]);
            assert_eq!(words[2..], [words[1], "[]"], "{}", lines[7]);
        } else {
            assert_eq!(lines[7], "uid 1000 1000 []");
        }
        assert_eq!(lines[8], "pid 1");
        // stdin, stdout, stderr, and the descriptor listing the directory: nothing of the
        // engine's.
        assert_eq!(lines[9], "fds [0, 1, 2, 3]");
    }

    /// The seccomp filter refuses what no program needs; threads (clone3 answered with ENOSYS,
    /// then clone) and subprocesses still work.
    #[tokio::test]
    async fn seccomp_refuses_tracing_key_rings_and_namespaces() {
        let code = r#"
import ctypes, threading, subprocess
libc = ctypes.CDLL(None, use_errno=True)
for name, nr, args in [('ptrace', 101, (0, 0, 0, 0)), ('keyctl', 250, (0, 0, 0, 0)),
                       ('unshare', 272, (0x10000000,)), ('bpf', 321, (0, 0, 0))]:
    rc = libc.syscall(nr, *args)
    print(name, rc, ctypes.get_errno())
t = threading.Thread(target=lambda: print('thread ran'))
t.start(); t.join()
print(subprocess.run(['echo', 'child ran'], capture_output=True).stdout.decode().strip())
"#;
        let run = jailed(&sandbox(limits()), code).await;
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let eperm = libc::EPERM;
        assert_eq!(
            run.stdout,
            format!(
                "ptrace -1 {eperm}\nkeyctl -1 {eperm}\nunshare -1 {eperm}\nbpf -1 {eperm}\nthread ran\nchild ran\n"
            )
        );
    }

    #[tokio::test]
    async fn writing_past_the_file_size_limit_fails() {
        let limits = SandboxLimits {
            max_file_bytes: 1 << 20,
            ..limits()
        };
        let code = "with open('big', 'wb') as f:\n    f.write(b'x' * (2 << 20))";
        let run = jailed(&sandbox(limits), code).await;
        assert_eq!(run.outcome, Outcome::Exited(1));
        assert!(run.stderr.contains("File too large"), "{}", run.stderr);
    }

    #[tokio::test]
    async fn runs_proceed_concurrently() {
        // Each run announces itself and waits to see all four: runs one after another would
        // each wait alone until they give up.
        let shared = shared_dir();
        let sandbox = Sandbox::sharing("python3", limits(), shared.path());
        let codes: Vec<String> = (0..4)
            .map(|i| {
                format!(
                    r#"
import os, time
open('/shared/{i}', 'w').close()
for _ in range(400):
    if len(os.listdir('/shared')) == 4:
        print('together', {i})
        break
    time.sleep(0.05)
else:
    print('alone', {i})
"#
                )
            })
            .collect();
        let runs = futures::future::join_all(codes.iter().map(|c| jailed(&sandbox, c))).await;
        for (i, run) in runs.into_iter().enumerate() {
            assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
            assert_eq!(run.stdout, format!("together {i}\n"));
        }
    }

    /// Found in CI: a run hung for ever, before its program started, when the engine made or
    /// ended a thread at the moment of the clone (the C library's `setuid` in the child waited
    /// on a lock the copied thread held). Many runs while threads come and go: every one runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn runs_start_while_engine_threads_come_and_go() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let churn: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::spawn(|| {}).join().unwrap();
                    }
                })
            })
            .collect();
        let sandbox = sandbox(limits());
        let runs: Vec<_> = futures::stream::iter(0..200)
            .map(|_| sandbox.run("print(1)"))
            .buffer_unordered(16)
            .collect()
            .await;
        stop.store(true, Ordering::Relaxed);
        for thread in churn {
            thread.join().unwrap();
        }
        for run in runs {
            let run = run.unwrap();
            assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
            assert_eq!(run.stdout, "1\n");
        }
    }

    /// The jail of an engine that is not root (a user namespace per run). When the tests run as
    /// root, as in CI, this runs the jail's tests again as `nobody`, through `setpriv`, from a
    /// copy of this test binary that `nobody` may execute.
    #[test]
    fn the_jail_holds_for_an_engine_that_is_not_root() {
        const CHILD: &str = "TUTTI_SANDBOX_TESTS_UNPRIVILEGED";
        if std::env::var_os(CHILD).is_some() || !running_as_root() {
            return;
        }
        let setpriv = Path::new("/usr/bin/setpriv");
        if !setpriv.exists() {
            eprintln!("skipped: no {} (util-linux)", setpriv.display());
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.path().join("tests");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(["backend::sandbox::tests::", "--test-threads=4"])
            // The fallback, unprivileged, runs every program as this one user, whose process
            // limit the jailed tests beside it (fork bombs) use up: the weakness the jail is for.
            .args([
                "--skip",
                "the_fallback_runs_in_a_process_group_and_cleans_up",
            ])
            .env(CHILD, "1")
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("test result: ok. "), "{stdout}");
        // Every test of the jail ran there, not only this one (which returns at once).
        let ran = stdout.matches(" ... ok").count();
        assert!(ran >= 20, "{stdout}");
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

    /// The fallback confinement still holds its limits and cleans up after itself.
    #[tokio::test]
    async fn the_fallback_runs_in_a_process_group_and_cleans_up() {
        let sandbox = sandbox(limits());
        let marker = marker();
        let code = format!(
            "import os, subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nprint(os.getcwd())"
        );
        let run = sandbox.run_in_group(&code).await.unwrap();
        assert_eq!(run.outcome, Outcome::Exited(0), "{}", run.observation());
        let cwd = Path::new(run.stdout.trim());
        assert!(cwd
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tutti-sandbox-"));
        assert!(!cwd.exists(), "{cwd:?} left behind");
        assert!(eventually(|| processes_with(&marker).is_empty()).await);
        if running_as_root() {
            let run = sandbox
                .run_in_group("import os\nprint(os.getuid())")
                .await
                .unwrap();
            assert_eq!(run.stdout, format!("{NOBODY_UID}\n"));
        }
        let _ = std::fs::metadata("/").unwrap().uid();
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
        let run = finished(Outcome::CpuLimit, "", "", false);
        assert_eq!(run.observation(), "[killed: CPU limit of 60 s reached]");
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
