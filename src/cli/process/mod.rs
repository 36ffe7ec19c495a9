//! Process primitives per platform: signalling a process group, liveness, priority; and on Linux
//! the clone-based spawner (`linux`).

#[cfg(target_os = "linux")]
pub mod linux;

pub(crate) fn kill_group(pgid: u32, sig: i32) {
  #[cfg(unix)]
  unsafe {
    libc::killpg(pgid as libc::pid_t, sig);
  }
  #[cfg(not(unix))]
  let _ = (pgid, sig);
}

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: u32) -> bool {
  #[cfg(unix)]
  unsafe {
    libc::kill(pid as libc::pid_t, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
  }
  #[cfg(not(unix))]
  {
    let _ = pid;
    true
  }
}

/// Raises the calling process's nice value by `by` (capped at 19). Async-signal-safe: it runs in
/// the child between fork and exec. Best effort: lowering one's own priority needs no privilege,
/// and a failure leaves the CLI at this process's priority.
#[cfg(unix)]
pub(crate) fn lower_priority(by: i32) {
  if by <= 0 {
    return;
  }
  unsafe {
    *errno_location() = 0;
    let current = libc::getpriority(libc::PRIO_PROCESS, 0);
    if current == -1 && *errno_location() != 0 {
      return;
    }
    libc::setpriority(libc::PRIO_PROCESS, 0, (current + by).min(19));
  }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
  libc::__errno_location()
}
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
unsafe fn errno_location() -> *mut libc::c_int {
  libc::__error()
}

/// This process's nice value, from `/proc/self/stat` (tests only).
#[cfg(all(test, target_os = "linux"))]
pub fn own_nice() -> i32 {
  let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
  stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(16).unwrap().parse().unwrap()
}
