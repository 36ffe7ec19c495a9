//! Process primitives per platform: signalling a process group, liveness, priority; and on Linux
//! the clone-based spawner (`linux`).

#[cfg(target_os = "linux")]
pub mod confine;
#[cfg(target_os = "linux")]
pub mod linux;

pub(crate) fn kill_group(pgid: u32, sig: i32) {
  // SAFETY: `killpg` takes plain integers and touches no memory of ours; a stale or foreign pgid
  // only makes it fail (ESRCH/EPERM), which is ignored here as before.
  #[cfg(unix)]
  unsafe {
    libc::killpg(pgid as libc::pid_t, sig);
  }
  #[cfg(not(unix))]
  let _ = (pgid, sig);
}

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: u32) -> bool {
  // SAFETY: `kill` with signal 0 only checks that the pid exists and may be signalled; it takes
  // plain integers, touches no memory of ours and sends nothing.
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
  // SAFETY: `errno_location` returns the calling thread's errno slot, always valid and aligned
  // for this thread, so reading and writing it is sound; `getpriority`/`setpriority` take plain
  // integers and are async-signal-safe system calls, so this is also sound in a forked or cloned
  // child before exec (no allocation, no locks).
  unsafe {
    *errno_location() = 0;
    let current = libc::getpriority(libc::PRIO_PROCESS, 0);
    if current == -1 && *errno_location() != 0 {
      return;
    }
    libc::setpriority(libc::PRIO_PROCESS, 0, (current + by).min(19));
  }
}

/// The address of the calling thread's `errno`.
///
/// # Safety
///
/// The pointer is valid only on the calling thread, for as long as that thread lives: it must not
/// be sent to or dereferenced on another thread.
#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
  // SAFETY: `__errno_location` has no preconditions; it returns this thread's errno slot.
  unsafe { libc::__errno_location() }
}
/// The address of the calling thread's `errno`.
///
/// # Safety
///
/// The pointer is valid only on the calling thread, for as long as that thread lives: it must not
/// be sent to or dereferenced on another thread.
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
unsafe fn errno_location() -> *mut libc::c_int {
  // SAFETY: `__error` has no preconditions; it returns this thread's errno slot.
  unsafe { libc::__error() }
}

/// This process's nice value, from `/proc/self/stat` (tests only).
#[cfg(all(test, target_os = "linux"))]
pub fn own_nice() -> i32 {
  let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
  stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(16).unwrap().parse().unwrap()
}

/// Whether a process with this pid still runs on this host: it exists and, on Linux, is not a
/// zombie (exited, waiting for its parent to reap it; a sandbox's inner process may wait so for
/// a reaper that never comes).
pub fn pid_running(pid: u32) -> bool {
  #[cfg(target_os = "linux")]
  {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command, which may hold spaces and parentheses.
    !matches!(stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()), Some("Z" | "X"))
  }
  #[cfg(not(target_os = "linux"))]
  pid_alive(pid)
}

/// Waits until none of `pids` runs any more ([`pid_running`]), looking every 10 ms for at most
/// `limit`; whether they are all gone. A process sent SIGKILL still takes a moment to go (longer
/// on a loaded machine): what stops a CLI waits for this before it says the CLI is gone.
pub async fn until_gone(pids: &[u32], limit: std::time::Duration) -> bool {
  let deadline = tokio::time::Instant::now() + limit;
  loop {
    if !pids.iter().any(|p| pid_running(*p)) {
      return true;
    }
    if tokio::time::Instant::now() >= deadline {
      return false;
    }
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
  }
}

/// The parent of a process on this host, from `/proc/<pid>/stat` (the field after the state,
/// which follows the command, itself free to hold spaces and parentheses).
#[cfg(target_os = "linux")]
pub fn parent_pid(pid: u32) -> Option<u32> {
  let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
  stat.rfind(')').map(|i| &stat[i + 1..])?.split_whitespace().nth(1)?.parse().ok()
}

/// Every process descended from `pid` on this host (Linux: from `/proc`; elsewhere none).
pub fn descendants(pid: u32) -> Vec<u32> {
  #[cfg(target_os = "linux")]
  {
    let mut parent_of: Vec<(u32, u32)> = vec![];
    if let Ok(dir) = std::fs::read_dir("/proc") {
      for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(ppid) = parent_pid(p) {
          parent_of.push((p, ppid));
        }
      }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
      let p = found[i];
      found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
      i += 1;
    }
    found.remove(0);
    found
  }
  #[cfg(not(target_os = "linux"))]
  {
    let _ = pid;
    vec![]
  }
}

/// SIGKILLs each process and the process group it leads or belongs to.
pub fn kill_tree(pids: &[u32]) {
  #[cfg(unix)]
  for &p in pids {
    // SAFETY: getpgid and kill take plain integers and touch no memory of ours; a pid that is
    // gone (or reused) makes them fail with ESRCH, which is ignored.
    unsafe {
      let pg = libc::getpgid(p as libc::pid_t);
      // Never this process's own group (a tool may join it: same session).
      if pg > 1 && pg != libc::getpgrp() {
        libc::killpg(pg, libc::SIGKILL);
      }
      libc::kill(p as libc::pid_t, libc::SIGKILL);
    }
  }
  #[cfg(not(unix))]
  let _ = pids;
}
