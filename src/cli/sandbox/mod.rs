//! The agent's sandbox: the CLI started inside bubblewrap (`bwrap`, Debian's `bubblewrap`).
//!
//! What the agent (the CLI and every tool process it starts) gets:
//! - **never root**: when the server is unprivileged, a user namespace of its own (the server's
//!   uid, no capabilities); when the server is root, an unprivileged uid of its own (from a range,
//!   one per sandbox), taken by `setpriv` inside the sandbox after bubblewrap has mounted
//!   everything; its working directory and configuration folder are mounted idmapped so that it
//!   can write them while what it writes stays root's on disk (`process::confine`). The
//!   capability bounding set is empty and `no_new_privs` set;
//! - `/proc/sys` read-only (sysctls such as `kernel.core_pattern` cannot be written);
//! - a seccomp filter (`seccomp.rs`) refusing tracing, keyrings, eBPF, mounts, namespaces,
//!   `perf_event_open`, modules, `kexec`, `io_uring` and more;
//! - **a network of one address**: its own network namespace whose only listener is
//!   `127.0.0.1:<the key proxy's port>`, held by the server and relayed to the key proxy
//!   (`relay.rs`); not the host's loopback services, not the LAN, not the internet;
//! - **a CLI it cannot tamper with**: the CLI runs from an execute-only copy of its binary
//!   (`binary.rs`), which makes it non-dumpable: the agent cannot open its `/proc/<pid>/fd/*`
//!   (the manager's output pipe), `mem` or `environ`, nor trace it;
//! - a new pid namespace that dies with its parent (`--unshare-pid --die-with-parent`): no tool
//!   process outlives the task, whatever process group or session it makes;
//! - bounded resources: `/tmp` and `HOME` are tmpfs of a fixed size, and a process limit
//!   (`RLIMIT_NPROC`, counted per sandbox);
//! - a private `/tmp`, `/dev` and `HOME`, a new session (no terminal injection), its own
//!   IPC/UTS/cgroup namespaces;
//! - a filesystem of only what the task needs: `/usr` (and the merged-usr links), a few `/etc`
//!   files (certificates, resolver, users), the CLI binary, read-only; the session's working
//!   directory and the tenant's configuration folder read-write. Not the database, not other
//!   tenants' folders, not the server's files.
//!
//! The CLI's per-process files (`<config>/sessions/<pid>.json`, its socket under `/tmp`) land on
//! tmpfs mounts that vanish with the sandbox, so a killed CLI leaves nothing behind and two
//! sandboxed CLIs (both pid 2 in their namespaces) never clash.

pub mod binary;
pub mod egress;
pub mod relay;
#[cfg(target_os = "linux")]
pub mod seccomp;
#[cfg(target_os = "linux")]
mod sweep;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::run::RunSpec;
use crate::error::{Error, ErrorCode, Result};

/// coreutils `env`, which enters the working directory as the agent (`env -C`).
const ENV: &str = "/usr/bin/env";

/// Where a sandboxed agent's `HOME` is (an empty tmpfs).
const SANDBOX_HOME: &str = "/home/agent";

/// What one sandbox may use. The defaults are what a user would pick for an agent's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
  /// Size of the `/tmp` tmpfs, bytes.
  pub tmp_bytes: u64,
  /// Size of the `HOME` tmpfs, bytes.
  pub home_bytes: u64,
  /// Processes and threads (`RLIMIT_NPROC`, counted per sandbox).
  pub processes: u64,
  /// Address space of each process, bytes (`RLIMIT_AS`): a bound per process, not per sandbox.
  pub memory_bytes: u64,
}

impl Default for SandboxLimits {
  fn default() -> Self {
    SandboxLimits { tmp_bytes: 512 << 20, home_bytes: 512 << 20, processes: 512, memory_bytes: 4 << 30 }
  }
}

/// When the server is root: the unprivileged ids agents run as, and the user namespaces their
/// folders are idmapped through (one per id, made on first use).
struct AsRoot {
  setpriv: PathBuf,
  /// This process's block of ids: `ROOT_ID_BASE + block * ROOT_ID_COUNT`, picked at random so
  /// that two servers on one machine (almost never) share ids, and with them a process limit.
  first: u32,
  /// Ids of sandboxes alive now (an id is reused only once its sandbox has ended, so a slow
  /// sandbox's processes never count against a new one's `RLIMIT_NPROC`).
  in_use: Arc<Mutex<std::collections::BTreeSet<u32>>>,
  idmaps: Mutex<std::collections::HashMap<u32, Arc<std::os::fd::OwnedFd>>>,
}

/// Agents of a root server run as uids (and gids) from `ROOT_ID_BASE`: each process takes a
/// random block of `ROOT_ID_COUNT` ids among `ROOT_ID_BLOCKS`, and each sandbox one id of it.
pub const ROOT_ID_BASE: u32 = 0x6000_0000;
const ROOT_ID_COUNT: u32 = 4096;
const ROOT_ID_BLOCKS: u32 = 4096;

/// A sandbox's uid, given back when the last holder (the spawned process) drops it.
pub struct IdLease {
  id: u32,
  in_use: Arc<Mutex<std::collections::BTreeSet<u32>>>,
}

impl Drop for IdLease {
  fn drop(&mut self) {
    self.in_use.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
  }
}

impl std::fmt::Debug for IdLease {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "IdLease({})", self.id)
  }
}

impl AsRoot {
  fn lease(&self) -> Result<IdLease> {
    let mut used = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
    let id = (self.first..self.first + ROOT_ID_COUNT)
      .find(|i| !used.contains(i))
      .ok_or_else(|| Error::new(ErrorCode::SandboxUnavailable, format!("more than {ROOT_ID_COUNT} sandboxes at once in this process")))?;
    used.insert(id);
    Ok(IdLease { id, in_use: self.in_use.clone() })
  }
}

/// A working bubblewrap and what the sandbox shows besides the task's own folders.
pub struct Sandbox {
  bwrap: PathBuf,
  read_only: Vec<PathBuf>,
  read_write: Vec<PathBuf>,
  limits: SandboxLimits,
  /// Where the execute-only copy of the CLI is kept (one per user of this machine, see
  /// [`binary::cache_dir`]).
  bin_dir: PathBuf,
  /// The addon's state folder (the probe runs in it).
  state_dir: PathBuf,
  /// The seccomp programs (`--add-seccomp-fd`): the main filter and the `clone3` one.
  seccomp: Arc<Vec<Vec<u8>>>,
  as_root: Option<AsRoot>,
  /// `sandboxNetwork.allowDomains`; empty: no way out but the key proxy.
  egress: Arc<Vec<egress::Allowed>>,
}

impl std::fmt::Debug for Sandbox {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Sandbox").field("bwrap", &self.bwrap).field("limits", &self.limits).field("as_root", &self.as_root.is_some()).finish()
  }
}

/// What the spawner does for a sandboxed run besides its argv: the child's namespace steps, the
/// seccomp programs it passes to bubblewrap, and where the sandbox's listener is relayed.
#[derive(Debug, Clone)]
pub struct Confinement {
  #[cfg(target_os = "linux")]
  pub setup: super::process::confine::ChildSetup,
  pub seccomp: Arc<Vec<Vec<u8>>>,
  /// The key proxy's address on the host: the sandbox's listener is relayed there.
  pub relay_to: Option<SocketAddr>,
  /// The CLI binary the sandbox runs (the run's `program` is bubblewrap).
  pub cli_program: PathBuf,
  /// Where the sandbox's second listener (`HTTPS_PROXY`) may open tunnels; `None`: no listener.
  pub egress: Option<Arc<Vec<egress::Allowed>>>,
  /// The sandbox's uid when the server is root: kept by the spawned process until it ends.
  pub id_lease: Option<Arc<IdLease>>,
  /// Keeps the idmap user namespace open while the run may still be spawned.
  #[cfg(target_os = "linux")]
  pub idmap: Option<Arc<std::os::fd::OwnedFd>>,
}

/// `/etc` entries the CLI needs (TLS roots, name resolution, users).
const ETC: &[&str] = &[
  "/etc/ssl",
  "/etc/ca-certificates",
  "/etc/pki",
  "/etc/resolv.conf",
  "/etc/hosts",
  "/etc/nsswitch.conf",
  "/etc/passwd",
  "/etc/group",
  "/etc/localtime",
  "/etc/alternatives",
];

/// Top-level folders of a merged-usr system: links into `/usr` where the host has links, binds
/// where it has real folders.
const ROOT_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

fn find_bwrap() -> Option<PathBuf> {
  let path = std::env::var_os("PATH").unwrap_or_default();
  std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).map(|d| d.join("bwrap")).find(|p| p.is_file())
}

fn find_setpriv() -> Option<PathBuf> {
  ["/usr/bin/setpriv", "/bin/setpriv"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Whether this process runs as root (euid 0).
fn is_root() -> bool {
  // SAFETY: geteuid has no preconditions and cannot fail.
  unsafe { libc::geteuid() == 0 }
}

/// The argv that mounts the base system read-only. Folders bubblewrap makes on its own are 0700
/// (to an agent that is not bubblewrap's uid, closed): `/etc` and `/home` are made 0755 first.
fn base_args() -> Vec<String> {
  let mut a: Vec<String> = ["--perms", "0755", "--dir", "/etc", "--perms", "0755", "--dir", "/home", "--ro-bind", "/usr", "/usr"]
    .iter()
    .map(|s| s.to_string())
    .collect();
  for d in ROOT_DIRS {
    let p = Path::new(d);
    match std::fs::read_link(p) {
      Ok(target) => a.extend(["--symlink".into(), target.to_string_lossy().into_owned(), d.to_string()]),
      Err(_) if p.is_dir() => a.extend(["--ro-bind".into(), d.to_string(), d.to_string()]),
      Err(_) => {}
    }
  }
  for e in ETC {
    a.extend(["--ro-bind-try".into(), e.to_string(), e.to_string()]);
  }
  a
}

/// A user namespace whose only mapping is `0 -> uid` (and `0 -> gid`): a mount idmapped through
/// it shows root's files as the agent's and stores the agent's writes as root's. Made by a
/// short-lived child that unshares a user namespace; its maps are written from here (root).
#[cfg(target_os = "linux")]
fn idmap_userns(uid: u32, gid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
  use std::io::Write;
  use std::os::unix::process::CommandExt;
  let mut cmd = std::process::Command::new("/bin/sh");
  cmd.args(["-c", "read _"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
  // SAFETY: the hook runs in the forked child before exec and makes one async-signal-safe
  // system call (`unshare`), reading errno on failure without allocating.
  unsafe {
    cmd.pre_exec(|| if libc::unshare(libc::CLONE_NEWUSER) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
  }
  let mut child = cmd.spawn()?;
  let pid = child.id();
  let made = (|| {
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))?;
    std::fs::File::open(format!("/proc/{pid}/ns/user")).map(std::os::fd::OwnedFd::from)
  })();
  if let Some(mut stdin) = child.stdin.take() {
    let _ = stdin.write_all(b"\n");
  }
  let _ = child.kill();
  let _ = child.wait();
  made
}

impl Sandbox {
  /// The sandbox for `mode`: `auto` is bubblewrap where it works, else none; `bubblewrap` fails
  /// with `SANDBOX_UNAVAILABLE` where it does not. `state_dir` is the addon's own folder (the
  /// execute-only copy of the CLI goes in its `bin/`).
  pub fn detect(
    mode: crate::sessions::SandboxMode,
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    limits: SandboxLimits,
    state_dir: &Path,
    egress: Vec<egress::Allowed>,
  ) -> Result<Option<Sandbox>> {
    use crate::sessions::SandboxMode;
    if mode == SandboxMode::None {
      return Ok(None);
    }
    let checked = Sandbox::build(read_only, read_write, limits, state_dir, egress).and_then(|s| s.probe().map(|_| s));
    match (checked, mode) {
      (Ok(s), _) => {
        // Once per process: what a killed server left waiting (`sweep.rs`).
        #[cfg(target_os = "linux")]
        {
          static SWEPT: std::sync::Once = std::sync::Once::new();
          SWEPT.call_once(|| {
            let n = sweep::sweep();
            if n > 0 {
              eprintln!("claude-session-manager: ended {n} bubblewrap process(es) that a killed server had left waiting");
            }
          });
        }
        Ok(Some(s))
      }
      (Err(_), SandboxMode::Auto) => Ok(None),
      (Err(why), _) => {
        Err(Error::new(ErrorCode::SandboxUnavailable, format!("sandbox \"bubblewrap\" was asked for but cannot be used: {why}")))
      }
    }
  }

  #[cfg(not(target_os = "linux"))]
  fn build(_: Vec<PathBuf>, _: Vec<PathBuf>, _: SandboxLimits, _: &Path, _: Vec<egress::Allowed>) -> std::result::Result<Sandbox, String> {
    Err("bubblewrap needs Linux".into())
  }

  #[cfg(target_os = "linux")]
  fn build(
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    limits: SandboxLimits,
    state_dir: &Path,
    egress: Vec<egress::Allowed>,
  ) -> std::result::Result<Sandbox, String> {
    let bwrap = find_bwrap().ok_or("bubblewrap (`bwrap`) is not installed (Debian/Ubuntu: apt-get install bubblewrap); it needs Linux")?;
    let seccomp = Arc::new(vec![seccomp::program()?, seccomp::clone3_program()?]);
    let as_root = if is_root() {
      let setpriv = find_setpriv().ok_or("the server runs as root and `setpriv` (util-linux) is missing: the agent could not drop root")?;
      let mut r = [0u8; 4];
      getrandom::fill(&mut r).map_err(|e| format!("no randomness for the sandbox ids: {e}"))?;
      let first = ROOT_ID_BASE + (u32::from_le_bytes(r) % ROOT_ID_BLOCKS) * ROOT_ID_COUNT;
      Some(AsRoot { setpriv, first, in_use: Default::default(), idmaps: Mutex::new(Default::default()) })
    } else {
      None
    };
    Ok(Sandbox {
      bwrap,
      read_only,
      read_write,
      limits,
      bin_dir: binary::cache_dir(state_dir),
      state_dir: state_dir.to_path_buf(),
      seccomp,
      as_root,
      egress: Arc::new(egress),
    })
  }

  /// Whether a sandbox can be made here (this kernel and user may create the namespaces, the
  /// filesystem takes idmapped mounts when root): one trial run of `true`, once per process.
  #[cfg(target_os = "linux")]
  fn probe(&self) -> std::result::Result<(), String> {
    static RESULT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    RESULT
      .get_or_init(|| {
        let dir = self.state_dir.join(format!("sandbox-probe-{}", uuid::Uuid::new_v4().simple()));
        let config = dir.join("config");
        std::fs::create_dir_all(&config).map_err(|e| format!("cannot make a probe folder in {}: {e}", dir.display()))?;
        let result = self.probe_in(&dir, &config);
        let _ = std::fs::remove_dir_all(&dir);
        result
      })
      .clone()
  }

  #[cfg(target_os = "linux")]
  fn probe_in(&self, dir: &Path, config: &Path) -> std::result::Result<(), String> {
    let mut spec = RunSpec::probe(PathBuf::from("/usr/bin/true"), dir);
    // The probe runs /usr/bin/true as it is, not a copy: it proves the namespaces, not the CLI.
    self.wrap_with(&mut spec, config, Some(SocketAddr::from(([127, 0, 0, 1], 9))), None).map_err(|e| e.message)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
      let (mut child, stdin, _stdout, mut stderr) = super::run::spawn(&spec).map_err(|e| e.message)?;
      drop(stdin);
      let mut err = String::new();
      let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err).await;
      match child.wait().await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{} failed ({status}): {}", self.bwrap.display(), err.trim())),
        Err(e) => Err(e.to_string()),
      }
    })
  }

  #[cfg(not(target_os = "linux"))]
  fn probe(&self) -> std::result::Result<(), String> {
    Err("bubblewrap needs Linux".into())
  }

  /// The limits each sandbox gets.
  pub fn limits(&self) -> SandboxLimits {
    self.limits
  }

  /// Whether agents run as an unprivileged uid of their own (the server is root) rather than
  /// in a user namespace with the server's uid.
  pub fn drops_root(&self) -> bool {
    self.as_root.is_some()
  }

  /// Rewrites `spec` so that the CLI runs inside the sandbox, with `cwd` and `config_dir`
  /// writable and, with `proxy` (the key proxy's host address), a network of that one address.
  /// The CLI's own argv is unchanged, after `--`.
  pub fn wrap(&self, spec: &mut RunSpec, config_dir: &Path, proxy: Option<SocketAddr>) -> Result<()> {
    let copy = binary::execute_only_copy(&spec.program, &self.bin_dir)?;
    self.wrap_with(spec, config_dir, proxy, copy)
  }

  fn wrap_with(&self, spec: &mut RunSpec, config_dir: &Path, proxy: Option<SocketAddr>, copy: Option<PathBuf>) -> Result<()> {
    let sessions = config_dir.join("sessions");
    std::fs::create_dir_all(&sessions)
      .map_err(|e| Error::store(format!("cannot create the CLI configuration folder {}: {e}", config_dir.display())))?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> =
      ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lease = self.as_root.as_ref().map(AsRoot::lease).transpose()?;
    let root_id = lease.as_ref().map(|l| l.id);
    match root_id {
      // bwrap (root) mounts; setpriv, inside, drops to the agent's uid and clears every set.
      Some(_) => {
        a.extend(["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"].map(String::from))
      }
      None => a.extend(["--unshare-user", "--disable-userns", "--cap-drop", "ALL"].map(String::from)),
    }
    a.extend(["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev"].map(String::from));
    a.extend(base_args());
    // tmpfs mounts belong to bubblewrap's uid (root when the server is): writable by anyone in
    // the sandbox, which holds only this agent's processes.
    a.extend(["--perms", "1777", "--size"].map(String::from));
    a.extend([self.limits.tmp_bytes.to_string(), "--tmpfs".into(), "/tmp".into()]);
    a.extend(["--perms", "1777", "--size"].map(String::from));
    a.extend([self.limits.home_bytes.to_string(), "--tmpfs".into(), SANDBOX_HOME.into()]);
    // Files the CLI's environment names (custom CA bundles).
    for (k, v) in &spec.env {
      if matches!(k.as_str(), "NODE_EXTRA_CA_CERTS" | "SSL_CERT_FILE" | "SSL_CERT_DIR") && Path::new(v).is_absolute() {
        a.extend(["--ro-bind-try".into(), v.clone(), v.clone()]);
      }
    }
    for p in &self.read_only {
      a.extend(["--ro-bind".into(), s(p), s(p)]);
    }
    // The folders leading to what is bound below, traversable (bubblewrap makes them 0700).
    let mut leading: Vec<&Path> = vec![];
    let targets = [spec.program.as_path(), spec.cwd.as_path(), config_dir];
    for t in targets.into_iter().chain(self.read_only.iter().map(PathBuf::as_path)).chain(self.read_write.iter().map(PathBuf::as_path)) {
      leading.extend(
        t.ancestors()
          .skip(1)
          .filter(|d| d.parent().is_some() && !d.starts_with("/usr") && *d != Path::new("/tmp") && *d != Path::new(SANDBOX_HOME)),
      );
    }
    leading.sort_by_key(|d| d.components().count());
    leading.dedup();
    for d in leading {
      a.extend(["--perms".into(), "0755".into(), "--dir".into(), s(d)]);
    }
    a.extend(["--ro-bind".into(), s(copy.as_deref().unwrap_or(&spec.program)), s(&spec.program)]);
    for p in &self.read_write {
      a.extend(["--bind".into(), s(p), s(p)]);
    }
    a.extend(["--bind".into(), s(config_dir), s(config_dir)]);
    a.extend(["--perms".into(), "1777".into(), "--size".into(), (1u64 << 20).to_string(), "--tmpfs".into(), s(&sessions)]);
    a.extend(["--bind".into(), s(&spec.cwd), s(&spec.cwd)]);
    a.extend(["--add-seccomp-fd".into(), "3".into(), "--add-seccomp-fd".into(), "4".into()]);
    if let (Some(root), Some(id)) = (&self.as_root, root_id) {
      // bubblewrap (root, its capabilities dropped by then) could not enter a working directory
      // of mode 0700, which the idmapped mount shows as the agent's: the agent's uid enters it,
      // with `env -C` after setpriv (no shell).
      let program = s(&spec.program);
      if program.contains('=') {
        return Err(Error::new(ErrorCode::SandboxUnavailable, format!("the CLI's path {program} has a '=' in it")));
      }
      a.extend(["--chdir".into(), "/".into(), "--".into(), s(&root.setpriv)]);
      a.extend([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into()]);
      a.extend(["--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", ENV, "-C"].map(String::from));
      a.extend([s(&spec.cwd), "--".into()]);
    } else {
      a.extend(["--chdir".into(), s(&spec.cwd), "--".into()]);
    }
    a.push(s(&spec.program));
    let cli_args = spec.args.len();
    a.append(&mut spec.args);
    spec.args = a;
    spec.program = self.bwrap.clone();
    // Paths of the host that do not exist inside.
    spec.env.retain(|(k, _)| !matches!(k.as_str(), "HOME" | "TMPDIR" | "TMP" | "TEMP" | "XDG_RUNTIME_DIR"));
    spec.env.push(("HOME".into(), SANDBOX_HOME.into()));
    spec.env.push(("TMPDIR".into(), "/tmp".into()));
    // The web, where allowed: through the sandbox's CONNECT listener only (the key proxy is on
    // loopback and plain http, so no proxy applies to it).
    let egress = proxy.is_some() && !self.egress.is_empty();
    spec.env.retain(|(k, _)| !matches!(k.to_ascii_lowercase().as_str(), "http_proxy" | "https_proxy" | "all_proxy" | "no_proxy"));
    if egress {
      let url = format!("http://127.0.0.1:{}", egress::PORT);
      spec.env.extend([("HTTPS_PROXY".into(), url.clone()), ("https_proxy".into(), url)]);
      spec.env.extend([("NO_PROXY".into(), "127.0.0.1,localhost".into()), ("no_proxy".into(), "127.0.0.1,localhost".into())]);
    }
    let cli_program = PathBuf::from(&spec.args[spec.args.len() - cli_args - 1]);
    let mut confinement = self.confinement(spec, config_dir, proxy, root_id, cli_program)?;
    confinement.id_lease = lease.map(Arc::new);
    spec.confine = Some(Arc::new(confinement));
    Ok(())
  }

  #[cfg(target_os = "linux")]
  fn confinement(
    &self,
    spec: &RunSpec,
    config_dir: &Path,
    proxy: Option<SocketAddr>,
    root_id: Option<u32>,
    cli_program: PathBuf,
  ) -> Result<Confinement> {
    use super::process::confine::ChildSetup;
    let mut setup = ChildSetup {
      new_user_ns: root_id.is_none(),
      new_net_ns: proxy.is_some(),
      listen_ports: match proxy {
        Some(p) if !self.egress.is_empty() => vec![p.port(), egress::PORT],
        Some(p) => vec![p.port()],
        None => vec![],
      },
      rlimits: vec![(libc::RLIMIT_NPROC, self.limits.processes), (libc::RLIMIT_AS, self.limits.memory_bytes)],
      oom_first: true,
      ..Default::default()
    };
    let mut idmap = None;
    if let (Some(root), Some(id)) = (&self.as_root, root_id) {
      let fd = {
        let mut maps = root.idmaps.lock().unwrap_or_else(|p| p.into_inner());
        match maps.get(&id) {
          Some(fd) => fd.clone(),
          None => {
            let fd = Arc::new(idmap_userns(id, id).map_err(|e| {
              Error::new(ErrorCode::SandboxUnavailable, format!("cannot make the user namespace of the sandbox's idmapped mounts: {e}"))
            })?);
            maps.insert(id, fd.clone());
            fd
          }
        }
      };
      let mut paths = vec![spec.cwd.clone(), config_dir.to_path_buf()];
      paths.extend(self.read_write.iter().cloned());
      // A folder inside another is idmapped with it (an idmapped mount cannot be idmapped again).
      paths.sort_by_key(|p| p.components().count());
      let mut outer: Vec<PathBuf> = vec![];
      for p in paths {
        if !outer.iter().any(|o| p.starts_with(o)) {
          outer.push(p);
        }
      }
      let paths = outer;
      setup.idmap = Some((std::os::fd::AsRawFd::as_raw_fd(&*fd), paths));
      idmap = Some(fd);
    }
    let egress = (proxy.is_some() && !self.egress.is_empty()).then(|| self.egress.clone());
    Ok(Confinement { setup, seccomp: self.seccomp.clone(), relay_to: proxy, idmap, cli_program, id_lease: None, egress })
  }

  #[cfg(not(target_os = "linux"))]
  fn confinement(&self, _: &RunSpec, _: &Path, proxy: Option<SocketAddr>, _: Option<u32>, cli_program: PathBuf) -> Result<Confinement> {
    Ok(Confinement { seccomp: self.seccomp.clone(), relay_to: proxy, cli_program, id_lease: None, egress: None })
  }
}
