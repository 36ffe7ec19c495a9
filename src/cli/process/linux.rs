//! Starting the CLI on Linux without `fork()`.
//!
//! `std::process::Command` with a `pre_exec` hook (needed for `PR_SET_PDEATHSIG`) has to `fork()`
//! the whole Node.js process: the kernel copies its page tables (and holds its memory map
//! locked, stalling the JavaScript thread's page faults meanwhile), then tears the copy down
//! again at `exec`. For a Node process of 100 MB that is 1–2 ms per task, growing with the
//! process. Here the child is made the way `posix_spawn` makes it, with
//! `clone(CLONE_VM | CLONE_VFORK)` on a small stack of its own: nothing is copied, and the
//! calling thread waits only until the child has called `execve`. The child runs only
//! async-signal-safe system calls on memory prepared before the clone: it takes default signal
//! handling and an empty signal mask, becomes its own process group leader, asks for SIGKILL
//! when its parent dies (and checks the parent is still there), moves its pipes to fds 0–2,
//! changes directory and execs. A failure is reported to the parent through a close-on-exec
//! pipe. The exit is awaited through a pidfd, so no thread blocks in `waitpid`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;

use super::confine::Prepared;
pub use super::confine::{ChildSetup, SandboxStep};

/// Whether this kernel has `pidfd_open` (Linux 5.3+); without it the caller uses `Command`.
pub fn available() -> bool {
  static OK: OnceLock<bool> = OnceLock::new();
  // SAFETY: `getpid` has no preconditions and cannot fail.
  *OK.get_or_init(|| match pidfd_open(unsafe { libc::getpid() }) {
    Ok(_fd) => true,
    Err(_) => false,
  })
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
  // SAFETY: `pidfd_open(pid, 0)` takes two integers and touches no memory of ours.
  let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
  if fd < 0 {
    return Err(io::Error::last_os_error());
  }
  // SAFETY: the call succeeded, so `fd` is a new open descriptor that nothing else owns; the
  // `OwnedFd` becomes its only owner.
  Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
  let mut fds = [0 as RawFd; 2];
  // SAFETY: `fds` is a writable array of the two `c_int`s `pipe2` fills in.
  if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
    return Err(io::Error::last_os_error());
  }
  // SAFETY: `pipe2` succeeded, so both are new open descriptors that nothing else owns; each
  // `OwnedFd` becomes the only owner of one of them.
  Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Which step failed in the child, with the `errno` it failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
  Setup,
  Chdir,
  Exec,
  /// A sandbox step of [`ChildSetup`] (its number: see [`SandboxStep`]).
  Sandbox(SandboxStep),
}

#[derive(Debug)]
pub struct SpawnError {
  pub step: Step,
  pub error: io::Error,
}

/// A started child: its pid, the parent's ends of its stdio pipes, and its exit.
pub struct RawChild {
  pid: libc::pid_t,
  status: Option<ExitStatus>,
  pidfd: AsyncFd<OwnedFd>,
  /// Kept until the child is dropped (the sandbox's relay).
  attached: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

pub struct Spawned {
  pub child: RawChild,
  pub stdin: OwnedFd,
  pub stdout: OwnedFd,
  pub stderr: OwnedFd,
  /// The listeners the child made in its new network namespace ([`ChildSetup::listen_ports`]).
  pub listeners: Vec<OwnedFd>,
}

/// What the child reads; lives on the parent's stack, which is frozen until the child execs.
struct ChildArgs {
  program: *const libc::c_char,
  argv: *const *const libc::c_char,
  envp: *const *const libc::c_char,
  cwd: *const libc::c_char,
  /// Child ends of the stdin, stdout and stderr pipes, for fds 0, 1 and 2.
  fds: [RawFd; 3],
  /// Write end of the close-on-exec pipe a failure is reported on.
  report: RawFd,
  parent: libc::pid_t,
  /// Nice increment (see `super::lower_priority`).
  niceness: i32,
  /// Sandbox steps (namespaces, ids, a listener, limits) prepared by [`Prepared::new`]; null for none.
  setup: *const Prepared,
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
  // Only system calls from here on: no allocation, no locks, no panics.
  // SAFETY: this runs only as the child `spawn` makes with `clone(CLONE_VM | CLONE_VFORK)`. `arg`
  // is the `&ChildArgs` passed there: the parent thread is suspended until this child execs or
  // exits, so that struct, and the C strings and NULL-terminated arrays it points to (all owned
  // by `spawn`'s frame), stay valid and unchanged for as long as this runs. Every call below is an
  // async-signal-safe system call (`lower_priority` included) on locals or on that memory: no
  // allocation, no locks, no unwinding (`fail` ends in `_exit`), so sharing the parent's memory
  // and TLS (its `errno` slot, unused by the suspended parent) is sound. Every signal is blocked
  // on the cloning thread, so no handler of the parent runs here before they are reset. The
  // zeroed `sigaction` and `sigset_t` are plain C structs for which all-zero is a valid value.
  unsafe {
    let a = &*(arg as *const ChildArgs);
    let fail = |step: i32| -> ! {
      let msg = [step, *libc::__errno_location()];
      libc::write(a.report, msg.as_ptr().cast(), std::mem::size_of_val(&msg));
      libc::_exit(127)
    };
    // Default handling for every signal the parent handles (its handlers are not ours to run),
    // SIGPIPE included (Node ignores it, and an ignored signal survives exec), then unblock all.
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in 1..libc::SIGRTMAX() {
      if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        continue;
      }
      let mut old: libc::sigaction = std::mem::zeroed();
      if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
        && (sig == libc::SIGPIPE || (old.sa_sigaction != libc::SIG_IGN && old.sa_sigaction != libc::SIG_DFL))
      {
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
      }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
      fail(0);
    }
    if libc::setpgid(0, 0) != 0 {
      fail(0);
    }
    // Die with the Node process, even when it is killed with SIGKILL.
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
      fail(0);
    }
    if libc::getppid() != a.parent {
      libc::_exit(1);
    }
    if !a.setup.is_null() {
      if let Err(step) = (*a.setup).apply() {
        fail(step);
      }
    }
    for (target, &fd) in a.fds.iter().enumerate() {
      let target = target as RawFd;
      if fd == target {
        // Already in place: only drop close-on-exec.
        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
          fail(0);
        }
      } else if libc::dup2(fd, target) < 0 {
        fail(0);
      }
    }
    if !a.setup.is_null() {
      for &(from, to) in &(*a.setup).pass_fds {
        if libc::dup2(from, to) < 0 {
          fail(SandboxStep::PassFd.code());
        }
      }
    }
    super::lower_priority(a.niceness);
    if libc::chdir(a.cwd) != 0 {
      fail(1);
    }
    libc::execve(a.program, a.argv, a.envp);
    fail(2)
  }
}

/// What the child reported before it exec'd: nothing (the pipe closed on exec), or the step that
/// failed and its errno (the child has exited then; it is reaped here).
fn child_report(report_r: &OwnedFd, pid: libc::pid_t) -> Result<(), SpawnError> {
  let mut msg = [0i32; 2];
  let n = loop {
    // SAFETY: `report_r` is an open fd owned here, and `msg` is a writable local of exactly the
    // byte length passed.
    let n = unsafe { libc::read(report_r.as_raw_fd(), msg.as_mut_ptr().cast(), std::mem::size_of_val(&msg)) };
    if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
      continue;
    }
    break n;
  };
  if n <= 0 {
    return Ok(());
  }
  let mut status = 0;
  // SAFETY: `pid` is our child, not yet reaped, and `status` a writable local `c_int`.
  unsafe { libc::waitpid(pid, &mut status, 0) };
  let step = match msg[0] {
    1 => Step::Chdir,
    2 => Step::Exec,
    n if n >= 10 => Step::Sandbox(SandboxStep::from_code(n)),
    _ => Step::Setup,
  };
  Err(SpawnError { step, error: io::Error::from_raw_os_error(msg[1]) })
}

/// Kills and reaps a child that was started but cannot be handed out.
fn kill_unreaped(pid: libc::pid_t) {
  // SAFETY: `pid` is our child, not yet reaped (so the pid cannot have been reused); both
  // calls take plain integers, and `waitpid` accepts a null status pointer.
  unsafe {
    libc::kill(pid, libc::SIGKILL);
    libc::waitpid(pid, std::ptr::null_mut(), 0);
  }
}

/// Starts `program` (an absolute path) with `args`, exactly the environment `env`, in `cwd`,
/// `niceness` steps below this process's priority, with piped stdio, in a new process group,
/// set to die with this process.
pub fn spawn(
  program: &Path,
  args: &[String],
  env: &[(String, String)],
  cwd: &Path,
  niceness: i32,
  spec_setup: Option<&ChildSetup>,
) -> Result<Spawned, SpawnError> {
  let setup = |error: io::Error| SpawnError { step: Step::Setup, error };
  let cstr = |b: &[u8]| CString::new(b).map_err(|_| setup(io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument")));
  let program_c = cstr(program.as_os_str().as_bytes())?;
  let mut argv_c = vec![program_c.clone()];
  for a in args {
    argv_c.push(cstr(a.as_bytes())?);
  }
  let envp_c: Vec<CString> = env.iter().map(|(k, v)| cstr(format!("{k}={v}").as_bytes())).collect::<Result<_, _>>()?;
  let cwd_c = cstr(cwd.as_os_str().as_bytes())?;
  let argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
  let envp: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();

  let (in_r, in_w) = pipe().map_err(setup)?;
  let (out_r, out_w) = pipe().map_err(setup)?;
  let (err_r, err_w) = pipe().map_err(setup)?;
  let (report_r, report_w) = pipe().map_err(setup)?;
  let prepared = match spec_setup {
    Some(c) => Some(Prepared::new(c).map_err(setup)?),
    None => None,
  };
  let a = ChildArgs {
    program: program_c.as_ptr(),
    argv: argv.as_ptr(),
    envp: envp.as_ptr(),
    cwd: cwd_c.as_ptr(),
    fds: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
    report: report_w.as_raw_fd(),
    // SAFETY: `getpid` has no preconditions and cannot fail.
    parent: unsafe { libc::getpid() },
    niceness,
    setup: prepared.as_ref().map_or(std::ptr::null(), |p| p as *const Prepared),
  };
  // The child's stack: it makes a few system calls, nothing more.
  let mut stack = vec![0u8; 64 * 1024];
  let top = ((stack.as_mut_ptr() as usize + stack.len()) & !15) as *mut libc::c_void;
  // SAFETY: the sigset_t values are locals (all-zero is a valid value) initialised by
  // `sigfillset` or filled in by `pthread_sigmask`. `child_main` has the signature `clone`
  // expects; `top` is the 16-byte-aligned end of `stack`, a 64 KiB allocation owned here; and the
  // argument is `&a`, on this frame. With CLONE_VFORK this thread is suspended until the child
  // execs or exits, so `stack`, `a` and the strings and arrays it points to (`program_c`,
  // `argv`, `envp`, `cwd_c`, all dropped only after this returns) outlive the child's use of
  // them, and nothing else touches them meanwhile; the child itself only makes system calls (see
  // `child_main`).
  let pid = unsafe {
    // Block every signal on this thread while the child shares its memory (as posix_spawn does):
    // no handler of ours may run on the child's side before it has reset them.
    let mut all: libc::sigset_t = std::mem::zeroed();
    let mut old: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    let pid = libc::clone(child_main, top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, &a as *const ChildArgs as *mut libc::c_void);
    let err = io::Error::last_os_error();
    libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    if pid < 0 {
      return Err(setup(err));
    }
    pid
  };
  // CLONE_VFORK: the child has exec'd or exited by now, so its stack and arguments are free.
  drop(stack);
  drop((in_r, out_w, err_w, report_w));
  child_report(&report_r, pid)?;
  let pidfd = pidfd_open(pid).and_then(|fd| {
    // SAFETY: `fd` is an open pidfd owned by the `OwnedFd`, which is moved into the `AsyncFd`:
    // it stays open, and `as_raw_fd` keeps returning it, for the `AsyncFd`'s whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| std::io::Error::other(e.to_string()))
  });
  let pidfd = match pidfd {
    Ok(fd) => fd,
    Err(e) => {
      kill_unreaped(pid);
      return Err(setup(e));
    }
  };
  let listeners = match &prepared {
    Some(p) if p.listen > 0 => match p.take_listeners() {
      Ok(fds) => fds,
      Err(e) => {
        kill_unreaped(pid);
        return Err(SpawnError { step: Step::Sandbox(SandboxStep::Listen), error: e });
      }
    },
    _ => vec![],
  };
  Ok(Spawned { child: RawChild { pid, status: None, pidfd, attached: vec![] }, stdin: in_w, stdout: out_r, stderr: err_r, listeners })
}

impl RawChild {
  /// Keeps `thing` alive as long as this child (dropped with it).
  pub fn attach(&mut self, thing: Box<dyn std::any::Any + Send + Sync>) {
    self.attached.push(thing);
  }

  pub fn id(&self) -> u32 {
    self.pid as u32
  }

  /// The exit status if the child has exited (reaping it), else `None`.
  pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
    if let Some(s) = self.status {
      return Ok(Some(s));
    }
    let mut status = 0;
    // SAFETY: `self.pid` is our child (reaped at most once: `status` is set when it is), and
    // `status` a writable local `c_int`.
    let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
    if r < 0 {
      return Err(io::Error::last_os_error());
    }
    if r == self.pid {
      self.status = Some(ExitStatus::from_raw(status));
    }
    Ok(self.status)
  }

  /// Waits for the child to exit (its pidfd turns readable) and reaps it.
  pub async fn wait(&mut self) -> io::Result<ExitStatus> {
    loop {
      if let Some(s) = self.try_wait()? {
        return Ok(s);
      }
      let mut ready = self.pidfd.readable().await?;
      ready.clear_ready();
    }
  }

  /// SIGKILL, unless it was already reaped.
  pub fn start_kill(&mut self) -> io::Result<()> {
    // SAFETY: `kill` takes plain integers; `self.pid` is our child and not yet reaped (checked
    // first), so the pid cannot belong to another process.
    if self.status.is_none() && unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
      return Err(io::Error::last_os_error());
    }
    Ok(())
  }
}

impl Drop for RawChild {
  /// Like `kill_on_drop`: a child not waited for is killed and reaped.
  fn drop(&mut self) {
    if self.status.is_some() {
      return;
    }
    let _ = self.start_kill();
    if matches!(self.try_wait(), Ok(None)) {
      let pid = self.pid;
      // SAFETY: `pid` is our child, not yet reaped, and `waitpid` accepts a null status pointer;
      // `self` is going away, so this thread is the only one that reaps it.
      std::thread::spawn(move || unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
      });
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use tokio::io::AsyncReadExt;

  async fn output(s: Spawned) -> (String, ExitStatus) {
    let Spawned { mut child, stdin, stdout, stderr: _stderr, .. } = s;
    drop(stdin);
    let mut out = String::new();
    tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).unwrap().read_to_string(&mut out).await.unwrap();
    (out, child.wait().await.unwrap())
  }

  fn env() -> Vec<(String, String)> {
    vec![("PATH".into(), "/usr/bin:/bin".into()), ("ONLY_THIS".into(), "1".into())]
  }

  #[tokio::test]
  async fn child_gets_default_signals_an_empty_mask_its_own_group_the_cwd_and_only_the_env_given() {
    assert!(available(), "this kernel has pidfd_open");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let script = "exec cat /proc/self/status /proc/self/stat; ".to_string();
    let s = spawn(Path::new("/bin/sh"), &["-c".into(), script], &env(), &dir, 5, None).unwrap();
    let pid = s.child.id();
    let (out, status) = output(s).await;
    assert!(status.success());
    let field = |name: &str| out.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap();
    // The test harness ignores SIGPIPE (Rust programs do); the child must not inherit that.
    assert_eq!(u64::from_str_radix(&field("SigIgn:"), 16).unwrap() & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    assert_eq!(field("SigBlk:"), "0000000000000000");
    let stat = out.lines().last().unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let pgrp: u32 = after.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(pgrp, pid, "the child leads its own process group");
    let nice: i32 = after.split(' ').nth(16).unwrap().parse().unwrap();
    assert_eq!(nice, (super::super::own_nice() + 5).min(19), "the child runs 5 steps below this process");

    let s = spawn(Path::new("/bin/sh"), &["-c".into(), "pwd; env".into()], &env(), &dir, 0, None).unwrap();
    let (out, _) = output(s).await;
    let mut lines = out.lines();
    assert_eq!(lines.next().unwrap(), dir.to_str().unwrap());
    let mut vars: Vec<&str> = lines.filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_=")).collect();
    vars.sort();
    assert_eq!(vars, ["ONLY_THIS=1", "PATH=/usr/bin:/bin"]);
  }

  /// A child in a network namespace of its own reaches the listener it made there (handed to
  /// this process) and nothing on the host's loopback.
  #[tokio::test]
  async fn a_child_in_its_own_network_namespace_reaches_only_its_listener() {
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    for new_user_ns in [false, true] {
      let setup = ChildSetup { new_user_ns, new_net_ns: true, listen_ports: vec![4111], ..Default::default() };
      let dir = tempfile::tempdir().unwrap();
      let script = format!(
        "if (echo x > /dev/tcp/127.0.0.1/{host_port}) 2>/dev/null; then echo HOST-REACHED; fi; echo hello > /dev/tcp/127.0.0.1/4111; cat /proc/self/uid_map"
      );
      let s = match spawn(Path::new("/bin/bash"), &["-c".into(), script], &env(), dir.path(), 0, Some(&setup)) {
        Ok(s) => s,
        Err(e) if matches!(e.step, Step::Sandbox(SandboxStep::Namespaces)) => {
          // A kernel or container that allows no new namespaces: nothing to check here.
          eprintln!("skipped: this system allows no new user/network namespace ({})", e.error);
          return;
        }
        Err(e) => panic!("{:?} {}", e.step, e.error),
      };
      let mut s = s;
      let listener = std::net::TcpListener::from(s.listeners.pop().expect("the listener was handed over"));
      let accepted = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut c, &mut got).unwrap();
        got
      });
      let (out, status) = output(s).await;
      assert!(status.success(), "{out}");
      assert!(!out.contains("HOST-REACHED"), "the host's loopback is out of reach: {out}");
      assert_eq!(accepted.join().unwrap(), "hello\n");
      // SAFETY: getuid has no preconditions.
      let uid = unsafe { libc::getuid() };
      if new_user_ns {
        assert_eq!(out.split_whitespace().take(3).collect::<Vec<_>>(), [uid.to_string(), uid.to_string(), "1".into()]);
      }
    }
  }

  #[tokio::test]
  async fn failures_name_the_step_and_a_dropped_child_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let e = spawn(Path::new("/nonexistent/claude"), &[], &env(), dir.path(), 0, None).err().unwrap();
    assert_eq!((e.step, e.error.kind()), (Step::Exec, io::ErrorKind::NotFound));
    let e = spawn(Path::new("/bin/true"), &[], &env(), &dir.path().join("missing"), 0, None).err().unwrap();
    assert_eq!((e.step, e.error.kind()), (Step::Chdir, io::ErrorKind::NotFound));
    let e = spawn(Path::new("/bin/true"), &["a\0b".into()], &env(), dir.path(), 0, None).err().unwrap();
    assert_eq!(e.step, Step::Setup);

    let s = spawn(Path::new("/bin/sleep"), &["30".into()], &env(), dir.path(), 0, None).unwrap();
    let pid = s.child.id() as libc::pid_t;
    drop(s);
    let gone = (0..200).any(|_| {
      std::thread::sleep(std::time::Duration::from_millis(10));
      // SAFETY: `kill` with signal 0 takes plain integers and only checks that `pid` exists.
      (unsafe { libc::kill(pid, 0) }) != 0
    });
    assert!(gone, "the dropped child was killed and reaped");
  }
}
