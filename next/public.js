'use strict'
// claude-session-manager/next: what the browser may see of events, sessions and the context
// breakdown (server paths and internals left out unless `exposeServerDetails`).

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

module.exports = { publicEvent, publicSession, publicSessions, publicContextUsage }
