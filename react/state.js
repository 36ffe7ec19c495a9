'use strict'
// claude-session-manager/react: the hook's state, without React: errors as the API gives them,
// history as chat messages (and merged with what was sent while it loaded), and the replies of a
// running task built from its stream events. Client-safe (no React, no addon).

let localCounter = 0
const localId = (prefix) => `${prefix}-${Date.now().toString(36)}-${(localCounter++).toString(36)}`

/** An Error with the API's `code` (and the HTTP `status` when there was one, and for a spend cap's
 * `BUDGET_EXCEEDED` the cap's `scope`). */
function apiError(code, message, status, scope) {
  const e = new Error(message || code)
  e.name = 'ClaudeSessionError'
  e.code = code
  if (status !== undefined) e.status = status
  if (typeof scope === 'string') e.scope = scope
  return e
}

function asError(e) {
  if (e instanceof Error) return e
  if (e && typeof e === 'object' && typeof e.code === 'string') return apiError(e.code, e.message, e.status)
  return apiError('INTERNAL', String(e))
}

const isAbort = (e) => e && (e.name === 'AbortError' || e.code === 'ABORTED')

async function errorFromResponse(res) {
  let body = null
  try {
    body = await res.json()
  } catch {}
  const err = body && body.error
  if (err && typeof err.code === 'string') return apiError(err.code, err.message, res.status)
  return apiError(res.status === 401 ? 'UNAUTHORIZED' : 'HTTP_ERROR', `HTTP ${res.status} ${res.statusText || ''}`.trim(), res.status)
}

/** The text of a message's content: a string, or the `text` blocks of a content array. */
function textOf(content) {
  if (typeof content === 'string') return content
  if (Array.isArray(content)) {
    return content
      .filter((b) => b && b.type === 'text' && typeof b.text === 'string')
      .map((b) => b.text)
      .join('')
  }
  return ''
}

/**
 * One replayed message (from the session route's `messages` action) as a chat message, or null.
 * Accepts the shapes a history API is likely to return: `{ role, content | text }` and the CLI's
 * transcript lines `{ type, uuid, message: { role, content } }`.
 */
function historyMessage(m, i) {
  if (!m || typeof m !== 'object') return null
  const inner = m.message && typeof m.message === 'object' ? m.message : null
  const role = m.role || (inner && inner.role) || m.type
  if (role !== 'user' && role !== 'assistant') return null
  const content = textOf(m.content !== undefined ? m.content : m.text !== undefined ? m.text : inner ? inner.content : undefined)
  if (!content.trim()) return null
  const createdAt = typeof m.createdAt === 'number' ? m.createdAt : typeof m.timestamp === 'string' ? Date.parse(m.timestamp) || undefined : typeof m.timestamp === 'number' ? m.timestamp : undefined
  const id = m.id || m.uuid || (inner && inner.id) || `history-${i}`
  const out = { id: String(id), role, content, status: 'done' }
  if (createdAt !== undefined) out.createdAt = createdAt
  return out
}

/**
 * The meter's level: `'critical'` when the session should be compacted, `'warning'` from
 * `warnAt` percent (default 60), else `'ok'`.
 */
function contextLevel(context, options) {
  if (!context) return 'ok'
  const warnAt = options && typeof options.warnAt === 'number' ? options.warnAt : 60
  if (context.shouldCompact || !context.canContinue) return 'critical'
  if (context.usagePercentage >= warnAt) return 'warning'
  return 'ok'
}

/** Whether an error says the server does not have a route (an older version of the routes). */
const isUnsupported = (e) => e.code === 'NOT_IMPLEMENTED' || e.status === 405 || e.status === 501 || (e.status === 404 && e.code !== 'SESSION_NOT_FOUND')

/** Picks the string fields `names` from an argument that may also be a click event. */
function stringFields(arg, names) {
  const out = {}
  if (arg && typeof arg === 'object' && !('nativeEvent' in arg) && !('target' in arg)) {
    for (const n of names) if (typeof arg[n] === 'string' && arg[n]) out[n] = arg[n]
  }
  return out
}

/**
 * The history answer merged with `local`, the messages added on screen since the session was
 * opened (a prompt sent before its history had loaded): the history first, then `local`. When
 * the history already has the first local prompt (the server read the transcript after that
 * task ran), it is cut there: the exchange shows once, as it happened on screen.
 */
function mergeHistory(history, local) {
  if (!local.length) return history
  const firstUser = local.find((m) => m.role === 'user')
  if (firstUser) {
    for (let i = history.length - 1; i >= 0; i--) {
      if (history[i].role !== 'user') continue
      if (history[i].content === firstUser.content) return [...history.slice(0, i), ...local]
      break
    }
  }
  return [...history, ...local]
}

/**
 * The replies of one running task, built from its stream events: one reply, and a new one after
 * each message steered into the task. Each reply keeps the text per model message, in order:
 * deltas as they stream, replaced by each complete message; a model message stays in the reply
 * it started in. `event(data)` and `steer()` say which on-screen message changes and how.
 */
function createReplies(firstId) {
  const replies = [{ id: firstId, texts: new Map(), toolUses: [] }]
  let currentMessage = null
  const last = () => replies[replies.length - 1]
  const replyFor = (key) => replies.find((r) => r.texts.has(key)) || last()
  const joined = (r) => Array.from(r.texts.values()).filter(Boolean).join('\n\n')
  return {
    last,
    joined,
    count: () => replies.length,
    /** A stream event of the task: `[reply, patch]` for the message it changes, or null. */
    event(data) {
      if (!data || typeof data !== 'object' || data.parent_tool_use_id) return null // a subagent's message is not the reply
      if (data.type === 'stream_event' && data.event) {
        const ev = data.event
        if (ev.type === 'message_start' && ev.message) currentMessage = ev.message.id || data.api_message_id || localId('m')
        if (ev.type === 'content_block_delta' && ev.delta && ev.delta.type === 'text_delta') {
          const key = data.api_message_id || currentMessage || 'current'
          const r = replyFor(key)
          r.texts.set(key, (r.texts.get(key) || '') + ev.delta.text)
          return [r, { content: joined(r) }]
        }
        return null
      }
      if (data.type === 'assistant' && data.message) {
        const blocks = Array.isArray(data.message.content) ? data.message.content : []
        const key = data.message.id || localId('m')
        const r = replyFor(key)
        const text = textOf(blocks)
        if (text || !r.texts.has(key)) r.texts.set(key, text)
        for (const b of blocks) if (b && b.type === 'tool_use') r.toolUses.push({ id: b.id, name: b.name, input: b.input })
        return [r, { content: joined(r), toolUses: r.toolUses.slice() }]
      }
      return null
    },
    /** A message steered into the task: the reply before it ends (dropped when still empty), a
     * new one starts. Returns `{ before, empty, next }`. */
    steer() {
      const before = last()
      const empty = before.texts.size === 0 && before.toolUses.length === 0
      const next = { id: localId('assistant'), texts: new Map(), toolUses: [] }
      if (empty) replies.pop()
      replies.push(next)
      return { before, empty, next }
    },
  }
}

/** A `messages` answer's branch information: the session's forks and the message it forked at. */
function forkInfoOf(body) {
  const forks = body && Array.isArray(body.branches) ? body.branches.filter((b) => b && typeof b.sessionId === 'string') : []
  return { forks, forkedAt: body && typeof body.forkedAt === 'string' ? body.forkedAt : null }
}

module.exports = { forkInfoOf, localId, apiError, asError, isAbort, errorFromResponse, textOf, historyMessage, contextLevel, isUnsupported, stringFields, mergeHistory, createReplies }
