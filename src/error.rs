//! The one error type of the crate. Every failure carries a stable string code that the binding
//! layer turns into `error.code` on the JavaScript side; the message says what was wrong and what
//! to do about it.

use std::fmt;

/// Stable error codes, as seen by JavaScript in `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
  /// A request field is missing, malformed, out of range or unsafe. Nothing was spawned or stored.
  InvalidArgument,
  /// No session with that id belongs to that user (another user's session answers the same way).
  SessionNotFound,
  /// The session already runs a task and the wait for it exceeded the bound.
  SessionBusy,
  /// The session store (SQLite or PostgreSQL) could not be opened, read or written.
  StoreError,
  /// The `claude` binary could not be found.
  CliNotFound,
  /// The `claude` binary is older than the oldest version this package supports.
  CliUnsupported,
  /// The CLI failed: it could not start, exited abnormally, or printed no result.
  CliError,
  /// The model API answered with an error (see the HTTP status in the message).
  ApiError,
  /// No API key reached the CLI ("Not logged in"), or the API refused it (HTTP 401): the server's
  /// credentials need fixing (`ANTHROPIC_API_KEY`), not the request.
  AuthError,
  /// The task stopped at `maxTurns`.
  MaxTurns,
  /// The task stopped at `maxBudgetUsd`.
  BudgetExceeded,
  /// The task was cancelled through its `AbortSignal`.
  Aborted,
  /// The task ran longer than `timeoutMs`, or its CLI printed nothing for too long.
  Timeout,
  /// The manager was closed.
  Closed,
  /// The prompt or session would not fit into the model's context window.
  ContextOverflow,
  /// A compaction failed; the session is unchanged.
  CompactFailed,
  /// `sandbox: 'bubblewrap'` was asked for and bubblewrap cannot be used on this machine.
  SandboxUnavailable,
  /// The task's node lost the session's lease (it could not renew it in time, or another node
  /// took it over): its CLI was stopped and the task ended `interrupted`.
  LeaseLost,
  /// No permission request with that id is pending in that session (it was answered, timed out
  /// or withdrawn, or never existed).
  PermissionRequestNotFound,
  /// A session's transcript is larger than `maxTranscriptBytes`: it was not read.
  TranscriptTooLarge,
  /// A session's transcript (or a folder on its path below the tenant's configuration folder) is
  /// a symbolic link or not a regular file: the agent can write there, so it was not followed.
  TranscriptUnsafe,
  /// No message with that id is on the session's live conversation (`fork`, `rewind`,
  /// `executeTask`'s `atMessageId`): the id is unknown, on a dead branch, or another session's.
  MessageNotFound,
  /// The CLI refused to continue from a rewind point because the conversation changed since the
  /// rewind (`--resume-drops-turn`): nothing ran, the rewind was withdrawn, the session is as it
  /// was before it. Deterministic: rewind again from what `getMessages` shows, never retry.
  RewindRejected,
  /// A bug in this package (a panic or an impossible state). Please report it.
  Internal,
}

impl ErrorCode {
  /// The code as the string JavaScript sees.
  pub fn as_str(self) -> &'static str {
    match self {
      ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
      ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
      ErrorCode::SessionBusy => "SESSION_BUSY",
      ErrorCode::StoreError => "STORE_ERROR",
      ErrorCode::CliNotFound => "CLI_NOT_FOUND",
      ErrorCode::CliUnsupported => "CLI_UNSUPPORTED",
      ErrorCode::CliError => "CLI_ERROR",
      ErrorCode::ApiError => "API_ERROR",
      ErrorCode::AuthError => "AUTH_ERROR",
      ErrorCode::MaxTurns => "MAX_TURNS",
      ErrorCode::BudgetExceeded => "BUDGET_EXCEEDED",
      ErrorCode::Aborted => "ABORTED",
      ErrorCode::Timeout => "TIMEOUT",
      ErrorCode::Closed => "CLOSED",
      ErrorCode::ContextOverflow => "CONTEXT_OVERFLOW",
      ErrorCode::CompactFailed => "COMPACT_FAILED",
      ErrorCode::SandboxUnavailable => "SANDBOX_UNAVAILABLE",
      ErrorCode::LeaseLost => "LEASE_LOST",
      ErrorCode::PermissionRequestNotFound => "PERMISSION_REQUEST_NOT_FOUND",
      ErrorCode::TranscriptTooLarge => "TRANSCRIPT_TOO_LARGE",
      ErrorCode::TranscriptUnsafe => "TRANSCRIPT_UNSAFE",
      ErrorCode::MessageNotFound => "MESSAGE_NOT_FOUND",
      ErrorCode::RewindRejected => "REWIND_REJECTED",
      ErrorCode::Internal => "INTERNAL",
    }
  }

  /// Every code, for documentation and tests.
  pub const ALL: [ErrorCode; 24] = [
    ErrorCode::InvalidArgument,
    ErrorCode::SessionNotFound,
    ErrorCode::SessionBusy,
    ErrorCode::StoreError,
    ErrorCode::CliNotFound,
    ErrorCode::CliUnsupported,
    ErrorCode::CliError,
    ErrorCode::ApiError,
    ErrorCode::AuthError,
    ErrorCode::MaxTurns,
    ErrorCode::BudgetExceeded,
    ErrorCode::Aborted,
    ErrorCode::Timeout,
    ErrorCode::Closed,
    ErrorCode::ContextOverflow,
    ErrorCode::CompactFailed,
    ErrorCode::SandboxUnavailable,
    ErrorCode::LeaseLost,
    ErrorCode::PermissionRequestNotFound,
    ErrorCode::TranscriptTooLarge,
    ErrorCode::TranscriptUnsafe,
    ErrorCode::MessageNotFound,
    ErrorCode::RewindRejected,
    ErrorCode::Internal,
  ];
}

/// An error with a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
  pub code: ErrorCode,
  pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
  pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
    Error { code, message: message.into() }
  }
  pub fn invalid(message: impl Into<String>) -> Self {
    Error::new(ErrorCode::InvalidArgument, message)
  }
  pub fn not_found(session_id: &str) -> Self {
    Error::new(ErrorCode::SessionNotFound, format!("session {session_id} was not found for this user"))
  }
  pub fn store(message: impl Into<String>) -> Self {
    Error::new(ErrorCode::StoreError, message)
  }
  pub fn internal(message: impl Into<String>) -> Self {
    Error::new(ErrorCode::Internal, message)
  }
}

impl fmt::Display for Error {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{}: {}", self.code.as_str(), self.message)
  }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
  fn from(e: rusqlite::Error) -> Self {
    Error::store(format!("session store: {e}"))
  }
}
