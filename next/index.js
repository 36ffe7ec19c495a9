'use strict'
// claude-session-manager/next — Next.js App Router route handlers over one shared SessionManager.
// Plain CommonJS with no build step; the typings and the full contract are in ./index.d.ts.
//
// Server-only: this module loads the native addon (lazily, on the first request). Keep the
// package in `serverExternalPackages` and use it from route handlers (Node.js runtime, the default).

const MANAGER_KEY = Symbol.for('claude-session-manager.next.manager')
const SIGNALS_KEY = Symbol.for('claude-session-manager.next.signals')

const { RouteError, statusForCode, errorResponse, readJsonObject } = require('./http.js')
const routes = require('./routes.js')

/** Fields of a task request a client may send unless `clientTaskFields` says otherwise. `model` is
 * not one of them: a client may choose the model only from `allowedModels`. */
const DEFAULT_CLIENT_TASK_FIELDS = Object.freeze([
  'prompt',
  'projectId',
  'sessionId',
  'title',
  'forkSession',
  'atMessageId',
  'autoCompact',
  'compactThreshold',
  'maxTurns',
  'timeoutMs',
  'includePartialMessages',
])

const DEFAULT_MAX_BODY_BYTES = 1024 * 1024

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

/**
 * Route handlers for the HTTP API, over one SessionManager. Each handler is
 * `(request: Request) => Promise<Response>`, so a route file is one line:
 *
 *   export const { POST } = routes.task
 */
function createClaudeRoutes(options) {
  const ctx = routeContext(options)
  /** A route of ./routes.js as a handler: authenticated, its errors as JSON responses. */
  const handler = (fn) => authenticated(options.getUserId, ctx.onError, (request, userId) => fn(ctx, request, userId))
  return {
    task: { POST: handler(routes.taskPOST) },
    stream: { POST: handler(routes.streamPOST), GET: handler(routes.streamGET), DELETE: handler(routes.streamDELETE) },
    session: { GET: handler(routes.sessionGET), POST: handler(routes.sessionPOST) },
    compact: { GET: handler(routes.compactGET), POST: handler(routes.compactPOST) },
    permission: { POST: handler(routes.permissionPOST) },
    message: { POST: handler(routes.messagePOST) },
    context: { GET: handler(routes.contextGET) },
  }
}

/** The routes' `ctx` (see ./routes.js) from createClaudeRoutes' options, checked. */
function routeContext(options) {
  if (!options || typeof options.getUserId !== 'function') {
    throw new TypeError('createClaudeRoutes: the getUserId(request) option is required (your authentication)')
  }
  const { manager, taskDefaults = {}, clientTaskFields = DEFAULT_CLIENT_TASK_FIELDS, allowedModels, maxBodyBytes = DEFAULT_MAX_BODY_BYTES } = options
  const exposeServerDetails = options.exposeServerDetails === true
  const permissionPrompts = options.permissionPrompts === true
  const abortOnDisconnect = options.abortOnDisconnect === true
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

  return { resolveManager, readBody, exposeServerDetails, permissionPrompts, abortOnDisconnect, onError, taskDefaults, clientFields, modelPolicy }
}

/** The signed-in user's id from `getUserId` (401 without one). */
async function authenticate(getUserId, request) {
  const userId = await getUserId(request)
  if (userId === undefined || userId === null || userId === '' || userId === false) {
    throw new RouteError(401, 'UNAUTHORIZED', 'authentication required')
  }
  if (typeof userId !== 'string' && typeof userId !== 'number') {
    throw new TypeError(`getUserId must return a string (or null for "not signed in"), got ${typeof userId}`)
  }
  return String(userId)
}

/** A handler running `fn(request, userId)`: authentication first, then errors mapped to JSON responses. */
function authenticated(getUserId, onError, fn) {
  return async function claudeRouteHandler(request) {
    try {
      const userId = await authenticate(getUserId, request)
      return await fn(request, userId)
    } catch (error) {
      if (error instanceof Response) return error // getUserId may throw a ready response (redirect, 403, ...)
      return errorResponse(error, request, onError)
    }
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
