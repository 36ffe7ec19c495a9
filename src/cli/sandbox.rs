//! The agent's sandbox: the CLI started inside bubblewrap (`bwrap`, Debian's `bubblewrap`).
//!
//! What the agent (the CLI and every tool process it starts) gets:
//! - a new pid namespace that dies with its parent (`--unshare-pid --die-with-parent`): no tool
//!   process outlives the task, whatever process group or session it makes, and `/proc` shows
//!   only the sandbox's own processes (not the Node server's environment);
//! - no capabilities (`--cap-drop ALL`: bwrap started by root keeps every capability otherwise,
//!   and a tool could remount a read-only bind read-write);
//! - a private `/tmp` and `/dev`, a new session (no terminal injection), its own IPC/UTS/cgroup
//!   namespaces;
//! - a filesystem of only what the task needs: `/usr` (and the merged-usr links), a few `/etc`
//!   files (certificates, resolver, users), the CLI binary, read-only; the session's working
//!   directory and the tenant's configuration folder read-write; a private, empty `HOME`. Not the
//!   database, not other tenants' folders, not the server's files;
//! - the network, shared (the CLI must reach the API; see the key proxy).
//!
//! The CLI's per-process files (`<config>/sessions/<pid>.json`, its socket under `/tmp`) land on
//! tmpfs mounts that vanish with the sandbox, so a killed CLI leaves nothing behind and two
//! sandboxed CLIs (both pid 2 in their namespaces) never clash.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::run::RunSpec;
use crate::error::{Error, ErrorCode, Result};

/// Where a sandboxed agent's `HOME` is (an empty tmpfs).
const SANDBOX_HOME: &str = "/home/agent";

/// A working bubblewrap and what the sandbox shows besides the task's own folders.
#[derive(Debug, Clone)]
pub struct Sandbox {
  bwrap: PathBuf,
  read_only: Vec<PathBuf>,
  read_write: Vec<PathBuf>,
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

/// The argv that mounts the base system read-only.
fn base_args() -> Vec<String> {
  let mut a: Vec<String> = ["--ro-bind", "/usr", "/usr"].iter().map(|s| s.to_string()).collect();
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

/// Whether bubblewrap can make a sandbox here (it exists, and this kernel and user may create the
/// namespaces): one trial run of `true`, once per process.
fn probe(bwrap: &Path) -> std::result::Result<(), String> {
  static RESULT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
  RESULT
    .get_or_init(|| {
      let out = std::process::Command::new(bwrap)
        .args(["--unshare-pid", "--die-with-parent", "--cap-drop", "ALL", "--proc", "/proc", "--dev", "/dev"])
        .args(base_args())
        .args(["--", "/usr/bin/true"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
      if out.status.success() {
        Ok(())
      } else {
        Err(format!("{} failed: {}", bwrap.display(), String::from_utf8_lossy(&out.stderr).trim()))
      }
    })
    .clone()
}

impl Sandbox {
  /// The sandbox for `mode`: `auto` is bubblewrap where it works, else none; `bubblewrap` fails
  /// with `SANDBOX_UNAVAILABLE` where it does not.
  pub fn detect(mode: crate::sessions::SandboxMode, read_only: Vec<PathBuf>, read_write: Vec<PathBuf>) -> Result<Option<Sandbox>> {
    use crate::sessions::SandboxMode;
    if mode == SandboxMode::None {
      return Ok(None);
    }
    let found = if cfg!(target_os = "linux") { find_bwrap() } else { None };
    let checked = match &found {
      Some(b) => probe(b).map(|_| b.clone()),
      None => Err("bubblewrap (`bwrap`) is not installed (Debian/Ubuntu: apt-get install bubblewrap); it needs Linux".into()),
    };
    match (checked, mode) {
      (Ok(bwrap), _) => Ok(Some(Sandbox { bwrap, read_only, read_write })),
      (Err(_), SandboxMode::Auto) => Ok(None),
      (Err(why), _) => {
        Err(Error::new(ErrorCode::SandboxUnavailable, format!("sandbox \"bubblewrap\" was asked for but cannot be used: {why}")))
      }
    }
  }

  /// Rewrites `spec` so that the CLI runs inside the sandbox, with `cwd` and `config_dir`
  /// writable. The CLI's own argv is unchanged, after `--`.
  pub fn wrap(&self, spec: &mut RunSpec, config_dir: &Path) -> Result<()> {
    let sessions = config_dir.join("sessions");
    std::fs::create_dir_all(&sessions)
      .map_err(|e| Error::store(format!("cannot create the CLI configuration folder {}: {e}", config_dir.display())))?;
    let mut a: Vec<String> = [
      "--unshare-pid",
      "--unshare-ipc",
      "--unshare-uts",
      "--unshare-cgroup-try",
      "--die-with-parent",
      "--new-session",
      "--cap-drop",
      "ALL",
      "--proc",
      "/proc",
      "--dev",
      "/dev",
      "--tmpfs",
      "/tmp",
      "--tmpfs",
      SANDBOX_HOME,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(base_args());
    let s = |p: &Path| p.to_string_lossy().into_owned();
    // Files the CLI's environment names (custom CA bundles).
    for (k, v) in &spec.env {
      if matches!(k.as_str(), "NODE_EXTRA_CA_CERTS" | "SSL_CERT_FILE" | "SSL_CERT_DIR") && Path::new(v).is_absolute() {
        a.extend(["--ro-bind-try".into(), v.clone(), v.clone()]);
      }
    }
    for p in &self.read_only {
      a.extend(["--ro-bind".into(), s(p), s(p)]);
    }
    a.extend(["--ro-bind".into(), s(&spec.program), s(&spec.program)]);
    for p in &self.read_write {
      a.extend(["--bind".into(), s(p), s(p)]);
    }
    a.extend(["--bind".into(), s(config_dir), s(config_dir)]);
    a.extend(["--tmpfs".into(), s(&sessions)]);
    a.extend(["--bind".into(), s(&spec.cwd), s(&spec.cwd)]);
    a.extend(["--chdir".into(), s(&spec.cwd), "--".into(), s(&spec.program)]);
    a.append(&mut spec.args);
    spec.args = a;
    spec.program = self.bwrap.clone();
    // Paths of the host that do not exist inside.
    spec.env.retain(|(k, _)| !matches!(k.as_str(), "HOME" | "TMPDIR" | "TMP" | "TEMP" | "XDG_RUNTIME_DIR"));
    spec.env.push(("HOME".into(), SANDBOX_HOME.into()));
    spec.env.push(("TMPDIR".into(), "/tmp".into()));
    Ok(())
  }
}
