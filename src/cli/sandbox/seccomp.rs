//! The seccomp filter of the agent's sandbox, compiled by `seccompiler` (rust-vmm) and handed to
//! bubblewrap (`--seccomp FD`), which installs it last, just before it execs the CLI.
//!
//! It refuses, with `EPERM`, the system calls an agent never needs and that widen what a process
//! can reach beyond its own files and processes: tracing other processes and reading or writing
//! their memory (`ptrace`, `process_vm_readv`/`writev`), the kernel keyring, eBPF, every mount
//! and namespace call (`mount`, the new mount API, `pivot_root`, `unshare`, `setns`, and `clone`
//! with a namespace flag; `clone3` answers `ENOSYS` so that libc falls back to `clone`, whose flags
//! a filter can see), `perf_event_open`, kernel modules, `kexec`, `reboot`, swap, `acct`,
//! `userfaultfd`, `open_by_handle_at` (reading a file by handle, past the mount table), port I/O,
//! `syslog`, `quotactl`, `io_uring` (a second syscall path that seccomp cannot see into),
//! `personality` changes other than the default, and any mode with a setuid or setgid bit
//! (`chmod`, `open`/`creat` with `O_CREAT`, `mkdir`, `mknod` and their `*at` forms; `openat2`,
//! whose mode is in memory, answers `ENOSYS`). Calls of another ABI (32-bit `int 0x80`) end the
//! process (seccompiler's architecture check); x32 numbers of the refused calls are refused too.
//! Everything else is allowed.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

/// System calls refused outright.
const REFUSED: &[libc::c_long] = &[
  libc::SYS_ptrace,
  libc::SYS_process_vm_readv,
  libc::SYS_process_vm_writev,
  libc::SYS_kcmp,
  libc::SYS_pidfd_getfd,
  libc::SYS_keyctl,
  libc::SYS_add_key,
  libc::SYS_request_key,
  libc::SYS_bpf,
  libc::SYS_mount,
  libc::SYS_umount2,
  libc::SYS_pivot_root,
  libc::SYS_chroot,
  libc::SYS_open_tree,
  libc::SYS_move_mount,
  libc::SYS_fsopen,
  libc::SYS_fsconfig,
  libc::SYS_fsmount,
  libc::SYS_fspick,
  libc::SYS_mount_setattr,
  libc::SYS_unshare,
  libc::SYS_setns,
  libc::SYS_perf_event_open,
  libc::SYS_init_module,
  libc::SYS_finit_module,
  libc::SYS_delete_module,
  libc::SYS_kexec_load,
  libc::SYS_kexec_file_load,
  libc::SYS_reboot,
  libc::SYS_swapon,
  libc::SYS_swapoff,
  libc::SYS_acct,
  libc::SYS_userfaultfd,
  libc::SYS_open_by_handle_at,
  libc::SYS_name_to_handle_at,
  libc::SYS_syslog,
  libc::SYS_quotactl,
  libc::SYS_io_uring_setup,
  libc::SYS_io_uring_enter,
  libc::SYS_io_uring_register,
  libc::SYS_fanotify_init,
  libc::SYS_lookup_dcookie,
  libc::SYS_settimeofday,
  libc::SYS_clock_settime,
  libc::SYS_adjtimex,
  libc::SYS_clock_adjtime,
  #[cfg(target_arch = "x86_64")]
  libc::SYS_iopl,
  #[cfg(target_arch = "x86_64")]
  libc::SYS_ioperm,
  #[cfg(target_arch = "x86_64")]
  libc::SYS_uselib,
];

/// Calls that set a file's mode, and which argument holds it (`openat2` passes it in memory: it
/// answers `ENOSYS`, so libc falls back to `openat`).
const MODE_CALLS: &[(libc::c_long, u8)] = &[
  #[cfg(target_arch = "x86_64")]
  (libc::SYS_chmod, 1),
  #[cfg(target_arch = "x86_64")]
  (libc::SYS_open, 2),
  #[cfg(target_arch = "x86_64")]
  (libc::SYS_creat, 1),
  #[cfg(target_arch = "x86_64")]
  (libc::SYS_mkdir, 1),
  #[cfg(target_arch = "x86_64")]
  (libc::SYS_mknod, 1),
  (libc::SYS_fchmod, 1),
  (libc::SYS_fchmodat, 2),
  (452, 2), // fchmodat2
  (libc::SYS_openat, 3),
  (libc::SYS_mkdirat, 2),
  (libc::SYS_mknodat, 2),
];

/// The namespace flags `clone` may not be given.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
  libc::CLONE_NEWUSER,
  libc::CLONE_NEWNS,
  libc::CLONE_NEWNET,
  libc::CLONE_NEWPID,
  libc::CLONE_NEWIPC,
  libc::CLONE_NEWUTS,
  libc::CLONE_NEWCGROUP,
  0x80, // CLONE_NEWTIME
];

/// x32 system call numbers that differ from `0x40000000 | <x86_64 number>` for refused calls.
#[cfg(target_arch = "x86_64")]
const X32_SPECIAL: &[libc::c_long] = &[521, 539, 540];
#[cfg(target_arch = "x86_64")]
const X32_BIT: libc::c_long = 0x4000_0000;

fn arch() -> TargetArch {
  #[cfg(target_arch = "aarch64")]
  return TargetArch::aarch64;
  #[cfg(target_arch = "riscv64")]
  return TargetArch::riscv64;
  #[cfg(not(any(target_arch = "aarch64", target_arch = "riscv64")))]
  TargetArch::x86_64
}

fn filter(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Result<BpfProgram, String> {
  let f = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno), arch()).map_err(|e| e.to_string())?;
  f.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The filter as the bytes of a `struct sock_filter` array, which `bwrap --seccomp` reads.
pub fn program() -> Result<Vec<u8>, String> {
  let unconditional = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: libc::c_long| {
    rules.insert(nr, vec![]);
  };
  let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
  for &nr in REFUSED {
    unconditional(&mut rules, nr);
    #[cfg(target_arch = "x86_64")]
    unconditional(&mut rules, X32_BIT | nr);
  }
  #[cfg(target_arch = "x86_64")]
  for &nr in X32_SPECIAL {
    unconditional(&mut rules, X32_BIT | nr);
  }
  let clone_rules = NAMESPACE_FLAGS
    .iter()
    .map(|&flag| {
      let cond =
        SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag as u64), flag as u64).map_err(|e| e.to_string())?;
      SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
    })
    .collect::<Result<Vec<_>, String>>()?;
  rules.insert(libc::SYS_clone, clone_rules);
  // No setuid or setgid bit on any file or folder the agent makes or changes: its working
  // directory is the host's disk, where such a file (root's, through the idmapped mount, or the
  // server user's) would be a way to that user for anyone who runs it later.
  for &(nr, mode_arg) in MODE_CALLS {
    let set_id = [libc::S_ISUID, libc::S_ISGID]
      .iter()
      .map(|&bit| {
        let bit = u64::from(bit);
        let cond = SeccompCondition::new(mode_arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bit), bit).map_err(|e| e.to_string())?;
        SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
      })
      .collect::<Result<Vec<_>, String>>()?;
    #[cfg(target_arch = "x86_64")]
    rules.insert(X32_BIT | nr, set_id.clone());
    rules.insert(nr, set_id);
  }
  // personality(2): only the default persona (0) and queries (0xffffffff).
  let persona = [0u64, 0xffff_ffff]
    .iter()
    .map(|&p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p).map_err(|e| e.to_string()))
    .collect::<Result<Vec<_>, String>>()?;
  rules.insert(libc::SYS_personality, vec![SeccompRule::new(persona).map_err(|e| e.to_string())?]);
  let program = filter(rules, libc::EPERM as u32)?;
  let mut bytes = Vec::with_capacity(program.len() * 8);
  for f in &program {
    push(&mut bytes, f);
  }
  Ok(bytes)
}

/// The clone3 filter on its own (bubblewrap takes one program per `--add-seccomp-fd`).
pub fn clone3_program() -> Result<Vec<u8>, String> {
  let f = filter(BTreeMap::from([(libc::SYS_clone3, vec![]), (libc::SYS_openat2, vec![])]), libc::ENOSYS as u32)?;
  let mut bytes = Vec::with_capacity(f.len() * 8);
  for i in &f {
    push(&mut bytes, i);
  }
  Ok(bytes)
}

fn push(bytes: &mut Vec<u8>, f: &seccompiler::sock_filter) {
  bytes.extend_from_slice(&f.code.to_ne_bytes());
  bytes.push(f.jt);
  bytes.push(f.jf);
  bytes.extend_from_slice(&f.k.to_ne_bytes());
}

#[cfg(test)]
mod tests {
  #[test]
  fn both_programs_compile_to_whole_instructions() {
    let p = super::program().unwrap();
    assert!(!p.is_empty() && p.len().is_multiple_of(8));
    let c = super::clone3_program().unwrap();
    assert!(!c.is_empty() && c.len().is_multiple_of(8));
  }
}
