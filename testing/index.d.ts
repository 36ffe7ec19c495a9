/**
 * `claude-session-manager/testing` — an offline stand-in for the Anthropic
 * Messages API that the real `claude` CLI can run against.
 *
 * ```js
 * const { startStandInServer } = require('claude-session-manager/testing')
 *
 * const server = await startStandInServer()
 * server.enqueue(
 *   { toolUse: { name: 'Write', input: { file_path: '/tmp/x/a.txt', content: 'hi' } } },
 *   { text: 'Done.' },
 * )
 * // spawn `claude -p --output-format stream-json --verbose ...` with
 * // env: { ...process.env, ...server.env(), CLAUDE_CONFIG_DIR: someTempDir }
 * // ...
 * await server.close()
 * ```
 *
 * Behaviour of Claude Code 2.1.x against the stand-in, worth knowing when scripting:
 * - Each model turn is one `POST /v1/messages?beta=true` with `stream: true`.
 *   A tool_use reply makes the CLI run the tool and call again, so the
 *   *next* scripted reply answers the tool result.
 * - If a stream breaks mid-way (see {@link Reply.dropConnection}), the CLI
 *   retries the same request once **without streaming** (`stream: false`),
 *   even with `CLAUDE_CODE_MAX_RETRIES=0`; that retry takes the next reply.
 *   Set `CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1` to make the drop fail
 *   the turn instead.
 * - Auto-compaction (when the reported usage nears the context window) is an
 *   extra streaming request whose last user message starts with
 *   `"CRITICAL: Respond with TEXT ONLY."`; it also takes the next reply.
 * - Without `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` the CLI also sends a
 *   connectivity check `HEAD /api/hello`, which is answered 200 and recorded.
 * - The queue is shared by every client of the server; to serve concurrent
 *   sessions differently, pass a `defaultReply` function and route on
 *   `req.sessionId`.
 */

/** Token usage, as in the Messages API. */
export interface Usage {
  input_tokens: number
  output_tokens: number
  cache_creation_input_tokens: number
  cache_read_input_tokens: number
}

/** A tool call the stand-in "model" makes. */
export interface ToolUse {
  /** Tool name as the CLI knows it, e.g. `'Write'`, `'Bash'`, `'Read'`, `'Edit'`. */
  name: string
  /** Tool input, e.g. `{ file_path, content }` for Write (absolute path). */
  input?: Record<string, unknown>
  /** tool_use id; default `toolu_standin_<n>`. */
  id?: string
}

/** An API error reply: HTTP `status` with body `{ type: 'error', error: { type, message } }`. */
export interface ErrorSpec {
  /** HTTP status, e.g. 529, 429, 500, 400, 401. Default 500. */
  status?: number
  /**
   * Error type; default by status: 400 invalid_request_error, 401 authentication_error,
   * 403 permission_error, 404 not_found_error, 413 request_too_large,
   * 429 rate_limit_error, 500 api_error, 529 overloaded_error.
   */
  type?: string
  /** Error message; default `'stand-in <type>'`. */
  message?: string
  /** Sent as a `retry-after` header (seconds) when set. */
  retryAfter?: number
}

/**
 * One scripted answer to a `POST /v1/messages` call. Fields combine:
 * `{ text, delayMs, chunkDelayMs, usage }` is valid, as is `{ error, delayMs }`.
 */
export interface Reply {
  /**
   * Assistant text. With `toolUse`, it is a preamble text block before the tool call.
   * Without `text` or `toolUse`, the default echo text is used.
   */
  text?: string
  /** Tool call(s). stop_reason becomes `tool_use`; the CLI runs the tool and calls again. */
  toolUse?: ToolUse | ToolUse[]
  /** Answer with an HTTP error instead of a message. */
  error?: ErrorSpec
  /** Wait this long before the first byte (status line) is sent. */
  delayMs?: number
  /**
   * Wait until this settles (after `delayMs`) before the first byte is sent: an answer held until
   * the test has done something while the call is in flight, whatever the machine's speed.
   */
  after?: PromiseLike<unknown>
  /** Wait this long between SSE events (text is streamed one word per event). */
  chunkDelayMs?: number
  /**
   * Close the socket mid-stream: after message_start and part of the content,
   * before message_delta. For a non-streaming request the socket closes before
   * any byte. Note the CLI's non-streaming retry (see module docs).
   */
  dropConnection?: boolean
  /** Override (some of) the computed usage numbers; reported in message_start and message_delta. */
  usage?: Partial<Usage>
  /** Override stop_reason (default `end_turn`, or `tool_use` with toolUse), e.g. `'max_tokens'`. */
  stopReason?: string
}

/** A reply, or a function computing one from the recorded request. */
export type ReplySource = Reply | ((req: RecordedRequest) => Reply)

export interface StandInServerOptions {
  /** TCP port; default 0 (a free port). */
  port?: number
  /** Interface to bind; default `'127.0.0.1'`. */
  host?: string
  /**
   * Reply used when the queue is empty. Default: the echo reply
   * `Echo #<user turns in body.messages>: <last user text>` (see {@link echoReply}).
   */
  defaultReply?: ReplySource
  /**
   * Model name reported in responses (`message.model`). Default: the model the request
   * asked for. The CLI keys `modelUsage` and `contextWindow` by the model it *requested*,
   * so this only changes `message.model` in the assistant lines.
   */
  model?: string
  /**
   * API key the server accepts in `x-api-key` (or `Authorization: Bearer`); others get 401.
   * Default `'test-key'`; `'*'` accepts any key.
   */
  apiKey?: string
}

/** A request the server received (every method and path, in arrival order). */
export interface RecordedRequest {
  /** Position in `server.requests` (restarts at 0 after `reset()`). */
  index: number
  method: string
  /** URL path without the query string, e.g. `'/v1/messages'`. */
  path: string
  /** Raw request URL with query string, e.g. `'/v1/messages?beta=true'`. */
  url: string
  /** Request headers, lower-cased names. */
  headers: Record<string, string | string[] | undefined>
  /**
   * Parsed JSON body (`{ model, messages, system, tools, stream, max_tokens, ... }` for
   * /v1/messages); `null` when empty; the raw string when not valid JSON.
   */
  body: any
  /** The `x-claude-code-session-id` header, or `null`. */
  sessionId: string | null
  /** `Date.now()` when the request arrived. */
  receivedAt: number
  /** `Date.now()` when the response finished or the connection closed; `null` while open. */
  endedAt: number | null
  /** True when the connection closed before the response was complete (client abort or dropConnection). */
  aborted: boolean
}

/** What the server answered to one request. */
export interface RecordedResponse {
  /** Index of the request in `server.requests`. */
  requestIndex: number
  /**
   * `'text'` | `'tool_use'` | `'error'` | `'drop'` for /v1/messages;
   * `'count_tokens'`, `'models'`, `'ok'` (HEAD) for the other routes.
   */
  kind: 'text' | 'tool_use' | 'error' | 'drop' | 'count_tokens' | 'models' | 'ok'
  /** HTTP status sent. */
  status: number
  /** Whether it was answered as an SSE stream. */
  stream: boolean
  /**
   * The usage numbers actually reported: the final usage once message_delta was sent
   * (or the JSON body's usage when not streaming); only message_start's usage if the
   * stream stopped earlier; `{ input_tokens }` for count_tokens; `null` for errors or
   * when nothing was sent.
   */
  usage: Usage | { input_tokens: number } | null
  /** True when the whole response was written. */
  completed: boolean
  /** Reported model (messages only). */
  model?: string | null
  /** Reported message id, `msg_standin_<n>` (messages only). */
  messageId?: string | null
  /** stop_reason actually reported, or `null` if the stream never got that far. */
  stopReason?: string | null
  /** Content blocks of the reply (as planned, even if the stream was cut). */
  content?: Array<
    | { type: 'text'; text: string }
    | { type: 'tool_use'; id: string; name: string; input: Record<string, unknown> }
  > | null
  /** Error sent, for `kind: 'error'`. */
  error?: { type: string; message: string }
}

/** Environment variables that point the CLI at the stand-in. */
export interface StandInEnv {
  ANTHROPIC_BASE_URL: string
  ANTHROPIC_API_KEY: string
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1'
  CLAUDE_CODE_MAX_RETRIES: '0'
  [name: string]: string
}

export interface StandInServer {
  /** Base URL, e.g. `'http://127.0.0.1:41234'`. */
  readonly url: string
  /** Port the server listens on. */
  readonly port: number
  /**
   * Env for the CLI: `ANTHROPIC_BASE_URL`, `ANTHROPIC_API_KEY: 'test-key'`,
   * `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1'`, `CLAUDE_CODE_MAX_RETRIES: '0'`,
   * plus `extra`. Also set a temporary `CLAUDE_CONFIG_DIR`; spread it over `process.env`
   * but make sure no `ANTHROPIC_AUTH_TOKEN` or cloud-provider variables
   * (`CLAUDE_CODE_USE_BEDROCK`, `CLAUDE_CODE_USE_VERTEX`, ...) leak in.
   */
  env(extra?: Record<string, string>): StandInEnv
  /**
   * Appends replies to the FIFO queue; each `POST /v1/messages` (streaming or not)
   * takes the next one before `defaultReply` is used. Returns the queue length.
   */
  enqueue(...replies: ReplySource[]): number
  /** Number of replies still queued. */
  readonly pending: number
  /** `POST /v1/messages` requests open right now (from arrival until the response ends or the connection closes). */
  readonly inFlight: number
  /**
   * The most `POST /v1/messages` requests open at once since the server started (or since
   * `reset()`, which starts it again from those open then): with slow replies, how many CLIs
   * were talking to the "model" concurrently.
   */
  readonly maxInFlight: number
  /** Every request received, in order. The array is cleared in place by `reset()`. */
  readonly requests: RecordedRequest[]
  /** What was answered, in the order responses started. Cleared in place by `reset()`. */
  readonly responses: RecordedResponse[]
  /** Empties the queue, `requests` and `responses`, and restarts `maxInFlight`. */
  reset(): void
  /** Stops listening and destroys open connections. */
  close(): Promise<void>
}

/**
 * Starts the stand-in on 127.0.0.1 (random port by default).
 *
 * Routes: `POST /v1/messages` (SSE when `body.stream`, JSON otherwise; any query string),
 * `POST /v1/messages/count_tokens` (`{ input_tokens }`, does not take a reply),
 * `GET /v1/models`, `HEAD *` and `GET /` (200); anything else is a 404 `not_found_error`.
 *
 * Usage, unless overridden by `reply.usage`, is deterministic:
 * `input_tokens = ceil(JSON.stringify({ system, messages, tools }).length / 4)`,
 * cache fields 0, `output_tokens = max(1, ceil(chars / 4))` where chars counts the reply
 * text plus, per tool call, `name.length + JSON.stringify(input).length`.
 * message_start reports the input/cache numbers with `output_tokens: 1`;
 * message_delta reports the full usage.
 */
export function startStandInServer(options?: StandInServerOptions): Promise<StandInServer>

/** `ceil(JSON.stringify({ system, messages, tools }).length / 4)` — the stand-in's input_tokens. */
export function countInputTokens(body: { system?: unknown; messages?: unknown; tools?: unknown }): number

/**
 * User turns in a request body: `role: 'user'` messages with at least one text block that
 * is not a CLI-injected `<system-reminder>` (tool_result-only messages do not count),
 * and the last such text, trimmed.
 */
export function summarizeUserTurns(body: { messages?: unknown[] }): { turns: number; lastText: string }

/** The default reply: `{ text: 'Echo #<turns>: <lastText>' }`. */
export function echoReply(req: { body: any }): { text: string }
