'use strict'
// claude-session-manager/next: HTTP plumbing of the routes: error statuses and bodies, reading a
// JSON body within a size limit, query parameters, Server-Sent Event frames, the addon's signal.

/** HTTP status of each error code the routes answer with; every other code is a 500. */
const STATUS_BY_CODE = Object.freeze({
  INVALID_ARGUMENT: 400,
  UNAUTHORIZED: 401,
  SESSION_NOT_FOUND: 404,
  PERMISSION_REQUEST_NOT_FOUND: 404,
  MESSAGE_NOT_FOUND: 404,
  // The conversation changed since the rewind: fetch the messages and rewind again.
  REWIND_REJECTED: 409,
  SESSION_BUSY: 409,
  PAYLOAD_TOO_LARGE: 413,
  // The manager refuses a prompt too long for any context window before anything runs.
  CONTEXT_OVERFLOW: 413,
  NOT_IMPLEMENTED: 501,
  // The server's API key is missing or refused: the server needs fixing, not the request.
  AUTH_ERROR: 503,
})

/** Codes whose messages may name server paths or internals: a 5xx with one of these (or with no
 * code at all) gets a generic message; the real error goes to `onError`. */
const PRIVATE_CODES = new Set(['STORE_ERROR', 'INTERNAL', 'CLI_NOT_FOUND', 'CLI_UNSUPPORTED'])

const JSON_HEADERS = Object.freeze({ 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' })
const SSE_HEADERS = Object.freeze({
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
})
const KEEPALIVE_MS = 15000

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

function sseFrame(event, data, id) {
  let frame = ''
  if (event) frame += `event: ${event}\n`
  if (id !== undefined) frame += `id: ${id}\n`
  return `${frame}data: ${JSON.stringify(data)}\n\n`
}

module.exports = {
  RouteError,
  badRequest,
  statusForCode,
  json,
  errorBody,
  errorResponse,
  readJsonObject,
  only,
  queryNumber,
  requiredQuery,
  addonSignal,
  sseFrame,
  SSE_HEADERS,
  KEEPALIVE_MS,
}
