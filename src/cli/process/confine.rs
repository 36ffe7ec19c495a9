//! The sandbox steps the clone-spawned child takes before it execs bubblewrap (Linux).
//!
//! Bubblewrap builds the agent's filesystem, pid namespace and capability set; what it cannot do
//! is done here, in the child, between `clone` and `execve`:
//!
//! - **A network namespace with one listener in it.** The child unshares a network namespace
//!   (with a user namespace of its own when the server is not root), brings its loopback up and
//!   binds `127.0.0.1:<port>` there, then hands the listening socket to the server over a socket
//!   pair (`SCM_RIGHTS`). The server accepts on it and relays each connection to the key proxy:
//!   the agent's only way out is that listener, which lives in the server, out of the agent's
//!   reach (it cannot close it, rebind the port, or see anything else on the host's network).
//! - **Files the agent may write, for an agent that is not root.** When the server runs as root,
//!   the agent runs as an unprivileged uid, and the folders it may write (its working directory,
//!   its configuration folder) are mounted *idmapped* in a mount namespace of the child: their
//!   owner on disk (root) is that uid through the mount, and what the agent writes is root's on
//!   disk. Nothing is chowned.
//! - **Limits**: the child joins cgroups made for it (root) and sets rlimits (counted per user
//!   namespace, so per sandbox).
//!
//! Everything is prepared in the parent ([`Prepared::new`]): the child only makes
//! async-signal-safe system calls on memory that was allocated before `clone`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What the child does before it execs.
#[derive(Debug, Default, Clone)]
pub struct ChildSetup {
  /// Unshare a user namespace that maps the child's own uid and gid (an unprivileged server).
  pub new_user_ns: bool,
  /// Unshare a network namespace and bring its loopback up.
  pub new_net_ns: bool,
  /// Bind `127.0.0.1:<port>` for each port in the new network namespace and return the
  /// listeners, in this order.
  pub listen_ports: Vec<u16>,
  /// Mount these folders idmapped through `userns` (a user namespace fd), in a new mount
  /// namespace of the child (root only).
  pub idmap: Option<(RawFd, Vec<PathBuf>)>,
  /// `cgroup.procs` files the child writes `0` to (joins those cgroups).
  pub cgroup_procs: Vec<PathBuf>,
  /// `(resource, limit)` pairs for `setrlimit`, set after the namespaces are made.
  pub rlimits: Vec<(u32, u64)>,
  /// Descriptors the exec'd program gets: `(open fd here, number there)`.
  pub pass_fds: Vec<(RawFd, RawFd)>,
  /// `oom_score_adj` 1000: under memory pressure the kernel kills this child's processes first.
  pub oom_first: bool,
}

/// Which sandbox step failed in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStep {
  MountNamespace,
  Idmap,
  Cgroup,
  Namespaces,
  IdMaps,
  Loopback,
  Listen,
  Rlimit,
  PassFd,
}

impl SandboxStep {
  const ALL: [SandboxStep; 9] = [
    SandboxStep::MountNamespace,
    SandboxStep::Idmap,
    SandboxStep::Cgroup,
    SandboxStep::Namespaces,
    SandboxStep::IdMaps,
    SandboxStep::Loopback,
    SandboxStep::Listen,
    SandboxStep::Rlimit,
    SandboxStep::PassFd,
  ];

  pub(super) fn code(self) -> i32 {
    10 + SandboxStep::ALL.iter().position(|s| *s == self).unwrap_or(0) as i32
  }

  pub(super) fn from_code(n: i32) -> SandboxStep {
    SandboxStep::ALL.get((n - 10).max(0) as usize).copied().unwrap_or(SandboxStep::Namespaces)
  }

  /// What the step does, for error messages.
  pub fn describe(self) -> &'static str {
    match self {
      SandboxStep::MountNamespace => "create a mount namespace",
      SandboxStep::Idmap => "mount the agent's folders idmapped (does this filesystem support idmapped mounts?)",
      SandboxStep::Cgroup => "join the sandbox's cgroup",
      SandboxStep::Namespaces => "create the user and network namespaces (are unprivileged user namespaces allowed?)",
      SandboxStep::IdMaps => "write the user namespace's id maps",
      SandboxStep::Loopback => "bring up the sandbox's loopback interface",
      SandboxStep::Listen => "open the sandbox's listener for the key proxy",
      SandboxStep::Rlimit => "set the sandbox's resource limits",
      SandboxStep::PassFd => "pass a descriptor to bubblewrap",
    }
  }
}

const SYS_OPEN_TREE: libc::c_long = 428;
const SYS_MOVE_MOUNT: libc::c_long = 429;
const SYS_MOUNT_SETATTR: libc::c_long = 442;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
  attr_set: u64,
  attr_clr: u64,
  propagation: u64,
  userns_fd: u64,
}

/// [`ChildSetup`] as the child reads it: C strings, ready-made buffers, a socket pair.
pub struct Prepared {
  pub(super) pass_fds: Vec<(RawFd, RawFd)>,
  pub(super) listen: usize,
  new_user_ns: bool,
  new_net_ns: bool,
  ports: Vec<u16>,
  idmap_userns: RawFd,
  idmap_paths: Vec<CString>,
  cgroups: Vec<CString>,
  rlimits: Vec<(u32, u64)>,
  oom_first: bool,
  uid_map: CString,
  gid_map: CString,
  /// The parent's and the child's ends of the socket pair the listener travels on.
  parent_end: Option<OwnedFd>,
  child_end: Option<OwnedFd>,
  /// The message the child sends: its iovec, control buffer and header, on the heap.
  msg: Box<libc::msghdr>,
  _iov: Box<libc::iovec>,
  _byte: Box<u8>,
  control: Box<[u64; 4]>,
  attr: Box<MountAttr>,
}

// SAFETY: the raw pointers in `msg` point into boxes owned by the same `Prepared`, which lives on
// one thread (the spawning one) and is read by the child only while that thread is suspended.
unsafe impl Send for Prepared {}

fn cstr(p: &std::path::Path) -> io::Result<CString> {
  CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

impl Prepared {
  pub fn new(c: &ChildSetup) -> io::Result<Prepared> {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (parent_end, child_end) = if !c.listen_ports.is_empty() {
      let mut fds = [0 as RawFd; 2];
      // SAFETY: `fds` is a writable array of the two `c_int`s `socketpair` fills in.
      if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
      }
      // SAFETY: `socketpair` succeeded: two new descriptors that nothing else owns.
      unsafe { (Some(OwnedFd::from_raw_fd(fds[0])), Some(OwnedFd::from_raw_fd(fds[1]))) }
    } else {
      (None, None)
    };
    let mut byte = Box::new(0u8);
    let mut iov = Box::new(libc::iovec { iov_base: (&mut *byte as *mut u8).cast(), iov_len: 1 });
    let mut control = Box::new([0u64; 4]);
    // SAFETY: an all-zero `msghdr` is a valid value (null pointers, zero lengths).
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_iov = &mut *iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; CMSG_FIRSTHDR reads the header fields just
    // set, and the control buffer (32 bytes, 8-aligned) holds one header and one `c_int`.
    unsafe {
      msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
      let h = libc::CMSG_FIRSTHDR(&*msg);
      (*h).cmsg_level = libc::SOL_SOCKET;
      (*h).cmsg_type = libc::SCM_RIGHTS;
      (*h).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
    }
    let (idmap_userns, idmap_paths) = match &c.idmap {
      Some((fd, paths)) => (*fd, paths.iter().map(|p| cstr(p)).collect::<io::Result<Vec<_>>>()?),
      None => (-1, vec![]),
    };
    let attr = Box::new(MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: idmap_userns.max(0) as u64 });
    Ok(Prepared {
      pass_fds: c.pass_fds.clone(),
      listen: c.listen_ports.len(),
      new_user_ns: c.new_user_ns,
      new_net_ns: c.new_net_ns,
      ports: c.listen_ports.clone(),
      idmap_userns,
      idmap_paths,
      cgroups: c.cgroup_procs.iter().map(|p| cstr(p)).collect::<io::Result<Vec<_>>>()?,
      rlimits: c.rlimits.clone(),
      oom_first: c.oom_first,
      uid_map: CString::new(format!("{uid} {uid} 1\n")).expect("no NUL"),
      gid_map: CString::new(format!("{gid} {gid} 1\n")).expect("no NUL"),
      parent_end,
      child_end,
      msg,
      _iov: iov,
      _byte: byte,
      control,
      attr,
    })
  }

  /// The listeners the child sent (after it exec'd or failed), one message each.
  pub(super) fn take_listeners(&self) -> io::Result<Vec<OwnedFd>> {
    (0..self.listen).map(|_| self.take_listener()).collect()
  }

  fn take_listener(&self) -> io::Result<OwnedFd> {
    let sock = self.parent_end.as_ref().ok_or_else(|| io::Error::other("no listener was asked for"))?;
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero `msghdr` is a valid value; it is then pointed at the locals above, which
    // outlive the `recvmsg` call; CMSG_FIRSTHDR/CMSG_DATA read within `control` (32 bytes, room for
    // one header and one `c_int`, as checked through `cmsg_len`).
    unsafe {
      let mut msg: libc::msghdr = std::mem::zeroed();
      msg.msg_iov = &mut iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.as_mut_ptr().cast();
      msg.msg_controllen = std::mem::size_of_val(&control) as _;
      let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC);
      if n < 0 {
        return Err(io::Error::last_os_error());
      }
      let h = libc::CMSG_FIRSTHDR(&msg);
      if h.is_null() || (*h).cmsg_type != libc::SCM_RIGHTS || ((*h).cmsg_len as usize) < libc::CMSG_LEN(4) as usize {
        return Err(io::Error::other("the sandbox's listener did not arrive"));
      }
      let fd = std::ptr::read_unaligned(libc::CMSG_DATA(h) as *const RawFd);
      Ok(OwnedFd::from_raw_fd(fd))
    }
  }

  /// Runs in the cloned child, before `execve`: async-signal-safe system calls only, on memory
  /// prepared by [`Prepared::new`]. Returns the failed step's code.
  ///
  /// # Safety
  ///
  /// Only in the child made by `clone(CLONE_VM | CLONE_VFORK)` (see `linux::spawn`), while the
  /// parent thread that owns `self` is suspended.
  pub(super) unsafe fn apply(&self) -> Result<(), i32> {
    // SAFETY: see the function's contract; each call below is a system call on locals, on
    // NUL-terminated strings and buffers owned by `self`, or on descriptors open in this child.
    unsafe {
      if !self.idmap_paths.is_empty() {
        if libc::unshare(libc::CLONE_NEWNS) != 0
          || libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_SLAVE, std::ptr::null()) != 0
        {
          return Err(SandboxStep::MountNamespace.code());
        }
        for p in &self.idmap_paths {
          let fd = libc::syscall(SYS_OPEN_TREE, libc::AT_FDCWD, p.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint);
          if fd < 0 {
            return Err(SandboxStep::Idmap.code());
          }
          let fd = fd as libc::c_int;
          let ok = libc::syscall(
            SYS_MOUNT_SETATTR,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &*self.attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
          ) == 0
            && libc::syscall(SYS_MOVE_MOUNT, fd, c"".as_ptr(), libc::AT_FDCWD, p.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) == 0;
          libc::close(fd);
          if !ok {
            return Err(SandboxStep::Idmap.code());
          }
        }
      }
      for cg in &self.cgroups {
        if !write_file(cg.as_ptr(), b"0") {
          return Err(SandboxStep::Cgroup.code());
        }
      }
      let flags = if self.new_user_ns { libc::CLONE_NEWUSER } else { 0 } | if self.new_net_ns { libc::CLONE_NEWNET } else { 0 };
      if flags != 0 && libc::unshare(flags) != 0 {
        return Err(SandboxStep::Namespaces.code());
      }
      if self.new_user_ns
        && !(write_file(c"/proc/self/setgroups".as_ptr(), b"deny")
          && write_file(c"/proc/self/uid_map".as_ptr(), self.uid_map.as_bytes())
          && write_file(c"/proc/self/gid_map".as_ptr(), self.gid_map.as_bytes()))
      {
        return Err(SandboxStep::IdMaps.code());
      }
      if self.new_net_ns {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        // struct ifreq: the name, then the flags (a short) at offset 16.
        let mut ifr = [0u8; 40];
        ifr[..2].copy_from_slice(b"lo");
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        ifr[16..18].copy_from_slice(&up.to_ne_bytes());
        let ok = s >= 0 && libc::ioctl(s, SIOCSIFFLAGS as _, ifr.as_mut_ptr()) == 0;
        if s >= 0 {
          libc::close(s);
        }
        if !ok {
          return Err(SandboxStep::Loopback.code());
        }
      }
      for &port in &self.ports {
        let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let ok = l >= 0
          && libc::bind(l, (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) == 0
          && libc::listen(l, 128) == 0;
        if ok {
          let h = libc::CMSG_FIRSTHDR(&*self.msg);
          std::ptr::write_unaligned(libc::CMSG_DATA(h) as *mut RawFd, l);
        }
        let sent = ok && libc::sendmsg(self.child_end.as_ref().map_or(-1, |f| f.as_raw_fd()), &*self.msg, 0) == 1;
        if l >= 0 {
          libc::close(l);
        }
        if !sent {
          return Err(SandboxStep::Listen.code());
        }
      }
      // The OOM killer's first choice, whatever it runs (raising it needs no privilege).
      if self.oom_first && !write_file(c"/proc/self/oom_score_adj".as_ptr(), b"1000") {
        return Err(SandboxStep::Rlimit.code());
      }
      for &(resource, limit) in &self.rlimits {
        let r = libc::rlimit { rlim_cur: limit, rlim_max: limit };
        if libc::setrlimit(resource as _, &r) != 0 {
          return Err(SandboxStep::Rlimit.code());
        }
      }
      let _ = &self.control;
      let _ = self.idmap_userns;
      Ok(())
    }
  }
}

/// Writes `data` to the file at `path` (async-signal-safe: open, write, close).
///
/// # Safety
///
/// `path` is a NUL-terminated string.
unsafe fn write_file(path: *const libc::c_char, data: &[u8]) -> bool {
  // SAFETY: `path` is NUL-terminated (the caller's contract), `data` a live slice.
  unsafe {
    let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
      return false;
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    libc::close(fd);
    n == data.len() as isize
  }
}
