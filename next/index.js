'use strict'
// claude-session-manager/next — Next.js App Router route handlers over one shared SessionManager.
// Plain CommonJS with no build step; the typings and the full contract are in ./index.d.ts.
//
// Server-only: this module loads the native addon (lazily, on the first request). Keep the
// package in `serverExternalPackages` and use it from route handlers (Node.js runtime, the default).

const MANAGER_KEY = Symbol.for('claude-session-manager.next.manager')
const SIGNALS_KEY = Symbol.for('claude-session-manager.next.signals')
// Permission requests answered through this server's POST /permission (user, session and
// request id), shared by every route module of the process: their stream sends no
// `permission_cancelled` when the manager then withdraws them from the callback.
const ANSWERED_KEY = Symbol.for('claude-session-manager.next.answered')
const answeredHere = () => (globalThis[ANSWERED_KEY] ??= new Set())
const answerKey = (userId, sessionId, requestId) => JSON.stringify([userId, sessionId, requestId])

/** Fields of a task request a client may send unless `clientTaskFields` says otherwise. `model` is
 * not one of them: a client may choose the model only from `allowedModels`. */
const DEFAULT_CLIENT_TASK_FIELDS = Object.freeze([
  'prompt',
  'projectId',
  'sessionId',
  'title',
  'forkSession',
  'autoCompact',
  'compactThreshold',
  'maxTurns',
  'timeoutMs',
  'includePartialMessages',
])

/** HTTP status of each error code the routes answer with; every other code is a 500. */
const STATUS_BY_CODE = Object.freeze({
  INVALID_ARGUMENT: 400,
  UNAUTHORIZED: 401,
  SESSION_NOT_FOUND: 404,
  PERMISSION_REQUEST_NOT_FOUND: 404,
  SESSION_BUSY: 409,
  PAYLOAD_TOO_LARGE: 413,
  // The manager refuses a prompt too long for any context window before anything runs.
  CONTEXT_OVERFLOW: 413,
  NOT_IMPLEMENTED: 501,
  // The server's API key is missing or refused: the server needs fixing, not the request.
  AUTH_ERROR: 503,
})

/** Numeric task limits: a value the server sets in `taskDefaults` is a cap the client may only lower. */
const LIMIT_FIELDS = Object.freeze(['maxTurns', 'timeoutMs', 'maxBudgetUsd'])

/** Task fields that name a model: the client may send them only with `allowedModels`. */
const MODEL_FIELDS = Object.freeze(['model', 'fallbackModel'])

const DEFAULT_MAX_BODY_BYTES = 1024 * 1024

/** What the browser gets of the CLI's `system`/`init` event by default. */
const INIT_EVENT_FIELDS = Object.freeze(['type', 'subtype', 'session_id', 'model', 'permissionMode', 'uuid'])

/** Top-level event fields that describe the server (paths, sockets, installed tools, versions):
 * dropped from every event sent to the browser unless `exposeServerDetails` is set. */
const SERVER_DETAIL_FIELDS = new Set([
  'cwd',
  'memory_paths',
  'messaging_socket_path',
  'transcript_path',
  // A background job's output file: under the CLI's temp folder, named after the server's cwd.
  'output_file',
  'plugins',
  'tools',
  'mcp_servers',
  'slash_commands',
  'skills',
  'agents',
  'claude_code_version',
  'apiKeySource',
  'output_style',
])

/** Codes whose messages may name server paths or internals: a 5xx with one of these (or with no
 * code at all) gets a generic message; the real error goes to `onError`. */
const PRIVATE_CODES = new Set(['STORE_ERROR', 'INTERNAL', 'CLI_NOT_FOUND'])

const JSON_HEADERS = Object.freeze({ 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' })
const SSE_HEADERS = Object.freeze({
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
})
const KEEPALIVE_MS = 15000

let addon
function loadAddon() {
  if (!addon) addon = require('../index.js')
  return addon
}

/**
 * The process-wide SessionManager, created on the first call with `options` and kept on
 * `globalThis` under a registered symbol, so Next's dev-mode hot reload (which re-evaluates your
 * modules) and several route modules all share one manager. Later calls return the same manager
 * and ignore `options`.
 */
function getSessionManager(options, { closeOnSignals: onSignals = true } = {}) {
  const existing = globalThis[MANAGER_KEY]
  if (existing) return existing
  const { SessionManager } = loadAddon()
  const manager = new SessionManager(options)
  Object.defineProperty(globalThis, MANAGER_KEY, { value: manager, configurable: true, writable: true, enumerable: false })
  // A deploy stops the server with SIGTERM: tasks end recorded as aborted, nothing left running.
  if (onSignals) {
    const remove = require('../shutdown/index.js').closeOnSignals(manager)
    Object.defineProperty(globalThis, SIGNALS_KEY, { value: remove, configurable: true, writable: true, enumerable: false })
  }
  return manager
}

/** Closes the shared manager (if one was made) and forgets it; the next `getSessionManager` makes a new one. */
async function closeSessionManager() {
  const manager = globalThis[MANAGER_KEY]
  if (!manager) return
  delete globalThis[MANAGER_KEY]
  if (typeof globalThis[SIGNALS_KEY] === 'function') globalThis[SIGNALS_KEY]()
  delete globalThis[SIGNALS_KEY]
  await manager.close()
}

/** An error the routes answer with a fixed status and code. */
class RouteError extends Error {
  constructor(status, code, message) {
    super(message)
    this.name = 'RouteError'
    this.status = status
    this.code = code
  }
}

const badRequest = (message) => new RouteError(400, 'INVALID_ARGUMENT', message)

/** The HTTP status the routes use for an error code. */
function statusForCode(code) {
  return STATUS_BY_CODE[code] || 500
}

function json(data, status = 200) {
  return new Response(JSON.stringify(data), { status, headers: JSON_HEADERS })
}

/** `{ code, message }` for an error, with private messages hidden (see PRIVATE_CODES). */
function errorBody(error) {
  const code = error && typeof error.code === 'string' && error.code ? error.code : 'INTERNAL'
  const status = error instanceof RouteError ? error.status : statusForCode(code)
  const hasOwnCode = Boolean(error && typeof error.code === 'string' && error.code)
  const hide = status >= 500 && (!hasOwnCode || PRIVATE_CODES.has(code))
  const message = hide
    ? `the server could not complete the request (${code})`
    : String((error && error.message) || code)
  return { status, body: { code, message } }
}

function errorResponse(error, request, onError) {
  const { status, body } = errorBody(error)
  if (status >= 500 && status !== 501 && onError) {
    try {
      onError(error, request)
    } catch {}
  }
  return json({ error: body }, status)
}

/** The body as text, read chunk by chunk from `request.body` and abandoned (413) as soon as it
 * exceeds `limit` bytes; a `content-length` over the limit is refused before reading anything. */
async function readBodyText(request, limit) {
  const tooLarge = () => new RouteError(413, 'PAYLOAD_TOO_LARGE', `the request body is larger than the limit of ${limit} bytes`)
  const declared = request.headers.get('content-length')
  if (declared !== null && /^\s*\d+\s*$/.test(declared) && Number(declared) > limit) {
    if (request.body && !request.body.locked) request.body.cancel().catch(() => {})
    throw tooLarge()
  }
  const body = request.body
  if (!body) return ''
  let reader
  try {
    reader = body.getReader()
  } catch {
    throw badRequest('the request body could not be read')
  }
  const decoder = new TextDecoder()
  const encoder = new TextEncoder()
  let total = 0
  let text = ''
  for (;;) {
    let chunk
    try {
      chunk = await reader.read()
    } catch {
      throw badRequest('the request body could not be read')
    }
    if (chunk.done) break
    const bytes = typeof chunk.value === 'string' ? encoder.encode(chunk.value) : chunk.value
    total += bytes.byteLength
    if (total > limit) {
      reader.cancel().catch(() => {})
      throw tooLarge()
    }
    text += decoder.decode(bytes, { stream: true })
  }
  return text + decoder.decode()
}

/** Reads the body as one JSON object of at most `limit` bytes. Requires a JSON content type: a
 * cross-site form cannot send one without a CORS preflight, which keeps cookie-authenticated
 * routes safe from CSRF. */
async function readJsonObject(request, limit) {
  const type = (request.headers.get('content-type') || '').toLowerCase()
  // Exactly `application/json`, with at most a UTF-8 charset: not `application/x-evil+json`, not
  // `charset=utf-16` (the body is read as UTF-8).
  if (!/^application\/json\s*(;\s*charset\s*=\s*"?utf-8"?\s*)?$/.test(type)) {
    throw badRequest(`the request body must be JSON sent with "content-type: application/json" (optionally "; charset=utf-8"; got ${type ? `"${type}"` : 'no content type'})`)
  }
  const text = await readBodyText(request, limit)
  if (!text.trim()) throw badRequest('the request body is empty; expected a JSON object')
  let value
  try {
    value = JSON.parse(text)
  } catch (e) {
    throw badRequest(`the request body is not valid JSON: ${e.message}`)
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw badRequest('the request body must be a JSON object')
  if (Object.prototype.hasOwnProperty.call(value, 'userId')) {
    throw badRequest('userId must not be in the request body: the user comes from authentication')
  }
  return value
}

/** Only `allowed` keys of `body` (plus `ignore`); anything else is a 400. */
function only(body, allowed, what, ignore = []) {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key) && !ignore.includes(key)) {
      throw badRequest(`${what}: unknown or not allowed field "${key}" (allowed: ${allowed.join(', ') || 'none'})`)
    }
  }
  const out = {}
  for (const key of allowed) if (body[key] !== undefined) out[key] = body[key]
  return out
}

function queryNumber(params, name) {
  const raw = params.get(name)
  if (raw === null) return undefined
  return raw.trim() === '' ? Number.NaN : Number(raw) // NaN is rejected by the addon as INVALID_ARGUMENT
}

function requiredQuery(params, name) {
  const value = params.get(name)
  if (value === null || value === '') throw badRequest(`the "${name}" query parameter is required`)
  return value
}

/**
 * What the routes pass to the addon as `signal`. The addon (0.1.0) calls
 * `signal.addEventListener(['abort', listener])` — one array argument instead of two (its napi
 * `Function::apply` is given a tuple, which napi-rs v3 converts to one array; multiple arguments
 * need `FnArgs`) — so with a real AbortSignal it throws and the task rejects with
 * "cannot listen to signal". This adapter accepts both forms and forwards to the real signal.
 */
function addonSignal(signal) {
  if (!signal) return undefined
  return {
    get aborted() {
      return signal.aborted
    },
    addEventListener(type, listener) {
      if (Array.isArray(type)) [type, listener] = type
      if (typeof listener === 'function') signal.addEventListener(type, () => listener(), { once: true })
    },
    removeEventListener() {},
  }
}

/** An event as the browser may see it: the CLI's `system`/`init` event reduced to
 * INIT_EVENT_FIELDS, and SERVER_DETAIL_FIELDS dropped from every other event (and from the
 * lines a `background_activity` event carries). */
function publicEvent(event) {
  if (!event || typeof event !== 'object' || Array.isArray(event)) return event
  // The CLI's own turns (a background job finishing), delivered with the next task: each line
  // made public the same way.
  if (event.type === 'background_activity' && Array.isArray(event.events)) return { ...event, events: event.events.map(publicEvent) }
  if (event.type === 'system' && event.subtype === 'init') {
    const out = {}
    for (const key of INIT_EVENT_FIELDS) if (event[key] !== undefined) out[key] = event[key]
    return out
  }
  let out = event
  for (const key of Object.keys(event)) {
    if (!SERVER_DETAIL_FIELDS.has(key)) continue
    if (out === event) out = { ...event }
    delete out[key]
  }
  return out
}

/** A session as the browser may see it: without its server-side `workingDirectory`. */
function publicSession(session) {
  if (!session || typeof session !== 'object' || !('workingDirectory' in session)) return session
  const { workingDirectory: _workingDirectory, ...rest } = session
  return rest
}

/** `out` with its `session` / `sessions` made public. */
function publicSessions(out) {
  if (!out || typeof out !== 'object') return out
  const copy = { ...out }
  if (copy.session) copy.session = publicSession(copy.session)
  if (Array.isArray(copy.sessions)) copy.sessions = copy.sessions.map(publicSession)
  return copy
}

/** Category kinds of the CLI's context breakdown (`get_context_usage`). */
const CONTEXT_KINDS = new Set(['used', 'deferred', 'buffer', 'free'])

const finiteOr = (value, fallback) => (typeof value === 'number' && Number.isFinite(value) ? value : fallback)

/**
 * `SessionManager.getContextUsage` as the browser may see it: `{ source, categories: [{ id, name,
 * tokens, kind }], total, window, percentage }` — the CLI's categories and totals, or the stored
 * meter's totals (no categories). Built from those fields alone: the rest of the CLI's answer
 * names memory files, agents and skills by their paths on the server. With `exposeServerDetails`
 * the answer as it came is added as `raw`.
 */
function publicContextUsage(out, exposeServerDetails) {
  let view
  if (out && out.source === 'cli' && out.usage && typeof out.usage === 'object') {
    const u = out.usage
    const categories = (Array.isArray(u.categories) ? u.categories : [])
      .filter((c) => c && typeof c.name === 'string' && typeof c.tokens === 'number' && Number.isFinite(c.tokens))
      .map((c) => ({ id: typeof c.id === 'string' ? c.id : c.name, name: c.name, tokens: c.tokens, kind: CONTEXT_KINDS.has(c.kind) ? c.kind : 'used' }))
    view = { source: 'cli', categories, total: finiteOr(u.totalTokens, 0), window: finiteOr(u.maxTokens, 0), percentage: finiteOr(u.percentage, 0) }
  } else {
    const c = (out && out.contextInfo) || {}
    view = { source: 'store', categories: [], total: finiteOr(c.estimatedTokens, 0), window: finiteOr(c.maxTokens, 0), percentage: finiteOr(c.usagePercentage, 0) }
  }
  if (exposeServerDetails) view.raw = out && out.source === 'cli' ? out.usage : out && out.contextInfo
  return view
}

function sseFrame(event, data, id) {
  let frame = ''
  if (event) frame += `event: ${event}\n`
  if (id !== undefined) frame += `id: ${id}\n`
  return `${frame}data: ${JSON.stringify(data)}\n\n`
}

/**
 * Route handlers for the HTTP API, over one SessionManager. Each handler is
 * `(request: Request) => Promise<Response>`, so a route file is one line:
 *
 *   export const { POST } = routes.task
 */
function createClaudeRoutes(options) {
  if (!options || typeof options.getUserId !== 'function') {
    throw new TypeError('createClaudeRoutes: the getUserId(request) option is required (your authentication)')
  }
  const { getUserId, manager, taskDefaults = {}, clientTaskFields = DEFAULT_CLIENT_TASK_FIELDS, allowedModels, maxBodyBytes = DEFAULT_MAX_BODY_BYTES } = options
  const exposeServerDetails = options.exposeServerDetails === true
  const permissionPrompts = options.permissionPrompts === true
  const onError = options.onError === undefined ? (error) => console.error('[claude-session-manager/next]', error) : options.onError
  if (manager !== undefined && manager !== null && typeof manager !== 'function' && typeof manager !== 'object') {
    throw new TypeError('createClaudeRoutes: manager must be a SessionManager or a function returning one')
  }
  if (!taskDefaults || typeof taskDefaults !== 'object' || Array.isArray(taskDefaults)) {
    throw new TypeError('createClaudeRoutes: taskDefaults must be an object')
  }
  if (clientTaskFields !== 'all' && !Array.isArray(clientTaskFields)) {
    throw new TypeError("createClaudeRoutes: clientTaskFields must be an array of field names or 'all'")
  }
  if (allowedModels !== undefined && allowedModels !== 'any' && !(Array.isArray(allowedModels) && allowedModels.every((m) => typeof m === 'string' && m !== ''))) {
    throw new TypeError("createClaudeRoutes: allowedModels must be an array of model names (or 'any')")
  }
  if (typeof maxBodyBytes !== 'number' || Number.isNaN(maxBodyBytes) || maxBodyBytes <= 0) {
    throw new TypeError('createClaudeRoutes: maxBodyBytes must be a positive number of bytes')
  }
  // `model` (and `fallbackModel`) are governed by allowedModels alone.
  const modelPolicy = allowedModels === undefined ? null : allowedModels === 'any' ? 'any' : Array.from(allowedModels)
  if (clientTaskFields !== 'all' && clientTaskFields.includes('model') && modelPolicy === null) {
    throw new TypeError("createClaudeRoutes: clientTaskFields lists 'model' but allowedModels is not set: list the models clients may choose in allowedModels (or 'any')")
  }
  let clientFields = null
  if (clientTaskFields !== 'all') {
    clientFields = Array.from(clientTaskFields)
    if (modelPolicy !== null && !clientFields.includes('model')) clientFields.push('model')
  }
  const readBody = (request) => readJsonObject(request, maxBodyBytes)

  const resolveManager = async () => {
    if (manager == null) return getSessionManager()
    if (typeof manager === 'function') return await manager()
    return manager
  }

  const authenticate = async (request) => {
    const userId = await getUserId(request)
    if (userId === undefined || userId === null || userId === '' || userId === false) {
      throw new RouteError(401, 'UNAUTHORIZED', 'authentication required')
    }
    if (typeof userId !== 'string' && typeof userId !== 'number') {
      throw new TypeError(`getUserId must return a string (or null for "not signed in"), got ${typeof userId}`)
    }
    return String(userId)
  }

  /** Wraps a handler body: authentication first, then errors mapped to JSON responses. */
  const route = (fn) =>
    async function claudeRouteHandler(request) {
      try {
        const userId = await authenticate(request)
        return await fn(request, userId)
      } catch (error) {
        if (error instanceof Response) return error // getUserId may throw a ready response (redirect, 403, ...)
        return errorResponse(error, request, onError)
      }
    }

  /** A TaskResult as the answer: 200, also for a task that failed (`success: false`), except
   * `AUTH_ERROR` (no API key reached the CLI, or the API refused it), which is the server's
   * configuration: 503 with the same body (its `error.code` / `error.message` say what to set),
   * and reported to `onError`. */
  const taskResponse = (result, request) => {
    const code = result && result.error && result.error.code
    const status = code === 'AUTH_ERROR' ? statusForCode(code) : 200
    if (status >= 500 && onError) {
      try {
        onError(Object.assign(new Error(result.error.message), { code }), request)
      } catch {}
    }
    return json(result, status)
  }

  /** The client's task fields merged with taskDefaults (see ClaudeRoutesOptions.taskDefaults). */
  const taskRequest = (body, userId) => {
    if (clientFields) {
      for (const key of Object.keys(body)) {
        if (key === 'model' && modelPolicy === null) continue // refused below, with a clearer message
        if (!clientFields.includes(key)) {
          throw badRequest(`task: the client may not set "${key}" (allowed: ${clientFields.join(', ')}); set server-side values with taskDefaults`)
        }
      }
    }
    for (const key of MODEL_FIELDS) {
      const value = body[key]
      if (value === undefined || !Object.prototype.hasOwnProperty.call(body, key)) continue
      if (modelPolicy === null) {
        throw badRequest(`task: the client may not choose the model ("${key}"); the server sets it (taskDefaults.model), or lists the models clients may choose with the allowedModels option`)
      }
      if (modelPolicy !== 'any' && (typeof value !== 'string' || !modelPolicy.includes(value))) {
        throw badRequest(`task: ${key} ${JSON.stringify(value)} is not allowed (allowed models: ${modelPolicy.join(', ') || 'none'})`)
      }
    }
    const task = { ...body }
    for (const key of Object.keys(taskDefaults)) {
      const serverValue = taskDefaults[key]
      if (serverValue === undefined || key === 'userId') continue
      const clientValue = task[key]
      if (clientValue === undefined) {
        task[key] = serverValue
      } else if (LIMIT_FIELDS.includes(key) && typeof serverValue === 'number') {
        // A server limit is a cap: the client may ask for less, never for more.
        if (typeof clientValue !== 'number' || !Number.isFinite(clientValue)) throw badRequest(`task: ${key} must be a number`)
        task[key] = Math.min(clientValue, serverValue)
      } else if (MODEL_FIELDS.includes(key) && modelPolicy !== null) {
        // The client's model, already checked against allowedModels, replaces the server's default.
      } else {
        task[key] = serverValue // the server's value wins
      }
    }
    task.userId = userId
    return task
  }

  // POST /api/claude/task — run a task, answer with the TaskResult.
  const taskPOST = route(async (request, userId) => {
    const task = taskRequest(await readBody(request), userId)
    const m = await resolveManager()
    return taskResponse(await m.executeTask(task, { signal: addonSignal(request.signal) }), request)
  })

  // POST /api/claude/stream — run a task and forward its events as Server-Sent Events.
  const streamPOST = route(async (request, userId) => {
    const task = taskRequest(await readBody(request), userId)
    if (task.includePartialMessages === undefined) task.includePartialMessages = true
    const m = await resolveManager()

    const abort = new AbortController()
    const onClientGone = () => abort.abort()
    if (request.signal) {
      if (request.signal.aborted) abort.abort()
      else request.signal.addEventListener('abort', onClientGone, { once: true })
    }
    const encoder = new TextEncoder()
    const pending = []
    let controller = null
    let closed = false
    let nextId = 0
    const push = (text) => {
      if (closed) return
      if (!controller) return void pending.push(text)
      try {
        controller.enqueue(encoder.encode(text))
      } catch {
        closed = true
      }
    }
    const send = exposeServerDetails ? (event) => event : publicEvent
    let markAccepted
    const accepted = new Promise((resolve) => (markAccepted = resolve))
    let sessionId = typeof task.sessionId === 'string' ? task.sessionId : null
    const onEvent = (event) => {
      if (event && typeof event.sessionId === 'string' && (event.type === 'task_queued' || event.type === 'task_started')) sessionId = event.sessionId
      push(sseFrame(null, send(event), nextId++))
      markAccepted()
    }
    // A tool that needs permission: a `permission_request` event, answered by POST /permission
    // from the same user through the manager's `respondToPermission` (on this server, or on
    // another one sharing the store), which settles the request and aborts this callback's
    // signal; `permission_cancelled` when it aborts without an answer given on this server: the
    // task was aborted, nobody decided within the manager's permissionTimeoutMs (the answer is
    // then deny), or it was answered through another server. The callback itself never decides.
    const canUseTool = (toolName, input, { signal, suggestions, toolUseID, requestId }) =>
      new Promise((resolve) => {
        const id = typeof requestId === 'string' && requestId ? requestId : crypto.randomUUID()
        push(sseFrame('permission_request', { requestId: id, sessionId, toolName, input, suggestions, toolUseID }, nextId++))
        signal.addEventListener(
          'abort',
          () => {
            if (!answeredHere().delete(answerKey(userId, sessionId, id))) push(sseFrame('permission_cancelled', { requestId: id, sessionId }, nextId++))
            resolve({ behavior: 'deny', message: 'the permission request was withdrawn' })
          },
          { once: true },
        )
      })
    let run
    try {
      const hooks = { onEvent, signal: addonSignal(abort.signal) }
      if (permissionPrompts) hooks.canUseTool = canUseTool
      run = Promise.resolve(m.executeTask(task, hooks))
    } catch (error) {
      if (request.signal) request.signal.removeEventListener('abort', onClientGone)
      throw error
    }
    // Answer as soon as the manager has accepted the task: its first event (`task_queued`) comes
    // once the request is validated and the session found, before the task waits for its session
    // or a slot. A request refused before that (bad arguments, someone else's session, a prompt
    // too long) still gets its 400/404/413; a refusal after it (SESSION_BUSY once queueTimeoutMs
    // has passed) is an `error` event.
    const first = await Promise.race([accepted.then(() => null), run.then(() => null, (error) => ({ error }))])
    if (first) {
      if (request.signal) request.signal.removeEventListener('abort', onClientGone)
      throw first.error
    }
    let keepalive
    const stream = new ReadableStream({
      start(c) {
        controller = c
        for (const text of pending.splice(0)) push(text)
        keepalive = setInterval(() => push(': keep-alive\n\n'), KEEPALIVE_MS)
        if (keepalive.unref) keepalive.unref()
        run
          .then(
            (result) => {
              // The server's key is missing or refused: reported like a 5xx (see taskResponse).
              if (result && result.error && result.error.code === 'AUTH_ERROR' && onError) {
                try {
                  onError(Object.assign(new Error(result.error.message), { code: 'AUTH_ERROR' }), request)
                } catch {}
              }
              push(sseFrame('result', result, nextId++))
            },
            (error) => {
              const { status, body } = errorBody(error)
              if (status >= 500 && onError) onError(error, request)
              push(sseFrame('error', { error: { ...body, status } }, nextId++))
            },
          )
          .finally(() => {
            clearInterval(keepalive)
            if (request.signal) request.signal.removeEventListener('abort', onClientGone)
            if (!closed) {
              closed = true
              try {
                c.close()
              } catch {}
            }
          })
      },
      cancel() {
        // The client went away: stop the CLI.
        closed = true
        clearInterval(keepalive)
        abort.abort()
      },
    })
    return new Response(stream, { status: 200, headers: SSE_HEADERS })
  })

  // GET /api/claude/session — ?sessionId=… one session; otherwise the list (?projectId, status,
  // parentId, limit, offset).
  const sessionGET = route(async (request, userId) => {
    const params = new URL(request.url).searchParams
    const m = await resolveManager()
    const sessionId = params.get('sessionId')
    const out = exposeServerDetails ? (data) => json(data) : (data) => json(publicSessions(data))
    if (sessionId !== null) return out({ session: await m.getSession(sessionId, userId) })
    const filter = { userId }
    for (const key of ['projectId', 'status', 'parentId']) {
      const value = params.get(key)
      if (value !== null) filter[key] = value
    }
    for (const key of ['limit', 'offset']) {
      const value = queryNumber(params, key)
      if (value !== undefined) filter[key] = value
    }
    return out({ sessions: await m.listSessions(filter) })
  })

  const sessionActions = {
    getOrCreate: async (m, b, userId) => m.getOrCreateSession({ ...only(b, ['projectId', 'preferActive'], 'getOrCreate', ['action']), userId }),
    startFresh: async (m, b, userId) => m.startFresh({ ...only(b, ['projectId', 'sessionId'], 'startFresh', ['action']), userId }),
    cleanup: async (m, b, userId) => m.cleanupSessions({ ...only(b, ['projectId', 'maxAgeMs', 'keepActive'], 'cleanup', ['action']), userId }),
    fork: async (m, b, userId) => ({ session: await m.fork({ ...only(b, ['sessionId', 'title'], 'fork', ['action']), userId }) }),
    archive: async (m, b, userId) => {
      const { sessionId } = only(b, ['sessionId'], 'archive', ['action'])
      return { session: await m.archiveSession(sessionId, userId) }
    },
    delete: async (m, b, userId) => {
      const { sessionId } = only(b, ['sessionId'], 'delete', ['action'])
      await m.deleteSession(sessionId, userId)
      return { deleted: true, sessionId }
    },
    messages: async (m, b, userId) => {
      const { sessionId, ...page } = only(b, ['sessionId', 'limit', 'offset'], 'messages', ['action'])
      if (typeof m.getMessages !== 'function') {
        // Check ownership first, so the answer for someone else's session stays a 404.
        await m.getSession(sessionId, userId)
        throw new RouteError(501, 'NOT_IMPLEMENTED', 'this version of claude-session-manager cannot replay a session\'s messages (SessionManager.getMessages is missing)')
      }
      const out = await m.getMessages(sessionId, userId, page)
      return Array.isArray(out) ? { messages: out } : out
    },
    tasks: async (m, b, userId) => {
      const { sessionId } = only(b, ['sessionId'], 'tasks', ['action'])
      return { tasks: await m.listTasks(sessionId, userId) }
    },
  }
  const actionNames = Object.keys(sessionActions)

  // POST /api/claude/session — { action, ... }.
  const sessionPOST = route(async (request, userId) => {
    const body = await readBody(request)
    const action = body.action
    if (typeof action !== 'string' || !Object.prototype.hasOwnProperty.call(sessionActions, action)) {
      throw badRequest(`"action" must be one of ${actionNames.join(', ')}`)
    }
    const m = await resolveManager()
    const out = await sessionActions[action](m, body, userId)
    return json(exposeServerDetails ? out : publicSessions(out))
  })

  // GET /api/claude/compact?sessionId=…[&threshold=…] — the context meter.
  const compactGET = route(async (request, userId) => {
    const params = new URL(request.url).searchParams
    const sessionId = requiredQuery(params, 'sessionId')
    const threshold = queryNumber(params, 'threshold')
    const m = await resolveManager()
    const context = await m.getSessionContext(sessionId, userId, threshold === undefined ? undefined : { threshold })
    return json({ context })
  })

  // POST /api/claude/compact — { sessionId, summaryInstructions? } → the compaction's TaskResult.
  const compactPOST = route(async (request, userId) => {
    const body = only(await readBody(request), ['sessionId', 'summaryInstructions'], 'compact')
    const m = await resolveManager()
    return taskResponse(await m.compactSession({ ...body, userId }, { signal: addonSignal(request.signal) }), request)
  })

  // POST /api/claude/permission — { sessionId, requestId, behavior, message?, updatedInput?,
  // interrupt?, remember? }: the user's answer to a `permission_request` event of their own
  // stream, through the manager's `respondToPermission` (which checks it, and forwards it to the
  // server running the task if that is another one; it never takes `updatedPermissions`).
  const permissionPOST = route(async (request, userId) => {
    const b = only(await readBody(request), ['sessionId', 'requestId', 'behavior', 'message', 'updatedInput', 'interrupt', 'remember'], 'permission')
    if (typeof b.sessionId !== 'string' || typeof b.requestId !== 'string') throw badRequest('permission: sessionId and requestId must be strings')
    const m = await resolveManager()
    const key = answerKey(userId, b.sessionId, b.requestId)
    answeredHere().add(key)
    try {
      await m.respondToPermission({ ...b, userId })
    } catch (error) {
      answeredHere().delete(key)
      // Someone else's session answers exactly like a request that does not exist.
      if (error && error.code === 'SESSION_NOT_FOUND') throw new RouteError(404, 'PERMISSION_REQUEST_NOT_FOUND', `no pending permission request ${b.requestId} in session ${b.sessionId}`)
      throw error
    }
    // Answered through the store for a stream of another server: no abort will come here.
    setTimeout(() => answeredHere().delete(key), 60_000).unref?.()
    return json({ ok: true, requestId: b.requestId, behavior: b.behavior })
  })

  // POST /api/claude/message — { sessionId, prompt }: a message for the task running on the
  // user's session (steering); the model sees it in that task.
  const messagePOST = route(async (request, userId) => {
    const b = only(await readBody(request), ['sessionId', 'prompt'], 'message')
    if (typeof b.sessionId !== 'string' || b.sessionId === '') throw badRequest('message: sessionId must be a non-empty string')
    if (typeof b.prompt !== 'string' || !b.prompt.trim()) throw badRequest('message: prompt must be a non-empty string')
    const m = await resolveManager()
    await m.sendMessage({ sessionId: b.sessionId, userId, prompt: b.prompt })
    return json({ ok: true, sessionId: b.sessionId })
  })

  // GET /api/claude/context?sessionId=… — the context breakdown (see publicContextUsage).
  const contextGET = route(async (request, userId) => {
    const sessionId = requiredQuery(new URL(request.url).searchParams, 'sessionId')
    const m = await resolveManager()
    return json({ contextUsage: publicContextUsage(await m.getContextUsage(sessionId, userId), exposeServerDetails) })
  })

  return {
    task: { POST: taskPOST },
    stream: { POST: streamPOST },
    session: { GET: sessionGET, POST: sessionPOST },
    compact: { GET: compactGET, POST: compactPOST },
    permission: { POST: permissionPOST },
    message: { POST: messagePOST },
    context: { GET: contextGET },
  }
}

module.exports = {
  createClaudeRoutes,
  getSessionManager,
  closeSessionManager,
  statusForCode,
  DEFAULT_CLIENT_TASK_FIELDS,
  DEFAULT_MAX_BODY_BYTES,
  RouteError,
}
