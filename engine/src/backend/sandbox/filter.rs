//! The sandbox's seccomp filters, compiled once per process with seccompiler.
//!
//! A deny list on top of what the namespaces and the dropped privileges already refuse: system
//! calls no interpreted program needs and that attack the kernel or other processes (tracing,
//! key rings, BPF, kernel modules, mounts, new namespaces, raw I/O ports). Everything else is
//! allowed, so ordinary Python (threads, subprocesses, sockets that can reach nothing) works.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// System calls refused with `EPERM`.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_lookup_dcookie,
    libc::SYS_personality,
];

/// `clone` flags that make a namespace: refused, so code cannot build itself a fresh user
/// namespace (and the kernel surface that comes with one) inside the sandbox.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The compiled filters: the deny list (`EPERM`), and `clone3` answered with `ENOSYS` (its
/// flags live in memory a filter cannot read; C libraries then fall back to `clone`, whose
/// flags the first filter checks). Two filters because one filter has one action on a match.
pub(super) struct Filters {
    pub(super) deny: BpfProgram,
    pub(super) no_clone3: BpfProgram,
}

/// The filters, compiled on first use; `None` (with the reason logged once) on an
/// architecture seccompiler does not know.
pub(super) fn filters() -> Option<&'static Filters> {
    static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();
    FILTERS
        .get_or_init(|| match compile() {
            Ok(filters) => Some(filters),
            Err(error) => {
                tracing::error!(%error, "cannot compile the sandbox's seccomp filter: sandboxed code runs without one");
                None
            }
        })
        .as_ref()
}

fn compile() -> Result<Filters, Box<dyn std::error::Error>> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, vec![])).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(Filters {
        deny: deny.try_into()?,
        no_clone3: no_clone3.try_into()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_on_this_architecture() {
        let filters = filters().expect("seccompiler knows this architecture");
        assert!(!filters.deny.is_empty());
        assert!(!filters.no_clone3.is_empty());
    }
}
