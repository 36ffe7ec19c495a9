//! claude-session-manager: persistent, resumable, forkable Claude Code sessions for Node.js.
//!
//! The core (`store`, `executor`, `stream`, `context`, `tokens`, `transcript`, `estimate`,
//! `manager`) is plain Rust that `cargo test` covers without Node; `binding` is the thin napi layer.

pub mod context;
pub mod error;
pub mod estimate;
pub mod executor;
pub mod manager;
pub mod store;
pub mod stream;
#[cfg(target_os = "linux")]
mod spawn_linux;
pub mod tokens;
pub mod transcript;
pub mod validate;

mod binding;
