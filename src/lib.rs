//! claude-session-manager: persistent, resumable, forkable Claude Code sessions for Node.js.
//!
//! The core is plain Rust that `cargo test` covers without Node, in rooms by responsibility:
//! - [`sessions`]: the manager, the session API and task runs;
//! - [`store`]: the session store (SQLite, or PostgreSQL shared by several servers);
//! - [`cli`]: the `claude` CLI as a process (finding it, argv, environment, spawn, stream-json);
//! - [`context`]: the context meter, the prompt estimator and token counting;
//! - [`transcript`]: the CLI's transcript read back as a conversation;
//! - [`error`], [`validate`]: the one error type with its stable codes, and input checks.
//!
//! `binding` is the thin napi door over [`sessions::Manager`].

pub mod cli;
pub mod context;
pub mod error;
pub mod sessions;
pub mod store;
pub mod transcript;
pub mod validate;

#[doc(hidden)]
pub mod binding;
