/**
 * `claude-session-manager/react` — a React hook over the HTTP API of
 * `claude-session-manager/next`, in the spirit of the AI SDK's `useChat`.
 *
 * ```tsx
 * 'use client'
 * import { useClaudeSession, contextLevel } from 'claude-session-manager/react'
 *
 * export function Chat() {
 *   const { messages, send, context, isLoading, error, compact, fork, startFresh, abort } =
 *     useClaudeSession({ projectId: 'my-project' })
 *   // ...
 * }
 * ```
 *
 * Client-safe: the module requires only `react` (an optional peer dependency of this package)
 * and imports nothing but types from the native addon.
 *
 * On mount (and when `projectId` changes) the hook finds the user's active session of the project
 * (`getOrCreate`; or uses `sessionId` when given), loads its context meter, its history when the
 * server can replay it (`messages` action; skipped quietly when the server answers 501), and the
 * project's session list. Actions never reject: a failure sets `error` and resolves `null`.
 */
import type { ContextInfo, FileChanges, Session, TaskResult } from '../index.js'
import type { ContextUsageView, PermissionRequestEvent } from '../next/index.js'

export type { ContextInfo, ContextUsageView, PermissionRequestEvent, Session, TaskResult }

/** A message on screen. `system` messages are notes the hook adds (e.g. after a compaction). */
export interface ClaudeMessage {
  /** A local id for new messages; the server's id for replayed history. */
  id: string
  role: 'user' | 'assistant' | 'system'
  /** The text; for the assistant it grows while the reply streams. */
  content: string
  /** `streaming` while the reply arrives; `aborted` after `abort()`; `error` when the task failed. */
  status: 'streaming' | 'done' | 'aborted' | 'error'
  /** Tools the assistant called during this reply. */
  toolUses?: Array<{ id: string; name: string; input: unknown }>
  /** The task's result, on the assistant message that ended it. */
  result?: TaskResult
  /** Milliseconds since the epoch. */
  createdAt?: number
}

/** An event of the task stream: the CLI's stream-json messages and `task_started`. */
export interface ClaudeStreamEvent {
  type: string
  subtype?: string
  [key: string]: any
}

/** An error of the API (or of the hook), with the API's `code`. */
export interface ClaudeSessionError extends Error {
  /** `UNAUTHORIZED`, `INVALID_ARGUMENT`, `SESSION_NOT_FOUND`, `SESSION_BUSY`, `API_ERROR`, ... */
  code: string
  /** The HTTP status, when the error came with a response. */
  status?: number
  /** For `BUDGET_EXCEEDED` from a spend cap: which cap stopped the task. */
  scope?: 'user' | 'project' | 'session'
}

export interface UseClaudeSessionOptions {
  /** The project whose session this is. Required before anything is loaded. */
  projectId: string
  /** Open this session instead of the project's active one. */
  sessionId?: string
  /** Where the routes of `claude-session-manager/next` are mounted. Default `/api/claude`. */
  api?: string
  /** Extra request headers (e.g. an auth token), or a function returning them. */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>)
  /** `fetch` credentials. Default `same-origin` (cookies go along). */
  credentials?: RequestCredentials
  /** A custom fetch (tests, instrumentation). */
  fetch?: typeof fetch
  /** Extra task fields sent with every prompt (only those the server's `clientTaskFields` allow). */
  body?: Record<string, unknown>
  /** Load the session's history from the `messages` action when the server has it. Default true. */
  loadHistory?: boolean
  /** How many history messages to load. Default 200. */
  historyLimit?: number
  /**
   * Start the session's CLI on the server when a session is opened (the `prewarm` session
   * action), so that the first prompt does not wait for the CLI's start-up. Default true.
   */
  prewarm?: boolean
  /** Every event of a running task, as it arrives. */
  onEvent?: (event: ClaudeStreamEvent) => void
  /** Each finished task's result (also failed ones: check `success`). */
  onFinish?: (result: TaskResult) => void
  /** Every error that is also put in `error`. */
  onError?: (error: ClaudeSessionError) => void
  /** Each `permission_request` as it arrives (it is also added to `permissionRequests`). */
  onPermissionRequest?: (request: PermissionRequestEvent) => void
}

export interface UseClaudeSessionResult {
  /** The current session's id; `null` until it is known. */
  sessionId: string | null
  /** The current session, once it is in `sessions`. */
  session: Session | null
  /** The project's sessions (active and archived), newest activity first. */
  sessions: Session[]
  messages: ClaudeMessage[]
  setMessages: (update: ClaudeMessage[] | ((messages: ClaudeMessage[]) => ClaudeMessage[])) => void
  /** The context meter of the current session; `null` until loaded. */
  context: ContextInfo | null
  /**
   * The current session's context as the CLI counts it, by category (`GET /context`): loaded with
   * the session and refreshed after each task and compaction. `source: 'cli'` while the session's
   * CLI runs on the server (a task runs, or its process is kept warm), else `'store'` (the stored
   * meter, no categories). `null` until loaded, or when the server has no context route.
   */
  contextUsage: ContextUsageView | null
  /** Loads `contextUsage` again (e.g. while a task runs); resolves it, or `null` on failure (see `error`). */
  refreshContextUsage: () => Promise<ContextUsageView | null>
  /** `streaming` while a prompt runs, `compacting`, `loading` (switching sessions), else `idle`. */
  status: 'idle' | 'loading' | 'streaming' | 'compacting'
  /** `status !== 'idle'`. */
  isLoading: boolean
  /** `status === 'streaming'`. */
  isStreaming: boolean
  /** The last error, cleared by the next action. */
  error: ClaudeSessionError | null
  clearError: () => void
  /** Whether the server could replay history (`null` before the first try). */
  historySupported: boolean | null
  /**
   * Sends a prompt and streams the reply into `messages`; resolves with the task's result (also
   * for a failed task), or `null` when it could not run. `forkSession: true` runs it in a new fork.
   * `model` is accepted by the server routes only when their `allowedModels` option lists it
   * (otherwise the request fails with `INVALID_ARGUMENT`).
   */
  send: (prompt: string, options?: { model?: string; title?: string; forkSession?: boolean; atMessageId?: string }) => Promise<TaskResult | null>
  /**
   * Says `text` to Claude while it works: with a task running (`isStreaming`) the message goes to
   * that task (`POST /message`); it shows in `messages` at once, and the model's words after it
   * stream into a new assistant message below it, in the same task (whose result ends up on the
   * last one). With no task running it is the same as `send(text)`. If the task ended while the
   * message was on its way, the message becomes the next prompt. Resolves `true` once delivered
   * (for a new prompt: once it has run), `false` on failure (see `error`).
   */
  sendMessage: (text: string) => Promise<boolean>
  /**
   * Stops the running task on the server (`DELETE /stream`, wherever it runs: also a task this
   * page attached to after a reload) and closes this page's stream. Closing the page or losing the
   * connection does not stop the task: on mount the hook attaches to a task running on the
   * session, and a stream that breaks off resumes from its last event id with backoff.
   */
  abort: () => void
  /** The same as `abort`. */
  stop: () => void
  /** Compacts the session; the meter shows the smaller context and a system note is added. */
  compact: (options?: { summaryInstructions?: string }) => Promise<TaskResult | null>
  /** Forks the session (no model call) and switches to the fork, keeping the messages on screen. */
  fork: (options?: { title?: string }) => Promise<Session | null>
  /** Archives the project's active sessions and switches to a new, empty one. */
  startFresh: () => Promise<Session | null>
  /** Switches to another session of the list (its history loads when the server can replay it). */
  selectSession: (sessionId: string) => Promise<string | null>
  /** Reloads the session list, the context meter and `contextUsage`. */
  refresh: () => Promise<Session[]>
  /**
   * Tools waiting for the user's decision while a prompt runs (the routes' `permissionPrompts`),
   * oldest first; a request leaves the list when answered, withdrawn or when the prompt ends.
   */
  permissionRequests: PermissionRequestEvent[]
  /** Answers one of `permissionRequests` through `POST /permission`; resolves `null` on failure (see `error`). */
  respondToPermission: (
    requestId: string,
    answer: { behavior: 'allow'; updatedInput?: Record<string, unknown>; remember?: 'session' } | { behavior: 'deny'; message?: string; interrupt?: boolean },
  ) => Promise<{ ok: true; requestId: string; behavior: 'allow' | 'deny' } | null>
  /**
   * The sessions this one branches with: its parent (`relation: 'parent'`, `atMessageId` the
   * parent's message it was forked at) and its forks (`'fork'`, `atMessageId` this session's
   * message each continues from; `null`: from the end). Switch with `selectSession`.
   */
  branches: ClaudeBranch[]
  /**
   * Sends `text` instead of the user message `messageId` (one of `messages`): the session is
   * forked at the message before it (the old branch stays in `branches`), the new text runs in the
   * fork and the hook switches to it; editing the first message starts a new session. Resolves
   * the task's result, or `null` on failure (see `error`).
   */
  editMessage: (messageId: string, text: string) => Promise<TaskResult | null>
  /** A new answer to the last prompt, in a fork (`editMessage` with the prompt's own text). */
  regenerate: () => Promise<TaskResult | null>
  /**
   * Undoes the user message `messageId` and everything after it, in place: the session continues
   * from the message before it (the routes' `rewind`); the history reloads. `files: true` also
   * restores the working directory (`'dryRun'`: only lists the changes, nothing changes).
   */
  rewind: (
    messageId: string,
    options?: { files?: boolean | 'dryRun' },
  ) => Promise<{ session: Session; toMessageId: string; droppedMessages: number; contextInfo: ContextInfo; files?: FileChanges } | null>
}

/** A session the current one branches with (`UseClaudeSessionResult.branches`). */
export interface ClaudeBranch {
  sessionId: string
  atMessageId: string | null
  relation: 'parent' | 'fork'
}


export declare function useClaudeSession(options: UseClaudeSessionOptions): UseClaudeSessionResult

/**
 * The meter's level, for its colour: `critical` when the session should be compacted (or cannot
 * continue), `warning` from `warnAt` percent (default 60), else `ok`.
 */
export declare function contextLevel(context: ContextInfo | null | undefined, options?: { warnAt?: number }): 'ok' | 'warning' | 'critical'

/**
 * Reads a `text/event-stream` body (as the stream route sends it), calling `onFrame` with each
 * event's name (`message`, `result`, `error`) and its JSON data. Resolves when the body ends.
 */
export declare function readEventStream(body: ReadableStream<Uint8Array>, onFrame: (event: string, data: any, id?: string) => void): Promise<void>
