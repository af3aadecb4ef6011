//! The namespaced spawn: one run's interpreter started by `clone3` in new mount, PID, network,
//! IPC and UTS namespaces (and a user namespace when the engine is not root), inside a private
//! root that shows only what an interpreter needs.
//!
//! What the program sees:
//! - `/usr` and the host's top-level links into it (`/bin`, `/lib`, `/lib64`, `/sbin`), and
//!   the interpreter's own installation when it lives elsewhere: read-only binds;
//! - `/etc/ld.so.cache` only (no `passwd`, no configs); `/dev/null`, `zero`, `random`,
//!   `urandom`; its own `/proc` (its own processes only);
//! - `/tmp`: its working directory, a private tmpfs capped in total size and inodes, gone with
//!   the run; everything else is a read-only tmpfs;
//! - a network namespace with only a loopback device that is down: no connection can be made;
//! - the interpreter is PID 1 of its namespace: when it exits, the kernel kills whatever it
//!   left behind, `setsid()` or not.
//!
//! A root engine runs each run as a uid of its own (`RUN_UID_BASE` + a counter), so
//! `RLIMIT_NPROC` binds each run separately and no run can signal or read another's processes.
//! A non-root engine gets the same separation from a user namespace per run (the kernel counts
//! processes per user per namespace).
//!
//! Everything the child does between `clone3` and `execve` is a direct system call on memory
//! prepared before the clone: the child of a multi-threaded process may not allocate or lock.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::filter::Filters;
use super::{SandboxLimits, PROGRAM, SANDBOX_PATH};

/// The first uid a root engine gives a run; run `n` is `RUN_UID_BASE + n % RUN_UIDS`. Far above
/// the ranges distributions hand to users and to container subordinate ids.
const RUN_UID_BASE: u32 = 1_500_000_000;
/// How many uids runs cycle through: more than could run at once.
const RUN_UIDS: u32 = 1 << 16;
/// The uid and gid a run has inside its user namespace (non-root engines).
const INSIDE_ID: u32 = 1000;

/// Where the private root is assembled before `pivot_root`: any directory that exists on the
/// host; the mount covers it only inside the run's mount namespace.
const STAGING: &CStr = c"/tmp";
/// The private root's own tmpfs: mount points and links only, read-only once assembled.
const ROOT_OPTIONS: &CStr = c"size=1m,nr_inodes=256,mode=0755";

/// The host's top-level entries a program may need: each is a link (recreated as the same
/// link) or a directory (bound read-only).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Single files bound read-only, when the host has them.
const SYSTEM_FILES: &[&str] = &["etc/ld.so.cache"];
/// Device nodes bound from the host.
const DEVICES: &[&str] = &["dev/null", "dev/zero", "dev/random", "dev/urandom"];

/// Steps of the child's setup, reported to the parent with the errno when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Step {
    Stdio = 1,
    IdMap,
    MountPrivate,
    MountRoot,
    Layout,
    Bind,
    MountProc,
    MountTmp,
    WriteProgram,
    PivotRoot,
    RootReadOnly,
    Limits,
    DropUser,
    NoNewPrivs,
    Seccomp,
    Exec,
}

impl Step {
    const ALL: [Step; 16] = [
        Step::Stdio,
        Step::IdMap,
        Step::MountPrivate,
        Step::MountRoot,
        Step::Layout,
        Step::Bind,
        Step::MountProc,
        Step::MountTmp,
        Step::WriteProgram,
        Step::PivotRoot,
        Step::RootReadOnly,
        Step::Limits,
        Step::DropUser,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Exec,
    ];

    fn from_code(code: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == code)
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Step::Stdio => "connecting its standard streams",
            Step::IdMap => "mapping its user in a new user namespace",
            Step::MountPrivate => "making its mounts private",
            Step::MountRoot => "mounting its private root (tmpfs)",
            Step::Layout => "laying out its root",
            Step::Bind => "binding the system directories read-only",
            Step::MountProc => "mounting its /proc",
            Step::MountTmp => "mounting its /tmp (tmpfs)",
            Step::WriteProgram => "writing the program",
            Step::PivotRoot => "switching to its private root",
            Step::RootReadOnly => "making its root read-only",
            Step::Limits => "setting its resource limits",
            Step::DropUser => "dropping to its own user",
            Step::NoNewPrivs => "forbidding new privileges",
            Step::Seccomp => "installing the seccomp filter",
            Step::Exec => "starting the interpreter",
        }
    }

    /// Steps the run can do without: their failure is reported as a warning and the run goes on.
    fn optional(self) -> bool {
        matches!(self, Step::MountProc | Step::Seccomp)
    }
}

/// A step's failure as the child reports it: the step, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StepError {
    pub(super) step: Step,
    pub(super) errno: i32,
}

impl StepError {
    pub(super) fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }

    /// Whether the kernel (or the container around the engine) refuses the feature itself,
    /// rather than this one run failing: then the sandbox falls back, loudly.
    pub(super) fn refused(&self) -> bool {
        matches!(
            self.errno,
            libc::EPERM | libc::EACCES | libc::EINVAL | libc::ENOSYS | libc::ENODEV | libc::EUSERS
        ) && !matches!(self.step, Step::Exec | Step::WriteProgram | Step::Limits)
    }
}

/// A read-only bind: a host path shown at the same path inside.
#[derive(Debug)]
struct Bind {
    source: CString,
    /// Relative to the root being assembled.
    target: CString,
    /// The flags of the read-only remount: the source mount's own flags kept (a user namespace
    /// may not clear them), plus read-only, no setuid, no devices.
    remount: libc::c_ulong,
}

/// The layout of every run's root, worked out once per sandbox from the host's filesystem.
#[derive(Debug)]
pub(super) struct Plan {
    /// The interpreter, absolute, with links resolved: the same path inside as outside.
    python: CString,
    /// Directories to create, relative to the root, parents first.
    dirs: Vec<CString>,
    /// `(target, link)`: links to recreate, e.g. `usr/bin` ← `bin`.
    links: Vec<(CString, CString)>,
    /// Empty files to create as mount points for file binds.
    files: Vec<CString>,
    binds: Vec<Bind>,
    /// Binds left writable: the device nodes (writing `/dev/null` must work) and, in tests, a
    /// directory shared with the test.
    writable: Vec<(CString, CString)>,
}

impl Plan {
    /// The layout for `python` (absolute, or a name on the sandbox's `PATH`).
    pub(super) fn new(python: &Path) -> io::Result<Plan> {
        let python = resolve(python)?;
        let mut plan = Plan {
            python: cstring(python.as_os_str().as_bytes()),
            dirs: vec![
                cstring(b"dev"),
                cstring(b"proc"),
                cstring(b"tmp"),
                cstring(b"etc"),
            ],
            links: vec![(cstring(b"/tmp"), cstring(b"dev/shm"))],
            files: Vec::new(),
            binds: Vec::new(),
            writable: Vec::new(),
        };
        for name in SYSTEM_DIRS {
            let host = Path::new("/").join(name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host)?;
                plan.links.push((
                    cstring(target.as_os_str().as_bytes()),
                    cstring(name.as_bytes()),
                ));
            } else if meta.is_dir() {
                plan.dirs.push(cstring(name.as_bytes()));
                plan.bind(&host, name)?;
            }
        }
        for name in SYSTEM_FILES {
            let host = Path::new("/").join(name);
            if host.is_file() {
                plan.files.push(cstring(name.as_bytes()));
                plan.bind(&host, name)?;
            }
        }
        for name in DEVICES {
            let host = Path::new("/").join(name);
            if host.exists() {
                plan.files.push(cstring(name.as_bytes()));
                plan.writable.push((
                    cstring(host.as_os_str().as_bytes()),
                    cstring(name.as_bytes()),
                ));
            }
        }
        // An interpreter outside the system directories (a venv's base, /opt/python...): its
        // installation prefix (the parent of its `bin`), bound at the same path.
        if !plan.visible(&python) {
            let prefix = python
                .parent()
                .and_then(Path::parent)
                .filter(|p| *p != Path::new("/"))
                .unwrap_or_else(|| python.parent().unwrap_or(Path::new("/")));
            let relative = prefix.strip_prefix("/").unwrap_or(prefix);
            let mut dir = PathBuf::new();
            for part in relative.components() {
                dir.push(part);
                plan.dirs.push(cstring(dir.as_os_str().as_bytes()));
            }
            plan.bind(prefix, &relative.to_string_lossy())?;
        }
        Ok(plan)
    }

    /// Shows the host directory `host` at `/shared`, writable: how tests watch a run from outside.
    #[cfg(test)]
    pub(super) fn share(&mut self, host: &Path) {
        self.dirs.push(cstring(b"shared"));
        self.writable
            .push((cstring(host.as_os_str().as_bytes()), cstring(b"shared")));
    }

    fn bind(&mut self, host: &Path, inside: &str) -> io::Result<()> {
        let stat = nix_statvfs(host)?;
        self.binds.push(Bind {
            source: cstring(host.as_os_str().as_bytes()),
            target: cstring(inside.as_bytes()),
            remount: libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | kept_flags(stat),
        });
        Ok(())
    }

    /// Whether `path` lies under a bound system directory (through the links as the host has
    /// them, since `path` is canonical).
    fn visible(&self, path: &Path) -> bool {
        self.binds.iter().any(|b| {
            let inside = Path::new("/").join(b.target.to_str().unwrap_or(""));
            path.starts_with(inside)
        })
    }
}

/// The interpreter's absolute path, links resolved; a bare name is looked up on the sandbox's
/// `PATH`.
fn resolve(python: &Path) -> io::Result<PathBuf> {
    let found = if python.is_absolute() || python.components().count() > 1 {
        python.to_path_buf()
    } else {
        SANDBOX_PATH
            .split(':')
            .map(|dir| Path::new(dir).join(python))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no {} on {SANDBOX_PATH}", python.display()),
                )
            })?
    };
    std::fs::canonicalize(found)
}

fn cstring(bytes: &[u8]) -> CString {
    // Paths from the filesystem and our own constants hold no NUL byte.
    CString::new(bytes).expect("a path without NUL bytes")
}

fn nix_statvfs(path: &Path) -> io::Result<libc::c_ulong> {
    let path = cstring(path.as_os_str().as_bytes());
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a pointer to a statvfs we own.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_flag)
}

/// The mount flags a read-only remount must keep (inside a user namespace, clearing a flag the
/// original mount has is refused).
fn kept_flags(st_flags: libc::c_ulong) -> libc::c_ulong {
    let pairs = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    pairs
        .iter()
        .filter(|(st, _)| st_flags & st != 0)
        .fold(0, |flags, (_, ms)| flags | ms)
}

/// Who the run is: its own host uid (root engine), or the engine's user mapped to
/// [`INSIDE_ID`] in a user namespace of its own.
#[derive(Debug)]
enum Identity {
    Host { uid: libc::uid_t, gid: libc::gid_t },
    Namespaced { uid_map: CString, gid_map: CString },
}

/// Everything one run's child needs, made before the clone.
struct Launch<'a> {
    plan: &'a Plan,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Owns what `argv`/`envp` point into.
    _strings: Vec<CString>,
    identity: Identity,
    tmp_options: CString,
    program: &'a [u8],
    rlimits: [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6],
    filters: Option<&'a Filters>,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

/// A started run: its PID 1 (the interpreter), the pidfd that names it without a race, and
/// the read ends of its output.
pub(super) struct Jailed {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    /// Closed by the kernel when the interpreter starts (close-on-exec); before that, the child
    /// writes a [`StepError`] for each setup step that failed.
    pub(super) report: OwnedFd,
    /// The uid the run's processes have on the host.
    pub(super) host_uid: libc::uid_t,
}

/// Counts runs, to give each a uid of its own.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// Starts `program` in a new jail. `Err` when the clone itself fails; a failing setup step is
/// reported on [`Jailed::report`].
pub(super) fn spawn(
    plan: &Plan,
    program: &[u8],
    limits: &SandboxLimits,
    filters: Option<&Filters>,
) -> io::Result<Jailed> {
    let as_root = super::running_as_root();
    let (identity, host_uid, inside_uid) = if as_root {
        let uid = RUN_UID_BASE + RUNS.fetch_add(1, Ordering::Relaxed) % RUN_UIDS;
        (Identity::Host { uid, gid: uid }, uid, uid)
    } else {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let identity = Identity::Namespaced {
            uid_map: cstring(format!("{INSIDE_ID} {uid} 1\n").as_bytes()),
            gid_map: cstring(format!("{INSIDE_ID} {gid} 1\n").as_bytes()),
        };
        (identity, uid, INSIDE_ID)
    };
    let strings: Vec<CString> = [
        plan.python.as_bytes(),
        b"-I",
        b"-S",
        b"-B",
        PROGRAM.as_bytes(),
    ]
    .into_iter()
    .map(cstring)
    .chain(
        [
            format!("PATH={SANDBOX_PATH}"),
            "LANG=C.UTF-8".to_owned(),
            "HOME=/tmp".to_owned(),
            "TMPDIR=/tmp".to_owned(),
        ]
        .into_iter()
        .map(|s| cstring(s.as_bytes())),
    )
    .collect();
    let mut argv: Vec<*const libc::c_char> = strings[..5].iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = strings[5..].iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let tmp_options = cstring(
        format!(
            "size={},nr_inodes={},mode=0700,uid={inside_uid},gid={inside_uid}",
            limits.max_disk_bytes.max(4096),
            limits.max_files.max(16)
        )
        .as_bytes(),
    );
    let rlimits = super::rlimits(limits);

    let stdin = std::fs::File::open("/dev/null")?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    let launch = Launch {
        plan,
        argv,
        envp,
        _strings: strings,
        identity,
        tmp_options,
        program,
        rlimits,
        filters,
        stdin: stdin.as_raw_fd(),
        stdout: out_write.as_raw_fd(),
        stderr: err_write.as_raw_fd(),
        report: report_write.as_raw_fd(),
    };

    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD;
    if !as_root {
        flags |= libc::CLONE_NEWUSER;
    }
    let mut pidfd: libc::c_int = -1;
    // SAFETY: zeroed is a valid clone_args (no stack: the child runs on a copy of this stack,
    // as after fork).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags as u64;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: clone3 with no stack behaves as fork; the child only runs `child`, which makes
    // direct system calls on memory prepared above and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { child(&launch) }
    }
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    drop(launch);
    // The parent keeps only the read ends; the child's copies of the write ends are the only
    // ones left, so each read ends at the child's exit (or, for the report, at its exec).
    drop((out_write, err_write, report_write, stdin));
    Ok(Jailed {
        pid: pid as libc::pid_t,
        // SAFETY: the kernel wrote a fresh pidfd that nothing else owns.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        stdout: out_read,
        stderr: err_read,
        report: report_read,
        host_uid,
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a two-element array for the two ends.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Parses the child's report: one 8-byte record per failed step.
pub(super) fn parse_report(bytes: &[u8]) -> Vec<StepError> {
    bytes
        .chunks_exact(8)
        .filter_map(|r| {
            let step = u32::from_ne_bytes(r[..4].try_into().ok()?);
            let errno = i32::from_ne_bytes(r[4..].try_into().ok()?);
            Some(StepError {
                step: Step::from_code(step)?,
                errno,
            })
        })
        .collect()
}

/// Whether a step failure is the last thing the child did (fatal) or a warning it went on
/// after.
pub(super) fn is_fatal(error: &StepError) -> bool {
    !error.step.optional()
}

/// Writes a step's failure to the report pipe.
unsafe fn report(fd: RawFd, step: Step) {
    let errno = *libc::__errno_location();
    let mut record = [0u8; 8];
    record[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    record[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(fd, record.as_ptr().cast(), record.len());
}

/// Reports `step` and ends the child.
unsafe fn fail(fd: RawFd, step: Step) -> ! {
    report(fd, step);
    libc::_exit(127)
}

/// The child: sets up the jail and becomes the interpreter. Direct system calls only.
unsafe fn child(l: &Launch) -> ! {
    let fd = l.report;
    macro_rules! must {
        ($step:expr, $call:expr) => {
            if $call == -1 {
                fail(fd, $step)
            }
        };
    }
    macro_rules! may {
        ($step:expr, $call:expr) => {
            if $call == -1 {
                report(fd, $step)
            }
        };
    }
    let null = std::ptr::null::<libc::c_char>();
    let empty = std::ptr::null::<libc::c_void>();

    must!(Step::Stdio, libc::dup2(l.stdin, 0));
    must!(Step::Stdio, libc::dup2(l.stdout, 1));
    must!(Step::Stdio, libc::dup2(l.stderr, 2));
    // Every other descriptor the engine had open closes at exec (the report pipe already does).
    must!(
        Step::Stdio,
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int
        )
    );

    if let Identity::Namespaced { uid_map, gid_map } = &l.identity {
        must!(Step::IdMap, write_file(c"/proc/self/setgroups", b"deny"));
        must!(
            Step::IdMap,
            write_file(c"/proc/self/uid_map", uid_map.as_bytes())
        );
        must!(
            Step::IdMap,
            write_file(c"/proc/self/gid_map", gid_map.as_bytes())
        );
    }

    must!(
        Step::MountPrivate,
        libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            empty
        )
    );
    must!(
        Step::MountRoot,
        libc::mount(
            c"tutti-sandbox".as_ptr(),
            STAGING.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            ROOT_OPTIONS.as_ptr().cast()
        )
    );
    must!(Step::MountRoot, libc::chdir(STAGING.as_ptr()));
    for dir in &l.plan.dirs {
        must!(Step::Layout, libc::mkdir(dir.as_ptr(), 0o755));
    }
    for (target, link) in &l.plan.links {
        must!(Step::Layout, libc::symlink(target.as_ptr(), link.as_ptr()));
    }
    for file in &l.plan.files {
        let f = libc::open(
            file.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        );
        must!(Step::Layout, f);
        libc::close(f);
    }
    for bind in &l.plan.binds {
        must!(
            Step::Bind,
            libc::mount(
                bind.source.as_ptr(),
                bind.target.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                empty
            )
        );
        must!(
            Step::Bind,
            libc::mount(null, bind.target.as_ptr(), null, bind.remount, empty)
        );
    }
    for (source, target) in &l.plan.writable {
        must!(
            Step::Bind,
            libc::mount(source.as_ptr(), target.as_ptr(), null, libc::MS_BIND, empty)
        );
    }
    may!(
        Step::MountProc,
        libc::mount(
            c"proc".as_ptr(),
            c"proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            empty
        )
    );
    must!(
        Step::MountTmp,
        libc::mount(
            c"tutti-tmp".as_ptr(),
            c"tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            l.tmp_options.as_ptr().cast()
        )
    );
    let program = libc::open(
        c"tmp/main.py".as_ptr(),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
        0o644,
    );
    must!(Step::WriteProgram, program);
    must!(Step::WriteProgram, write_all(program, l.program));
    libc::close(program);

    // The assembled root becomes `/`; the host's root, stacked under it, is detached.
    must!(
        Step::PivotRoot,
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
    );
    must!(
        Step::PivotRoot,
        libc::umount2(c".".as_ptr(), libc::MNT_DETACH)
    );
    must!(Step::PivotRoot, libc::chdir(c"/".as_ptr()));
    must!(
        Step::RootReadOnly,
        libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            empty
        )
    );
    must!(Step::Layout, libc::chdir(c"/tmp".as_ptr()));

    for (resource, soft, hard) in l.rlimits {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        must!(Step::Limits, libc::setrlimit(resource, &limit));
    }
    // Raw system calls, not the C library's wrappers: those signal every thread the library
    // believes the process has (the engine's, copied by the clone) under a lock that another
    // engine thread may have held at the clone, and the child would wait on it forever.
    if let Identity::Host { uid, gid } = l.identity {
        must!(
            Step::DropUser,
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) as libc::c_int
        );
        must!(
            Step::DropUser,
            libc::syscall(libc::SYS_setresgid, gid, gid, gid) as libc::c_int
        );
        must!(
            Step::DropUser,
            libc::syscall(libc::SYS_setresuid, uid, uid, uid) as libc::c_int
        );
    }
    // Dies with the engine's thread that started it (set after the uid change, which clears it).
    must!(
        Step::NoNewPrivs,
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0
        )
    );
    must!(
        Step::NoNewPrivs,
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0)
    );
    match l.filters {
        Some(filters) => {
            for program in [&filters.no_clone3, &filters.deny] {
                let fprog = libc::sock_fprog {
                    len: program.len() as libc::c_ushort,
                    filter: program.as_ptr() as *mut libc::sock_filter,
                };
                may!(
                    Step::Seccomp,
                    libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &fprog as *const libc::sock_fprog
                    ) as libc::c_int
                );
            }
        }
        None => {
            *libc::__errno_location() = libc::ENOSYS;
            report(fd, Step::Seccomp);
        }
    }
    libc::execve(l.plan.python.as_ptr(), l.argv.as_ptr(), l.envp.as_ptr());
    fail(fd, Step::Exec)
}

unsafe fn write_file(path: &CStr, bytes: &[u8]) -> libc::c_int {
    let f = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if f == -1 {
        return -1;
    }
    let rc = write_all(f, bytes);
    libc::close(f);
    rc
}

unsafe fn write_all(fd: RawFd, mut bytes: &[u8]) -> libc::c_int {
    while !bytes.is_empty() {
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        if n == -1 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return -1;
        }
        bytes = &bytes[n as usize..];
    }
    0
}

/// The pidfd's process: waits for its exit without blocking a thread (a pidfd is readable once
/// its process has exited), then reaps it.
pub(super) async fn wait(pidfd: &tokio::io::unix::AsyncFd<OwnedFd>) -> io::Result<Exit> {
    loop {
        let mut ready = pidfd.readable().await?;
        match reap(pidfd.get_ref().as_raw_fd(), libc::WNOHANG)? {
            Some(exit) => return Ok(exit),
            None => ready.clear_ready(),
        }
    }
}

/// How the interpreter ended, and the CPU time it and the processes it reaped used.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exit {
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) cpu: std::time::Duration,
}

/// `waitid(P_PIDFD)` with resource usage (the raw system call: the C library's wrapper has no
/// rusage argument). `None` with `WNOHANG` while it still runs.
pub(super) fn reap(pidfd: RawFd, flags: libc::c_int) -> io::Result<Option<Exit>> {
    // SAFETY: zeroed siginfo and rusage are valid out-parameters.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to the two out-parameters above.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                pidfd,
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | flags,
                &mut usage as *mut libc::rusage,
            )
        };
        if rc == -1 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(error);
        }
        break;
    }
    // SAFETY: reading fields the kernel filled in (si_pid 0: nothing has exited yet).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    let time = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    let cpu = time(usage.ru_utime) + time(usage.ru_stime);
    Ok(Some(if code == libc::CLD_EXITED {
        Exit {
            code: Some(status),
            signal: None,
            cpu,
        }
    } else {
        Exit {
            code: None,
            signal: Some(status),
            cpu,
        }
    }))
}

/// Sends SIGKILL to the pidfd's process: PID 1 of the run's namespace, so the kernel kills every
/// other process in it too. A pidfd names exactly that process, even after its pid is reused.
pub(super) fn kill(pidfd: RawFd) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == -1 {
        let error = io::Error::last_os_error();
        // ESRCH: it has already exited.
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(error);
        }
    }
    Ok(())
}
