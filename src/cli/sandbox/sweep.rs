//! Sandboxes a killed server left half made.
//!
//! bubblewrap runs as two processes: the outer one (the server's child, in the server's pid
//! namespace) and the inner one it clones into the new namespaces, which waits for the outer one
//! to say that they are ready before it goes on. The outer one dies with the server
//! (`--die-with-parent`); if the server is killed (SIGKILL) between the clone and that word, the
//! inner one waits forever: no CLI and no agent run in it, but it keeps its mounts of the
//! session's folders. Nothing of the dead server can end it, so the next server that makes a
//! sandbox does: [`sweep`] kills every such process of this package's sandboxes.
//!
//! Such a process is told apart by what is true of no other: its program is `bwrap`; its argv is
//! one this package builds (the sandbox's `HOME` tmpfs); it is in a pid namespace other than the
//! server's (an outer one, alive or being set up, is always in the server's); and its parent is
//! not a `bwrap` (a live inner process's parent is its outer one until that one dies).

use std::path::Path;

/// The `bwrap` arguments every sandbox of this package has (`--tmpfs <SANDBOX_HOME>`).
fn ours(argv: &[&[u8]]) -> bool {
  use std::os::unix::ffi::OsStrExt;
  let home = super::SANDBOX_HOME.as_bytes();
  argv.first().is_some_and(|a0| Path::new(std::ffi::OsStr::from_bytes(a0)).file_name() == Some("bwrap".as_ref()))
    && argv.windows(2).any(|w| w[0] == b"--tmpfs" && w[1] == home)
}

fn comm(pid: u32) -> Option<String> {
  std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end_matches('\n').to_owned())
}

fn pid_ns(pid: &str) -> Option<std::path::PathBuf> {
  std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Kills the inner processes of this package's sandboxes whose outer process is gone; how many.
/// A process that cannot be read (another user's, or gone meanwhile) is left alone.
pub fn sweep() -> usize {
  let Some(own_ns) = pid_ns("self") else { return 0 };
  let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
  let mut killed = 0;
  for e in entries.flatten() {
    let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
    if comm(pid).as_deref() != Some("bwrap") {
      continue;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
    let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !ours(&argv) {
      continue;
    }
    match pid_ns(&pid.to_string()) {
      Some(ns) if ns != own_ns => {}
      _ => continue,
    }
    let Some(parent) = crate::cli::process::parent_pid(pid) else { continue };
    if comm(parent).as_deref() == Some("bwrap") {
      continue;
    }
    // SAFETY: kill(2) with a pid read above and a constant signal; no memory is involved.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
      killed += 1;
    }
  }
  killed
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::process::{Child, Command, Stdio};
  use std::time::{Duration, Instant};

  use crate::cli::process::pid_running as alive;

  fn gone_within(pid: u32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while alive(pid) {
      if Instant::now() > deadline {
        return false;
      }
      std::thread::sleep(Duration::from_millis(10));
    }
    true
  }

  /// `maker` (util-linux's `unshare`, copied under the name `bwrap`) makes a pid namespace and
  /// forks `inner` into it, as bubblewrap's outer process does; the child's pid.
  fn spawn_in_namespace(maker: &Path, inner: &Path, home: &str) -> Option<(Child, u32)> {
    let mut c = Command::new(maker);
    if !crate::cli::sandbox::is_root() {
      c.args(["--user", "--map-root-user"]);
    }
    c.args(["--pid", "--fork"]).arg(inner).args(["-c", "sleep 60; :", "x", "--tmpfs", home]);
    let mut maker = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
      let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", maker.id())).unwrap_or_default();
      if let Some(k) = kids.split_whitespace().next().and_then(|k| k.parse::<u32>().ok()) {
        return Some((maker, k));
      }
      if Instant::now() > deadline || maker.try_wait().ok().flatten().is_some() {
        let _ = maker.kill();
        let _ = maker.wait();
        return None;
      }
      std::thread::sleep(Duration::from_millis(10));
    }
  }

  /// A process like bubblewrap's inner one whose outer one died (a `bwrap` with this package's
  /// argv, in a pid namespace of its own, its parent gone) is killed; the same while its outer
  /// one lives, one with an argv this package does not build, and one in the server's own pid
  /// namespace (an outer one) are left alone.
  #[test]
  fn an_orphaned_inner_bubblewrap_process_is_killed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (makers, inners) = (dir.path().join("m"), dir.path().join("i"));
    std::fs::create_dir_all(&makers).unwrap();
    std::fs::create_dir_all(&inners).unwrap();
    let (maker, inner) = (makers.join("bwrap"), inners.join("bwrap"));
    let (Ok(unshare), Ok(bash)) = (which("unshare"), which("bash")) else {
      eprintln!("skipped: unshare or bash is not installed");
      return;
    };
    std::fs::copy(unshare, &maker).unwrap();
    std::fs::copy(bash, &inner).unwrap();
    let Some((mut ours_maker, ours)) = spawn_in_namespace(&maker, &inner, super::super::SANDBOX_HOME) else {
      eprintln!("skipped: `unshare --pid --fork` cannot run here");
      return;
    };
    let (mut other_maker, other) = spawn_in_namespace(&maker, &inner, "/home/someone").expect("unshare ran a moment ago");
    let mut outer = Command::new(&inner).args(["-c", "sleep 60; :", "x", "--tmpfs", super::super::SANDBOX_HOME]).spawn().unwrap();

    sweep();
    assert!(alive(ours) && alive(other) && alive(outer.id()), "nothing swept while the outer processes live");

    for m in [&mut ours_maker, &mut other_maker] {
      m.kill().unwrap();
      m.wait().unwrap();
    }
    assert!(alive(ours) && alive(other), "orphaned, not killed by their maker's death");
    assert!(sweep() >= 1);
    assert!(gone_within(ours, Duration::from_secs(5)), "the orphaned inner process was killed");
    assert!(alive(other), "a process with an argv this package does not build is left alone");
    assert!(alive(outer.id()), "a process in the server's pid namespace is left alone");

    // SAFETY: kill(2) of a pid this test started; no memory is involved.
    unsafe { libc::kill(other as libc::pid_t, libc::SIGKILL) };
    outer.kill().unwrap();
    outer.wait().unwrap();
  }

  fn which(name: &str) -> std::io::Result<std::path::PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
      .iter()
      .map(|d| Path::new(d).join(name))
      .find(|p| p.is_file())
      .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, name.to_owned()))
  }
}
