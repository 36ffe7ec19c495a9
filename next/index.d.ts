/**
 * `claude-session-manager/next` — Next.js App Router route handlers over one shared
 * {@link SessionManager}.
 *
 * ```ts
 * // lib/claude.ts (server only)
 * import { createClaudeRoutes } from 'claude-session-manager/next'
 * export const routes = createClaudeRoutes({
 *   getUserId: async (request) => (await auth(request))?.user.id, // your authentication
 * })
 *
 * // app/api/claude/task/route.ts
 * import { routes } from '@/lib/claude'
 * export const { POST } = routes.task // Node.js is the default runtime; no route segment config
 * ```
 *
 * Mount the route groups under one base path (the React hook's `api` option, default
 * `/api/claude`): `task`, `stream`, `session` and `compact`; `permission` (with
 * `permissionPrompts`), `message` (steering) and `context` (the context breakdown) as you use them. Also set
 * `serverExternalPackages: ['claude-session-manager']` in `next.config`: the package loads a
 * native addon and must not be bundled.
 *
 * ## HTTP API
 *
 * Every request is authenticated first with `getUserId(request)`; the user never comes from the
 * body (a body with `userId` is a 400). POST bodies must be JSON objects sent with
 * `content-type: application/json` (this also keeps cookie-authenticated routes safe from
 * cross-site form posts).
 *
 * | route | answer |
 * | --- | --- |
 * | `POST /task` `{ prompt, projectId, sessionId?, title?, forkSession?, atMessageId?, ... }` (`model` only with `allowedModels`) | the {@link TaskResult} |
 * | `POST /stream` (same body) | `text/event-stream`, answered as soon as the task is queued (before it waits for its session or a slot): `task_queued` first (no `id`), then the task's events from the manager's event log, each with `id: <seq>` (its number in the session's log): unnamed events (`message`) with the event's JSON, `event: permission_request` / `permission_resolved` / `permission_cancelled`, and last `event: result` with the {@link TaskResult}, or `event: error` with `{ error: { code, message, status } }` if the task rejected after it was queued (e.g. `SESSION_BUSY`, status 409, once `queueTimeoutMs` has passed). Closing the connection does not stop the task (unless `abortOnDisconnect`): resume with `GET /stream`, stop with `DELETE /stream`. `includePartialMessages` defaults to true here, so text deltas (`stream_event`, joined per few milliseconds) are included. Events are reduced unless `exposeServerDetails` (see there). |
 * | `GET /stream?sessionId=…[&after=<seq>]`, or the `Last-Event-ID` header | Resumes on any server sharing the store: the events after that `id`, then the running task's live ones to its end (at once when nothing runs); the same frames as `POST /stream`. Without `after` / `Last-Event-ID`: the running task's stream from its first event, or 204 when nothing runs. An id older than the log keeps: one `event: events_truncated` `{ firstSeq }` first (reload the history); not a number or beyond the log's last id: 400 `INVALID_ARGUMENT`; another user's session: 404 `SESSION_NOT_FOUND` |
 * | `DELETE /stream?sessionId=…` | `{ aborted, sessionId }`: stops the task running on the session, on whichever server runs it (`SessionManager.abortTask`); `aborted: false` when nothing ran |
 * | `GET /session?sessionId=…` | `{ session }` |
 * | `GET /session?projectId=…&status=…&parentId=…&limit=…&offset=…` (all optional) | `{ sessions }`, newest activity first |
 * | `POST /session` `{ action: 'getOrCreate', projectId, preferActive? }` | `{ session, created }` |
 * | `POST /session` `{ action: 'startFresh', projectId, sessionId? }` | `{ session, archived }` |
 * | `POST /session` `{ action: 'cleanup', maxAgeMs, projectId?, keepActive? }` | `{ deleted, remaining }` |
 * | `POST /session` `{ action: 'fork', sessionId, title?, atMessageId? }` | `{ session }` (the new fork; with `atMessageId`, a message id from `messages`, its conversation ends at that message) |
 * | `POST /session` `{ action: 'rewind', sessionId, toMessageId, files? }` | `{ session, toMessageId, droppedMessages, contextInfo, files? }`: the session continues from that message at its next task (`SessionManager.rewind`); 404 `MESSAGE_NOT_FOUND` for a message not on its live conversation |
 * | `POST /session` `{ action: 'archive', sessionId }` | `{ session }` |
 * | `POST /session` `{ action: 'delete', sessionId }` | `{ deleted: true, sessionId }` |
 * | `POST /session` `{ action: 'messages', sessionId, limit?, offset? }` | `{ messages, ... }` from `SessionManager.getMessages`; 501 `NOT_IMPLEMENTED` when the addon has no `getMessages` |
 * | `POST /session` `{ action: 'tasks', sessionId }` | `{ tasks }` ({@link TaskRecord}s, oldest first) |
 * | `POST /session` `{ action: 'prewarm', sessionId, projectId?, model? }` | `{ status }` ({@link PrewarmResult}): the session's CLI started for its next task, with the options the stream route would give it (`taskDefaults`, `permissionPrompts`) |
 * | `GET /compact?sessionId=…&threshold=…` | `{ context }` ({@link ContextInfo}) |
 * | `POST /compact` `{ sessionId, summaryInstructions? }` | the compaction's {@link TaskResult} (its `contextInfo` is the context after it) |
 * | `POST /permission` `{ sessionId, requestId, behavior: 'allow' \| 'deny', message?, updatedInput?, interrupt?, remember?: 'session' }` (with `permissionPrompts`) | `{ ok: true, requestId, behavior }`: the answer to a `permission_request` event of the same user's stream, whichever server runs it (through `manager.respondToPermission`, forwarded through the store); `remember: 'session'` with an allow also allows the session's later requests for the same tool in the same folder (file tools, inside the working directory) or with exactly the same Bash command, without asking; 404 `PERMISSION_REQUEST_NOT_FOUND` for another user's, an answered or a withdrawn request |
 * | `POST /message` `{ sessionId, prompt }` | `{ ok: true, sessionId }`: the prompt is added to the task running on the session (`SessionManager.sendMessage`); the model sees it in that task and the task's stream carries the answer. 400 `INVALID_ARGUMENT` when no task runs on the session on any server sharing the database (send it as a new task then); 404 `SESSION_NOT_FOUND` for another user's session |
 * | `GET /context?sessionId=…` | `{ contextUsage }` ({@link ContextUsageView}): the CLI's own breakdown when the session's CLI is running here, else the stored meter |
 *
 * Errors are `{ error: { code, message } }`: no user → 401 `UNAUTHORIZED`; malformed JSON or an
 * invalid argument (also a field or model the client may not send) → 400 `INVALID_ARGUMENT`;
 * `SESSION_NOT_FOUND` (also for another user's session) → 404; `SESSION_BUSY` → 409; a body over
 * `maxBodyBytes` → 413 `PAYLOAD_TOO_LARGE`; a prompt too long for the manager (over 4 MiB, or
 * more tokens than the context window) → 413 `CONTEXT_OVERFLOW`; every other code → 500 with that
 * code. A task that ran and failed (model or CLI error) is not an HTTP error: it is a 200
 * TaskResult with `success: false` and `error.code` — except `AUTH_ERROR` (no API key reached the
 * CLI, or the API refused it: set `ANTHROPIC_API_KEY` in the server's environment), answered by
 * `/task` and `/compact` with status 503 and the same TaskResult body, and reported to `onError`
 * (also on `/stream`, whose `event: result` carries it).
 *
 * ## What the server decides
 *
 * - Which task fields a client may send: `clientTaskFields` (anything else is a 400).
 * - Which model: only the server's (`taskDefaults.model`, else the manager's default) unless
 *   `allowedModels` lists the ones a client may pick.
 * - Everything in `taskDefaults`: a client value never overrides it. For the numeric limits
 *   `maxTurns`, `timeoutMs` and `maxBudgetUsd` the server's value is a cap (the task gets the
 *   smaller of the two); for every other field the server's value is used and the client's ignored.
 * - How much a client may send: `maxBodyBytes`.
 * - What the browser learns about the server: nothing of its paths or set-up unless
 *   `exposeServerDetails`.
 */
import type { SessionManager, SessionManagerOptions, TaskRequest } from '../index.js'

/** A Next.js App Router route handler. Next passes a `NextRequest` (a `Request`) and a context. */
export type RouteHandler = (request: Request, context?: unknown) => Promise<Response>

/** The route handlers, one group per route file. */
export interface ClaudeRoutes {
  /** `app/api/claude/task/route.ts`: `export const { POST } = routes.task` */
  task: { POST: RouteHandler }
  /** `app/api/claude/stream/route.ts`: `export const { POST, GET, DELETE } = routes.stream` */
  stream: { POST: RouteHandler; GET: RouteHandler; DELETE: RouteHandler }
  /** `app/api/claude/session/route.ts`: `export const { GET, POST } = routes.session` */
  session: { GET: RouteHandler; POST: RouteHandler }
  /** `app/api/claude/compact/route.ts`: `export const { GET, POST } = routes.compact` */
  compact: { GET: RouteHandler; POST: RouteHandler }
  /** `app/api/claude/permission/route.ts`: `export const { POST } = routes.permission` (answers only with `permissionPrompts`) */
  permission: { POST: RouteHandler }
  /** `app/api/claude/message/route.ts`: `export const { POST } = routes.message` (steering a running task) */
  message: { POST: RouteHandler }
  /** `app/api/claude/context/route.ts`: `export const { GET } = routes.context` (the context breakdown) */
  context: { GET: RouteHandler }
}

/**
 * The context route's answer (`GET /context?sessionId=…` → `{ contextUsage }`): the session's
 * context as the CLI itself counts it (`source: 'cli'`, from its `get_context_usage`, no model
 * call) when its CLI is running in this server (a task runs, or the process is kept warm), else
 * the stored meter (`source: 'store'`, no categories). Only these fields: the rest of the CLI's
 * answer names memory files, agents and skills by their server paths (with `exposeServerDetails`
 * it is added as `raw`).
 */
export interface ContextUsageView {
  source: 'cli' | 'store'
  /** The CLI's categories in its order (system prompt, tools, memory files, messages, …,
   * autocompact buffer, free space); empty for `store`. */
  categories: Array<{
    /** The CLI's id, e.g. `system_prompt`, `system_tools`, `memory_files`, `messages`, `free_space`. */
    id: string
    /** Its label, e.g. `System prompt`. */
    name: string
    tokens: number
    /** `used` (in the context), `deferred` (tools loaded on demand), `buffer` (kept free for
     * autocompaction) or `free`. */
    kind: 'used' | 'deferred' | 'buffer' | 'free'
  }>
  /** Tokens in the context. */
  total: number
  /** The context window. */
  window: number
  /** `total / window` in percent (the CLI rounds it to a whole number). */
  percentage: number
  /** The manager's answer as it came (only with `exposeServerDetails`). */
  raw?: Record<string, any>
}

/** The stream's `event: permission_request` data (with `permissionPrompts`). */
export interface PermissionRequestEvent {
  requestId: string
  sessionId: string
  toolName: string
  /** The tool's input as the model wrote it (e.g. `{ file_path, content }` for Write). */
  input: Record<string, unknown>
  suggestions: unknown[]
  toolUseID?: string
}

/** A field of {@link TaskRequest} other than `userId`. */
export type ClientTaskField = Exclude<keyof TaskRequest, 'userId'>

export interface ClaudeRoutesOptions {
  /**
   * REQUIRED. Your authentication: the id of the signed-in user, or `null`/`undefined` when there
   * is none (the route answers 401). Sessions are scoped by this id: a user can never see or use
   * another user's session. It may also throw a `Response` (a redirect, a 403), which is returned
   * as it is; any other exception is a 500.
   */
  getUserId: (request: Request) => string | null | undefined | Promise<string | null | undefined>
  /**
   * The manager to use: an instance, or a (possibly async) function returning one, called on
   * each request (cache inside it). Default: {@link getSessionManager}() with default options.
   */
  manager?: SessionManager | (() => SessionManager | Promise<SessionManager>)
  /**
   * Task fields set by the server — e.g. `{ model: 'sonnet', maxTurns: 8, timeoutMs: 120000,
   * allowedTools: ['Read'], permissionMode: 'default', maxBudgetUsd: 1 }`. A client can never
   * override them:
   * - the numeric limits `maxTurns`, `timeoutMs` and `maxBudgetUsd` are caps: a client may ask for
   *   less (the task gets the smaller value), never for more;
   * - every other field set here wins over the client's value, which is ignored (no error);
   * - the one exception is `model` (and `fallbackModel`) when `allowedModels` is set: then
   *   `taskDefaults.model` is the default and a client may replace it with one of the allowed
   *   models.
   *
   * A field the client may not send (see `clientTaskFields`) can only come from here.
   */
  taskDefaults?: Partial<Omit<TaskRequest, 'userId'>>
  /**
   * The task fields a client may send to the task and stream routes; a body with any other field
   * is a 400. Default {@link DEFAULT_CLIENT_TASK_FIELDS}, which leaves out what widens what the CLI
   * may do on your server or spend (`model`, `allowedTools`, `disallowedTools`, `permissionMode`,
   * `appendSystemPrompt`, `maxBudgetUsd`, `fallbackModel`, `queueTimeoutMs`, `workingDirectory`).
   * `'all'` accepts every field (still subject to `taskDefaults` and `allowedModels`). `model` is
   * governed by `allowedModels` alone: listing it here without `allowedModels` throws a
   * `TypeError`, and `allowedModels` adds it.
   */
  clientTaskFields?: readonly ClientTaskField[] | 'all'
  /**
   * The models a client may choose with `model` (and, if `clientTaskFields` lets it send one,
   * `fallbackModel`), e.g. `['sonnet', 'haiku']`; a model outside the list is a 400
   * `INVALID_ARGUMENT` naming the list. `'any'` accepts any model (not recommended: the model sets
   * the cost). Default: none — a client that sends `model` gets a 400 and the server's model
   * (`taskDefaults.model`, else the manager's default) is used.
   */
  allowedModels?: readonly string[] | 'any'
  /**
   * The largest request body the POST routes read, in bytes. A larger `content-length` is refused
   * before reading; a body without one is read in chunks and abandoned as soon as it passes the
   * limit. Either way the answer is 413 `PAYLOAD_TOO_LARGE`, and `onError` is not called.
   * Default {@link DEFAULT_MAX_BODY_BYTES} (1 MiB). (The manager refuses prompts over 4 MiB
   * anyway, with 413 `CONTEXT_OVERFLOW`.)
   */
  maxBodyBytes?: number
  /**
   * Forward the CLI's events and sessions to the browser as they are. Default `false`: the stream
   * route reduces the CLI's `system`/`init` event to `{ type, subtype, session_id, model,
   * permissionMode, uuid }` (it otherwise names the working directory, the config folder, the
   * messaging socket, the installed tools, plugins, MCP servers, skills and the CLI version), and
   * drops those fields (`cwd`, `memory_paths`, `messaging_socket_path`, `transcript_path`,
   * `plugins`, `tools`, `mcp_servers`, `slash_commands`, `skills`, `agents`,
   * `claude_code_version`, `apiKeySource`, `output_style`) from the top level of any other event;
   * the session routes leave out each session's `workingDirectory`; and the context route answers
   * with the {@link ContextUsageView} fields alone (with this option also `raw`, the CLI's whole
   * answer, which names memory files, agents and skills by their paths). What the model writes
   * (text, tool calls and their results) is never changed.
   */
  exposeServerDetails?: boolean
  /**
   * Ask the user before a tool that needs permission runs, instead of denying it (the headless
   * default). Default `false`. The stream route then emits `event: permission_request`
   * ({@link PermissionRequestEvent}) and waits for `POST /permission` from the same user, on this
   * server or any other sharing the database (no sticky sessions: an answer to a request of
   * another server's stream goes through `manager.respondToPermission` and the store);
   * `event: permission_cancelled` `{ requestId, sessionId }` when the request is no longer pending
   * without an answer given on this server: the task was aborted, nobody answered within the
   * manager's `permissionTimeoutMs` (the tool is then denied), or it was answered through another
   * server (the tool then runs or not as answered). A client can allow, allow with an edited
   * input (never the command, path or URL asked about), allow for the rest of the session
   * (`remember: 'session'`: a rule the server bounds to the tool and the file's folder inside the
   * working directory, or the exact Bash command; see `PermissionResponse.remember`), or deny
   * (optionally ending the turn); it can never change the CLI's permission settings.
   */
  permissionPrompts?: boolean
  /**
   * Stop the task when the client of its `POST /stream` goes away (the behaviour before the event
   * log). Default `false`: the task runs on, its events stay in the log for `GET /stream`, and a
   * client stops it with `DELETE /stream`.
   */
  abortOnDisconnect?: boolean
  /**
   * Called with every error answered with a 5xx (after its message is hidden from the client when
   * it may name server paths: `STORE_ERROR`, `INTERNAL`, `CLI_NOT_FOUND`, `CLI_UNSUPPORTED`, errors without a code).
   * Default `console.error`; `null` silences it.
   */
  onError?: ((error: unknown, request: Request) => void) | null
}

/**
 * Route handlers for the HTTP API described above. Throws a `TypeError` when `getUserId` is
 * missing.
 */
export declare function createClaudeRoutes(options: ClaudeRoutesOptions): ClaudeRoutes

/**
 * The process-wide {@link SessionManager}: made on the first call with `options`, then kept on
 * `globalThis` (under `Symbol.for('claude-session-manager.next.manager')`) so Next's dev-mode hot
 * reload and every route module share one manager. Later calls return it and ignore `options`.
 * Throws what `new SessionManager(options)` throws (`INVALID_ARGUMENT`, `STORE_ERROR`).
 *
 * It also installs `closeOnSignals` (see `claude-session-manager/shutdown`) for the new manager:
 * on SIGTERM, SIGINT or SIGHUP (a deploy, Ctrl-C) every task is aborted and recorded, every CLI
 * and its tools stopped, and the signal then ends the process as usual unless you listen to it
 * yourself. Pass `{ closeOnSignals: false }` to handle signals yourself.
 */
export declare function getSessionManager(options?: SessionManagerOptions, behaviour?: { closeOnSignals?: boolean }): SessionManager

/** Closes the shared manager, if any, and forgets it (tests, graceful shutdown). */
export declare function closeSessionManager(): Promise<void>

/** The HTTP status the routes use for an error code: 400, 401, 404, 409, 413 (`PAYLOAD_TOO_LARGE`,
 * `CONTEXT_OVERFLOW`), 501, else 500. */
export declare function statusForCode(code: string): number

/** The task fields a client may send by default: `prompt`, `projectId`, `sessionId`, `title`,
 * `forkSession`, `atMessageId`, `autoCompact`, `compactThreshold`, `maxTurns`, `timeoutMs`,
 * `includePartialMessages` (not `model`: see `allowedModels`). */
export declare const DEFAULT_CLIENT_TASK_FIELDS: readonly ClientTaskField[]

/** The default `maxBodyBytes`: 1 MiB. */
export declare const DEFAULT_MAX_BODY_BYTES: number

/** An error the routes answer with a fixed HTTP status (e.g. 401 `UNAUTHORIZED`). */
export declare class RouteError extends Error {
  constructor(status: number, code: string, message: string)
  readonly status: number
  readonly code: string
}

/** The JSON body of every error response. */
export interface ErrorResponseBody {
  error: { code: string; message: string }
}

export type { ContextInfo, PrewarmResult, Session, TaskRecord, TaskResult } from '../index.js'
