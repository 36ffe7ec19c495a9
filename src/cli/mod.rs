//! Everything about the `claude` CLI as a process: finding it (`resolve`), its argv and
//! environment (`args`), running it and reading its stream (`run`, `stream`), and the platform's
//! process primitives (`process`).

pub mod args;
pub mod key_proxy;
pub mod mirror;
pub mod permission;
pub mod process;
pub mod resolve;
pub mod run;
pub mod sandbox;
pub mod stream;
pub mod version;
pub mod warm;

pub use args::{build_args, child_env, CliArgs, SessionMode};
pub use key_proxy::{KeyProxy, ProxyLimits, SandboxListener, TaskMeter, TaskToken, Upstream};
pub use permission::Decision;
pub use process::pid_alive;
pub use resolve::resolve_cli;
pub use run::{run, run_until_result, CancelToken, CompactEvent, EndReason, RunOutcome, RunSpec, Tail};
pub(crate) use run::{run_launched, Launched};
pub use sandbox::{Sandbox, SandboxLimits};
pub use warm::{warm_args, CanUseTool, PermissionRequest, TurnOptions, WarmHandle, WarmProcess};
