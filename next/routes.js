'use strict'
// claude-session-manager/next: one function per route, `(ctx, request, userId) => Response`.
// `ctx` is what createClaudeRoutes (./index.js) made of its options: `resolveManager`, `readBody`,
// `exposeServerDetails`, `permissionPrompts`, `onError`, `taskDefaults`, `clientFields`,
// `modelPolicy`. Authentication and the mapping of errors to responses are index.js's.

const { RouteError, badRequest, statusForCode, json, errorBody, only, queryNumber, requiredQuery, addonSignal, sseFrame, SSE_HEADERS, KEEPALIVE_MS } = require('./http.js')
const { publicEvent, publicSessions, publicContextUsage } = require('./public.js')

/** Numeric task limits: a value the server sets in `taskDefaults` is a cap the client may only lower. */
const LIMIT_FIELDS = Object.freeze(['maxTurns', 'timeoutMs', 'maxBudgetUsd'])

/** Task fields that name a model: the client may send them only with `allowedModels`. */
const MODEL_FIELDS = Object.freeze(['model', 'fallbackModel'])

// Permission requests answered through this server's POST /permission (user, session and
// request id), shared by every route module of the process: their stream sends no
// `permission_cancelled` when the manager then withdraws them from the callback.
const ANSWERED_KEY = Symbol.for('claude-session-manager.next.answered')
const answeredHere = () => (globalThis[ANSWERED_KEY] ??= new Set())
const answerKey = (userId, sessionId, requestId) => JSON.stringify([userId, sessionId, requestId])

/** A TaskResult as the answer: 200, also for a task that failed (`success: false`), except
 * `AUTH_ERROR` (no API key reached the CLI, or the API refused it), which is the server's
 * configuration: 503 with the same body (its `error.code` / `error.message` say what to set),
 * and reported to `onError`. */
function taskResponse(ctx, result, request) {
  const { onError } = ctx
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
function taskRequest(ctx, body, userId) {
  const { clientFields, modelPolicy, taskDefaults } = ctx
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
async function taskPOST(ctx, request, userId) {
  const { resolveManager, readBody } = ctx
  const task = taskRequest(ctx, await readBody(request), userId)
  const m = await resolveManager()
  return taskResponse(ctx, await m.executeTask(task, { signal: addonSignal(request.signal) }), request)
}

// POST /api/claude/stream — run a task and forward its events as Server-Sent Events.
async function streamPOST(ctx, request, userId) {
  const { resolveManager, readBody, exposeServerDetails, permissionPrompts, onError, abortOnDisconnect } = ctx
  const task = taskRequest(ctx, await readBody(request), userId)
  if (task.includePartialMessages === undefined) task.includePartialMessages = true
  const m = await resolveManager()
  // A manager with an event log: the task's events come from it (each with `id: <seq>`), and the
  // task outlives this connection unless abortOnDisconnect.
  const logged = typeof m.streamEvents === 'function'

  const abort = new AbortController()
  const onClientGone = () => abort.abort()
  if (request.signal && (abortOnDisconnect || !logged)) {
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
  let markStarted
  const started = new Promise((resolve) => (markStarted = resolve))
  const onEvent = (event) => {
    if (event && typeof event.sessionId === 'string' && (event.type === 'task_queued' || event.type === 'task_started')) sessionId = event.sessionId
    if (event && event.type === 'task_started') markStarted(event)
    if (!logged) push(sseFrame(null, send(event), nextId++))
    else if (event && event.type === 'task_queued') push(sseFrame(null, send(event)))
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
      // With an event log, the request and its settling are frames of the log.
      if (logged) return signal.addEventListener('abort', () => resolve({ behavior: 'deny', message: 'the permission request was withdrawn' }), { once: true })
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
  // The log's iterator: its `return()` ends the reader (the EventStream itself has none).
  let frames = null
  // The log is read one frame per read of the response (see logResponse): `demand` resolves
  // when the client has read what was sent.
  let wanted = null
  const demand = () => (closed || controller.desiredSize > 0 ? null : new Promise((resolve) => (wanted = resolve)))
  const wake = () => {
    const w = wanted
    wanted = null
    if (w) w()
  }
  const stream = new ReadableStream({
    start(c) {
      controller = c
      for (const text of pending.splice(0)) push(text)
      keepalive = setInterval(() => controller.desiredSize > 0 && push(': keep-alive\n\n'), KEEPALIVE_MS)
      if (keepalive.unref) keepalive.unref()
      // With an event log: the task's events from its first, once it started; the run's own
      // result only when it ended before that (aborted while queued, SESSION_BUSY).
      const source = !logged
        ? run
        : Promise.race([started, run.then(() => null, () => null)]).then(async (s) => {
            if (!s || closed) return run
            const events = await m.streamEvents({ sessionId: s.sessionId, userId, taskId: s.taskId, exposeServerDetails: Boolean(exposeServerDetails) })
            frames = events[Symbol.asyncIterator]()
            for (;;) {
              await demand()
              if (closed) {
                frames.return?.()
                return LOGGED
              }
              const { value, done } = await frames.next()
              if (done) return LOGGED
              push(logFrame(ctx, request, value))
            }
          })
      source
        .then(
          (result) => {
            if (result === LOGGED) return
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
    pull() {
      wake()
    },
    cancel() {
      // The client went away: stop reading; the CLI stops only with abortOnDisconnect (or
      // without an event log, where nobody could follow the task any more).
      closed = true
      wake()
      clearInterval(keepalive)
      frames?.return?.()
      if (abortOnDisconnect || !logged) abort.abort()
    },
  })
  return new Response(stream, { status: 200, headers: SSE_HEADERS })
}

/** Returned by the logged stream's source: its frames are sent already. */
const LOGGED = Symbol('logged')

/** One event of the log as an SSE frame with `id: <seq>`: the task's end is the `result` (or
 * `error`) frame, permission requests and their settling are frames of their own. */
function logFrame(ctx, request, { seq, event }) {
  const type = event && event.type
  if (type === 'permission_request') {
    const { requestId, sessionId, toolName, input, suggestions, toolUseID } = event
    return sseFrame('permission_request', { requestId, sessionId, toolName, input, suggestions, toolUseID }, seq)
  }
  if (type === 'permission_resolved') return sseFrame(event.behavior === 'withdrawn' ? 'permission_cancelled' : 'permission_resolved', { requestId: event.requestId, sessionId: event.sessionId, behavior: event.behavior }, seq)
  if (type === 'events_truncated') return sseFrame('events_truncated', event, seq)
  if (type === 'task_end' && event.result) {
    const code = event.result.error && event.result.error.code
    if (code === 'AUTH_ERROR' && ctx.onError) {
      try {
        ctx.onError(Object.assign(new Error(event.result.error.message), { code }), request)
      } catch {}
    }
    return sseFrame('result', event.result, seq)
  }
  if (type === 'task_end') return sseFrame('error', { error: { ...event.error, status: statusForCode(event.error && event.error.code) } }, seq)
  return sseFrame(null, ctx.exposeServerDetails ? event : publicEvent(event), seq)
}

/** A response streaming a session's log from `events` (an EventStream) as SSE, one frame per
 * read of the response: the log is the buffer, so a client that reads slowly, or never, holds no
 * more than a frame here (and the EventStream's page). */
function logResponse(ctx, request, events) {
  const encoder = new TextEncoder()
  const frames = events[Symbol.asyncIterator]()
  let keepalive
  let ended = false
  const end = (c) => {
    if (ended) return
    ended = true
    clearInterval(keepalive)
    try {
      c.close()
    } catch {}
  }
  const stream = new ReadableStream({
    start(c) {
      // For a quiet stream, not a full one: only when the client has read what was sent.
      keepalive = setInterval(() => c.desiredSize > 0 && c.enqueue(encoder.encode(': keep-alive\n\n')), KEEPALIVE_MS)
      if (keepalive.unref) keepalive.unref()
    },
    async pull(c) {
      if (ended) return
      try {
        const { value, done } = await frames.next()
        if (done) return end(c)
        if (!ended) c.enqueue(encoder.encode(logFrame(ctx, request, value)))
      } catch (error) {
        const { status, body } = errorBody(error)
        try {
          c.enqueue(encoder.encode(sseFrame('error', { error: { ...body, status } })))
        } catch {}
        end(c)
      }
    },
    cancel() {
      ended = true
      clearInterval(keepalive)
      frames.return?.()
    },
  })
  return new Response(stream, { status: 200, headers: SSE_HEADERS })
}

// GET /api/claude/stream?sessionId=…[&after=<seq>] (or the `Last-Event-ID` header) — resumes a
// session's stream right after that event, on any server sharing the store: the events since,
// then the running task's live ones to its end (at once when nothing runs). Without either,
// the running task's stream from its first event, or 204 when nothing runs.
async function streamGET(ctx, request, userId) {
  const params = new URL(request.url).searchParams
  const sessionId = requiredQuery(params, 'sessionId')
  const header = request.headers.get('last-event-id')
  const after = header !== null ? (header.trim() === '' ? Number.NaN : Number(header)) : queryNumber(params, 'after')
  const m = await ctx.resolveManager()
  const exposeServerDetails = Boolean(ctx.exposeServerDetails)
  if (after !== undefined) return logResponse(ctx, request, await m.streamEvents({ sessionId, userId, after, exposeServerDetails }, { signal: addonSignal(request.signal) }))
  const running = await m.getRunningTask({ sessionId, userId })
  if (!running) return new Response(null, { status: 204 })
  return logResponse(ctx, request, await m.streamEvents({ sessionId, userId, taskId: running.taskId, exposeServerDetails }, { signal: addonSignal(request.signal) }))
}

// DELETE /api/claude/stream?sessionId=… — stops the task running on the user's session, on
// whichever server runs it: `{ aborted }` (false when nothing ran).
async function streamDELETE(ctx, request, userId) {
  const sessionId = requiredQuery(new URL(request.url).searchParams, 'sessionId')
  const m = await ctx.resolveManager()
  return json({ aborted: await m.abortTask({ sessionId, userId }), sessionId })
}

// GET /api/claude/session — ?sessionId=… one session; otherwise the list (?projectId, status,
// parentId, limit, offset).
async function sessionGET(ctx, request, userId) {
  const { resolveManager, exposeServerDetails } = ctx
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
}

const sessionActions = {
  getOrCreate: async (m, b, userId) => m.getOrCreateSession({ ...only(b, ['projectId', 'preferActive'], 'getOrCreate', ['action']), userId }),
  startFresh: async (m, b, userId) => m.startFresh({ ...only(b, ['projectId', 'sessionId'], 'startFresh', ['action']), userId }),
  cleanup: async (m, b, userId) => m.cleanupSessions({ ...only(b, ['projectId', 'maxAgeMs', 'keepActive'], 'cleanup', ['action']), userId }),
  fork: async (m, b, userId) => ({ session: await m.fork({ ...only(b, ['sessionId', 'title', 'atMessageId'], 'fork', ['action']), userId }) }),
  rewind: async (m, b, userId) => m.rewind({ ...only(b, ['sessionId', 'toMessageId', 'files'], 'rewind', ['action']), userId }),
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
  // The session's CLI started before its next prompt, with the options the stream route would
  // give that task (taskDefaults, permissionPrompts): `{ status }` (see SessionManager.prewarm).
  prewarm: async (m, b, userId, ctx) => {
    const task = taskRequest(ctx, only(b, ['sessionId', 'projectId', 'model'], 'prewarm', ['action']), userId)
    if (typeof task.sessionId !== 'string') throw badRequest('prewarm: "sessionId" is required')
    if (typeof m.prewarm !== 'function') return { status: 'unsupported' }
    const request = { permissionPrompts: ctx.permissionPrompts }
    for (const key of PREWARM_FIELDS) if (task[key] !== undefined) request[key] = task[key]
    return m.prewarm(request)
  },
}
/** What a prewarm takes of a task request: the fields that decide which CLI the task runs in. */
const PREWARM_FIELDS = ['sessionId', 'userId', 'projectId', 'model', 'maxTurns', 'allowedTools', 'disallowedTools', 'permissionMode', 'appendSystemPrompt', 'fallbackModel']
const actionNames = Object.keys(sessionActions)

// POST /api/claude/session — { action, ... }.
async function sessionPOST(ctx, request, userId) {
  const { resolveManager, readBody, exposeServerDetails } = ctx
  const body = await readBody(request)
  const action = body.action
  if (typeof action !== 'string' || !Object.prototype.hasOwnProperty.call(sessionActions, action)) {
    throw badRequest(`"action" must be one of ${actionNames.join(', ')}`)
  }
  const m = await resolveManager()
  const out = await sessionActions[action](m, body, userId, ctx)
  return json(exposeServerDetails ? out : publicSessions(out))
}

// GET /api/claude/compact?sessionId=…[&threshold=…] — the context meter.
async function compactGET(ctx, request, userId) {
  const { resolveManager } = ctx
  const params = new URL(request.url).searchParams
  const sessionId = requiredQuery(params, 'sessionId')
  const threshold = queryNumber(params, 'threshold')
  const m = await resolveManager()
  const context = await m.getSessionContext(sessionId, userId, threshold === undefined ? undefined : { threshold })
  return json({ context })
}

// POST /api/claude/compact — { sessionId, summaryInstructions? } → the compaction's TaskResult.
async function compactPOST(ctx, request, userId) {
  const { resolveManager, readBody } = ctx
  const body = only(await readBody(request), ['sessionId', 'summaryInstructions'], 'compact')
  const m = await resolveManager()
  return taskResponse(ctx, await m.compactSession({ ...body, userId }, { signal: addonSignal(request.signal) }), request)
}

// POST /api/claude/permission — { sessionId, requestId, behavior, message?, updatedInput?,
// interrupt?, remember? }: the user's answer to a `permission_request` event of their own
// stream, through the manager's `respondToPermission` (which checks it, and forwards it to the
// server running the task if that is another one; it never takes `updatedPermissions`).
async function permissionPOST(ctx, request, userId) {
  const { resolveManager, readBody } = ctx
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
}

// POST /api/claude/message — { sessionId, prompt }: a message for the task running on the
// user's session (steering); the model sees it in that task.
async function messagePOST(ctx, request, userId) {
  const { resolveManager, readBody } = ctx
  const b = only(await readBody(request), ['sessionId', 'prompt'], 'message')
  if (typeof b.sessionId !== 'string' || b.sessionId === '') throw badRequest('message: sessionId must be a non-empty string')
  if (typeof b.prompt !== 'string' || !b.prompt.trim()) throw badRequest('message: prompt must be a non-empty string')
  const m = await resolveManager()
  await m.sendMessage({ sessionId: b.sessionId, userId, prompt: b.prompt })
  return json({ ok: true, sessionId: b.sessionId })
}

// GET /api/claude/context?sessionId=… — the context breakdown (see publicContextUsage).
async function contextGET(ctx, request, userId) {
  const { resolveManager, exposeServerDetails } = ctx
  const sessionId = requiredQuery(new URL(request.url).searchParams, 'sessionId')
  const m = await resolveManager()
  return json({ contextUsage: publicContextUsage(await m.getContextUsage(sessionId, userId), exposeServerDetails) })
}

module.exports = {
  taskPOST,
  streamPOST,
  streamGET,
  streamDELETE,
  sessionGET,
  sessionPOST,
  compactGET,
  compactPOST,
  permissionPOST,
  messagePOST,
  contextGET,
  MODEL_FIELDS,
}
