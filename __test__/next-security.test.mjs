// claude-session-manager/next: what the server decides and what the browser may learn — taskDefaults
// as caps, the model allow-list, the body size limit, server details kept out of the SSE stream
// and session objects, and a stream answered as soon as its task is queued. Driven with Request
// objects against fake managers (no addon, no CLI); next-routes.test.mjs has the same against a
// real manager.
import { test } from 'node:test'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { createClaudeRoutes, DEFAULT_CLIENT_TASK_FIELDS, DEFAULT_MAX_BODY_BYTES, statusForCode } = require('../next/index.js')

const BASE = 'http://localhost/api/claude'
const SID = '00000000-0000-4000-8000-0000000000aa'

function post(path, body, { user = 'alice', raw, headers = {}, signal, duplex } = {}) {
  const h = { 'content-type': 'application/json', ...headers }
  if (user) h['x-user'] = user
  const init = { method: 'POST', headers: h, body: raw !== undefined ? raw : JSON.stringify(body), signal }
  if (duplex) init.duplex = duplex
  return new Request(`${BASE}/${path}`, init)
}
function get(pathAndQuery, { user = 'alice' } = {}) {
  return new Request(`${BASE}/${pathAndQuery}`, { headers: user ? { 'x-user': user } : {} })
}
async function jsonOf(res, status) {
  const text = await res.text()
  if (status !== undefined && res.status !== status) throw new Error(`expected HTTP ${status}, got ${res.status}: ${text.slice(0, 500)}`)
  return JSON.parse(text)
}
async function expectError(t, res, status, code, messagePart) {
  const body = await jsonOf(res, status)
  t.assert.strictEqual(res.headers.get('content-type'), 'application/json; charset=utf-8')
  t.assert.strictEqual(body.error.code, code, JSON.stringify(body))
  if (messagePart) t.assert.match(body.error.message, messagePart)
  return body.error
}
function parseSse(text) {
  const out = []
  for (const block of text.split(/\n\n/)) {
    let event = 'message'
    const data = []
    for (const line of block.split('\n')) {
      if (line.startsWith('event: ')) event = line.slice(7)
      else if (line.startsWith('data: ')) data.push(line.slice(6))
    }
    if (data.length) out.push({ event, data: JSON.parse(data.join('\n')) })
  }
  return out
}

/** A fake manager that records the tasks it is given and answers at once. */
function recordingManager() {
  const tasks = []
  const m = {
    tasks,
    executeTask: async (task, opts) => {
      tasks.push(task)
      if (opts && opts.onEvent) opts.onEvent({ type: 'task_queued', sessionId: SID })
      return { success: true, sessionId: SID, result: 'ok' }
    },
    compactSession: async () => ({ success: true }),
    getOrCreateSession: async () => ({ session: { id: SID }, created: true }),
  }
  return m
}

// ---- 1. taskDefaults are the server's ---------------------------------------------------------

test('next security: taskDefaults limits are caps; every other server field wins over the client', async (t) => {
  const m = recordingManager()
  const taskDefaults = {
    maxTurns: 3,
    timeoutMs: 5000,
    maxBudgetUsd: 1,
    model: 'haiku',
    permissionMode: 'default',
    allowedTools: ['Read'],
    title: 'server title',
    userId: 'ignored',
  }
  const r = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager: m, taskDefaults, clientTaskFields: 'all', onError: null })

  // The client asks for more than the server allows and tries to replace its settings (F25).
  const greedy = { prompt: 'x', projectId: 'p', maxTurns: 10000, timeoutMs: 2 ** 53 - 1, maxBudgetUsd: 100, permissionMode: 'bypassPermissions', allowedTools: ['Bash'], title: 'mine' }
  await jsonOf(await r.task.POST(post('task', greedy)), 200)
  t.assert.deepStrictEqual(m.tasks.at(-1), { ...greedy, maxTurns: 3, timeoutMs: 5000, maxBudgetUsd: 1, permissionMode: 'default', allowedTools: ['Read'], title: 'server title', model: 'haiku', userId: 'alice' })

  // Less than the cap is the client's to choose.
  await jsonOf(await r.task.POST(post('task', { prompt: 'x', projectId: 'p', maxTurns: 2, timeoutMs: 100, maxBudgetUsd: 0.25 })), 200)
  t.assert.deepStrictEqual([m.tasks.at(-1).maxTurns, m.tasks.at(-1).timeoutMs, m.tasks.at(-1).maxBudgetUsd], [2, 100, 0.25])

  // Nothing sent: the server's values.
  await jsonOf(await r.task.POST(post('task', { prompt: 'x', projectId: 'p' })), 200)
  t.assert.deepStrictEqual([m.tasks.at(-1).maxTurns, m.tasks.at(-1).timeoutMs, m.tasks.at(-1).maxBudgetUsd, m.tasks.at(-1).model], [3, 5000, 1, 'haiku'])

  // A capped field that is not a number cannot slip past the cap.
  await expectError(t, await r.task.POST(post('task', { prompt: 'x', projectId: 'p', maxTurns: '10000' })), 400, 'INVALID_ARGUMENT', /maxTurns must be a number/)
  await expectError(t, await r.task.POST(post('task', { prompt: 'x', projectId: 'p', timeoutMs: null })), 400, 'INVALID_ARGUMENT', /timeoutMs/)

  // The stream route merges the same way.
  const res = await r.stream.POST(post('stream', greedy))
  t.assert.strictEqual(res.status, 200)
  await res.text()
  t.assert.strictEqual(m.tasks.at(-1).maxTurns, 3)
  t.assert.strictEqual(m.tasks.at(-1).permissionMode, 'default')
  t.assert.strictEqual(m.tasks.at(-1).userId, 'alice')

  // With the default client fields: the README's `taskDefaults: { maxTurns: 8 }` is a real cap.
  const d = createClaudeRoutes({ getUserId: () => 'bob', manager: m, taskDefaults: { maxTurns: 8, timeoutMs: 60000 }, onError: null })
  await jsonOf(await d.task.POST(post('task', { prompt: 'x', projectId: 'p', maxTurns: 10000, timeoutMs: 2 ** 53 - 1 })), 200)
  t.assert.deepStrictEqual([m.tasks.at(-1).maxTurns, m.tasks.at(-1).timeoutMs], [8, 60000])
  // A limit the server did not set stays the client's (within the allowed fields).
  const free = createClaudeRoutes({ getUserId: () => 'bob', manager: m, onError: null })
  await jsonOf(await free.task.POST(post('task', { prompt: 'x', projectId: 'p', maxTurns: 50 })), 200)
  t.assert.strictEqual(m.tasks.at(-1).maxTurns, 50)
})

// ---- 2. The model allow-list -------------------------------------------------------------------

test('next security: a client may choose the model only from allowedModels (default: not at all)', async (t) => {
  const m = recordingManager()
  t.assert.ok(!DEFAULT_CLIENT_TASK_FIELDS.includes('model'), 'model is not a default client field')

  // Default: refused, on both task routes, before the manager is called; the server's model is used.
  const def = createClaudeRoutes({ getUserId: () => 'alice', manager: m, taskDefaults: { model: 'haiku' }, onError: null })
  await expectError(t, await def.task.POST(post('task', { prompt: 'x', projectId: 'p', model: 'opus' })), 400, 'INVALID_ARGUMENT', /allowedModels/)
  await expectError(t, await def.stream.POST(post('stream', { prompt: 'x', projectId: 'p', model: 'opus' })), 400, 'INVALID_ARGUMENT', /model/)
  t.assert.strictEqual(m.tasks.length, 0)
  await jsonOf(await def.task.POST(post('task', { prompt: 'x', projectId: 'p' })), 200)
  t.assert.strictEqual(m.tasks.at(-1).model, 'haiku')
  // 'all' client fields do not open the model either.
  const all = createClaudeRoutes({ getUserId: () => 'alice', manager: m, clientTaskFields: 'all', onError: null })
  await expectError(t, await all.task.POST(post('task', { prompt: 'x', projectId: 'p', model: 'opus' })), 400, 'INVALID_ARGUMENT', /allowedModels/)
  await expectError(t, await all.task.POST(post('task', { prompt: 'x', projectId: 'p', fallbackModel: 'opus' })), 400, 'INVALID_ARGUMENT', /fallbackModel/)

  // An allow-list: members pass (and replace taskDefaults.model), others are a 400 naming the list.
  const listed = createClaudeRoutes({ getUserId: () => 'alice', manager: m, allowedModels: ['sonnet', 'haiku'], taskDefaults: { model: 'sonnet' }, onError: null })
  const e = await expectError(t, await listed.task.POST(post('task', { prompt: 'x', projectId: 'p', model: 'opus' })), 400, 'INVALID_ARGUMENT')
  t.assert.match(e.message, /"opus" is not allowed/)
  t.assert.match(e.message, /sonnet, haiku/)
  await expectError(t, await listed.stream.POST(post('stream', { prompt: 'x', projectId: 'p', model: 'claude-opus-4-1' })), 400, 'INVALID_ARGUMENT', /sonnet, haiku/)
  await expectError(t, await listed.task.POST(post('task', { prompt: 'x', projectId: 'p', model: ['haiku'] })), 400, 'INVALID_ARGUMENT', /not allowed/)
  await expectError(t, await listed.task.POST(post('task', { prompt: 'x', projectId: 'p', model: 'HAIKU' })), 400, 'INVALID_ARGUMENT', /not allowed/)
  const before = m.tasks.length
  await jsonOf(await listed.task.POST(post('task', { prompt: 'x', projectId: 'p', model: 'haiku' })), 200)
  t.assert.strictEqual(m.tasks.length, before + 1, 'only the allowed request reached the manager')
  t.assert.strictEqual(m.tasks.at(-1).model, 'haiku')
  await jsonOf(await listed.task.POST(post('task', { prompt: 'x', projectId: 'p' })), 200)
  t.assert.strictEqual(m.tasks.at(-1).model, 'sonnet', 'taskDefaults.model is the default')
  // fallbackModel, where the client fields allow it, is checked against the same list.
  const fb = createClaudeRoutes({ getUserId: () => 'alice', manager: m, allowedModels: ['haiku'], clientTaskFields: 'all', onError: null })
  await expectError(t, await fb.task.POST(post('task', { prompt: 'x', projectId: 'p', fallbackModel: 'opus' })), 400, 'INVALID_ARGUMENT', /haiku/)
  // 'any' is the explicit opt-out.
  const any = createClaudeRoutes({ getUserId: () => 'alice', manager: m, allowedModels: 'any', onError: null })
  await jsonOf(await any.task.POST(post('task', { prompt: 'x', projectId: 'p', model: 'opus' })), 200)
  t.assert.strictEqual(m.tasks.at(-1).model, 'opus')

  // Configuration mistakes are caught at start-up.
  const base = { getUserId: () => 'a', manager: m }
  t.assert.throws(() => createClaudeRoutes({ ...base, clientTaskFields: ['prompt', 'projectId', 'model'] }), /allowedModels/)
  t.assert.throws(() => createClaudeRoutes({ ...base, allowedModels: 'sonnet' }), TypeError)
  t.assert.throws(() => createClaudeRoutes({ ...base, allowedModels: [''] }), TypeError)
  t.assert.ok(createClaudeRoutes({ ...base, clientTaskFields: ['prompt', 'projectId', 'model'], allowedModels: ['haiku'] }))
})

// ---- 3. The body size limit --------------------------------------------------------------------

/** A request body of `total` bytes in chunks of `chunk` bytes, counting what was pulled. */
function countingBody(total, chunk = 64 * 1024) {
  const stats = { pulled: 0, cancelled: false }
  const stream = new ReadableStream({
    pull(controller) {
      if (stats.pulled >= total) return controller.close()
      const n = Math.min(chunk, total - stats.pulled)
      stats.pulled += n
      // `{"prompt":"xxxx…` — valid JSON if it were ever finished.
      const bytes = new Uint8Array(n).fill(0x78)
      if (stats.pulled === n) bytes.set(new TextEncoder().encode('{"prompt":"'))
      controller.enqueue(bytes)
    },
    cancel() {
      stats.cancelled = true
    },
  })
  return { stream, stats }
}

test('next security: bodies over maxBodyBytes are a 413 PAYLOAD_TOO_LARGE, read no further than the limit', async (t) => {
  t.assert.strictEqual(DEFAULT_MAX_BODY_BYTES, 1024 * 1024)
  t.assert.strictEqual(statusForCode('PAYLOAD_TOO_LARGE'), 413)
  t.assert.strictEqual(statusForCode('CONTEXT_OVERFLOW'), 413)
  const m = recordingManager()
  const seen = []
  const r = createClaudeRoutes({ getUserId: () => 'alice', manager: m, onError: (e) => seen.push(e) })

  // Default limit: 1 MiB. Just under passes, just over is refused, on every POST route.
  const under = JSON.stringify({ prompt: 'x'.repeat(DEFAULT_MAX_BODY_BYTES - 40), projectId: 'p' })
  t.assert.ok(Buffer.byteLength(under) <= DEFAULT_MAX_BODY_BYTES)
  await jsonOf(await r.task.POST(post('task', null, { raw: under })), 200)
  const over = JSON.stringify({ prompt: 'x'.repeat(DEFAULT_MAX_BODY_BYTES), projectId: 'p' })
  const tasksBefore = m.tasks.length
  for (const [name, handler] of [['task', r.task.POST], ['stream', r.stream.POST], ['session', r.session.POST], ['compact', r.compact.POST]]) {
    const e = await expectError(t, await handler(post(name, null, { raw: over })), 413, 'PAYLOAD_TOO_LARGE')
    t.assert.match(e.message, /1048576 bytes/, name)
  }
  t.assert.strictEqual(m.tasks.length, tasksBefore, 'nothing reached the manager')
  t.assert.deepStrictEqual(seen, [], 'a 413 is not a server error')

  // The limit counts bytes, not characters.
  const small = createClaudeRoutes({ getUserId: () => 'alice', manager: m, maxBodyBytes: 1000, onError: null })
  await expectError(t, await small.task.POST(post('task', { prompt: 'é'.repeat(600), projectId: 'p' })), 413, 'PAYLOAD_TOO_LARGE', /1000 bytes/)
  await jsonOf(await small.task.POST(post('task', { prompt: 'e'.repeat(600), projectId: 'p' })), 200)

  // A streamed body (no content-length) is abandoned as soon as it passes the limit: 64 MiB
  // offered, at most the limit plus a chunk or two pulled, and the stream is cancelled.
  const big = countingBody(64 * 1024 * 1024)
  const res = await r.task.POST(post('task', null, { raw: big.stream, duplex: 'half' }))
  await expectError(t, res, 413, 'PAYLOAD_TOO_LARGE')
  t.assert.ok(big.stats.pulled <= DEFAULT_MAX_BODY_BYTES + 3 * 64 * 1024, `pulled ${big.stats.pulled} bytes`)
  t.assert.strictEqual(big.stats.cancelled, true, 'the rest of the body was cancelled')

  // A declared content-length over the limit is refused before the body is read.
  const declared = countingBody(64 * 1024 * 1024)
  const res2 = await r.stream.POST(post('stream', null, { raw: declared.stream, duplex: 'half', headers: { 'content-length': String(64 * 1024 * 1024) } }))
  await expectError(t, res2, 413, 'PAYLOAD_TOO_LARGE')
  t.assert.ok(declared.stats.pulled <= 2 * 64 * 1024, `pulled ${declared.stats.pulled} bytes before refusing`)

  // The manager's own refusal of an over-long prompt is a 413 too, never a 500.
  const overflow = createClaudeRoutes({
    getUserId: () => 'alice',
    manager: { executeTask: async () => { throw Object.assign(new Error('the prompt is 5000000 bytes; the limit is 4194304 bytes'), { code: 'CONTEXT_OVERFLOW' }) } },
    onError: (e) => seen.push(e),
  })
  await expectError(t, await overflow.task.POST(post('task', { prompt: 'x', projectId: 'p' })), 413, 'CONTEXT_OVERFLOW', /4194304/)
  await expectError(t, await overflow.stream.POST(post('stream', { prompt: 'x', projectId: 'p' })), 413, 'CONTEXT_OVERFLOW')
  t.assert.deepStrictEqual(seen, [])

  t.assert.throws(() => createClaudeRoutes({ getUserId: () => 'a', maxBodyBytes: 0 }), TypeError)
  t.assert.throws(() => createClaudeRoutes({ getUserId: () => 'a', maxBodyBytes: '1mb' }), TypeError)
})

// ---- 4. Server details stay on the server ------------------------------------------------------

const INIT_EVENT = {
  type: 'system',
  subtype: 'init',
  cwd: '/srv/secret/workspace',
  session_id: SID,
  tools: ['Task', 'Bash', 'Read'],
  mcp_servers: [{ name: 'internal', status: 'connected' }],
  model: 'claude-sonnet-4-5',
  permissionMode: 'default',
  slash_commands: ['compact', 'heapdump'],
  apiKeySource: 'ANTHROPIC_API_KEY',
  claude_code_version: '2.1.0',
  output_style: 'default',
  agents: ['general-purpose'],
  skills: [],
  plugins: [{ name: 'p', path: '/srv/secret/plugins/p' }],
  memory_paths: { auto: '/srv/secret/config/projects/-srv-secret-workspace/memory' },
  messaging_socket_path: '/tmp/claude-secret.sock',
  uuid: '11111111-1111-4111-8111-111111111111',
}

function eventsManager(events) {
  return {
    executeTask: async (task, { onEvent }) => {
      for (const e of events) onEvent(e)
      return { success: true, sessionId: SID, result: 'done' }
    },
    getSession: async (id) => ({ id, userId: 'alice', workingDirectory: '/srv/secret/workspace', status: 'active' }),
    listSessions: async () => [{ id: SID, userId: 'alice', workingDirectory: '/srv/secret/workspace' }],
    getOrCreateSession: async () => ({ session: { id: SID, workingDirectory: '/srv/secret/workspace' }, created: true }),
    fork: async () => ({ id: SID, workingDirectory: '/srv/secret/workspace' }),
  }
}

test('next security: the stream reduces system/init and drops server fields; sessions lose workingDirectory', async (t) => {
  const hook = { type: 'system', subtype: 'hook_response', cwd: '/srv/secret/workspace', transcript_path: '/srv/secret/t.jsonl', hook_name: 'SessionStart', exit_code: 0 }
  const assistant = { type: 'assistant', message: { content: [{ type: 'text', text: 'I work in /srv/secret/workspace' }] }, session_id: SID }
  const events = [{ type: 'task_queued', sessionId: SID }, { type: 'task_started', sessionId: SID, taskId: 't' }, INIT_EVENT, hook, assistant]
  const m = eventsManager(events)

  const r = createClaudeRoutes({ getUserId: () => 'alice', manager: m, onError: null })
  const res = await r.stream.POST(post('stream', { prompt: 'x', projectId: 'p' }))
  const sse = parseSse(await res.text())
  const messages = sse.filter((e) => e.event === 'message').map((e) => e.data)
  t.assert.strictEqual(messages.length, 5)
  t.assert.deepStrictEqual(messages[2], { type: 'system', subtype: 'init', session_id: SID, model: 'claude-sonnet-4-5', permissionMode: 'default', uuid: INIT_EVENT.uuid })
  t.assert.deepStrictEqual(messages[3], { type: 'system', subtype: 'hook_response', hook_name: 'SessionStart', exit_code: 0 })
  t.assert.deepStrictEqual(messages[4], assistant, "the model's own text is not changed")
  t.assert.deepStrictEqual(messages.slice(0, 2), events.slice(0, 2))
  const leaked = JSON.stringify(messages.slice(0, 4))
  for (const secret of ['/srv/secret', 'claude-secret.sock', 'heapdump', 'ANTHROPIC_API_KEY', '2.1.0']) t.assert.ok(!leaked.includes(secret), secret)
  t.assert.strictEqual(INIT_EVENT.cwd, '/srv/secret/workspace', 'the original event object is not modified')
  t.assert.strictEqual(hook.cwd, '/srv/secret/workspace', 'the original event object is not modified')

  // Session objects.
  const one = await jsonOf(await r.session.GET(get(`session?sessionId=${SID}`)), 200)
  t.assert.deepStrictEqual(one.session, { id: SID, userId: 'alice', status: 'active' })
  const list = await jsonOf(await r.session.GET(get('session')), 200)
  t.assert.ok(!('workingDirectory' in list.sessions[0]))
  const goc = await jsonOf(await r.session.POST(post('session', { action: 'getOrCreate', projectId: 'p' })), 200)
  t.assert.deepStrictEqual(goc, { session: { id: SID }, created: true })
  const fork = await jsonOf(await r.session.POST(post('session', { action: 'fork', sessionId: SID })), 200)
  t.assert.deepStrictEqual(fork, { session: { id: SID } })

  // exposeServerDetails: everything, as the CLI and the manager sent it.
  const open = createClaudeRoutes({ getUserId: () => 'alice', manager: m, exposeServerDetails: true, onError: null })
  const all = parseSse(await (await open.stream.POST(post('stream', { prompt: 'x', projectId: 'p' }))).text())
    .filter((e) => e.event === 'message')
    .map((e) => e.data)
  t.assert.deepStrictEqual(all, events)
  t.assert.strictEqual((await jsonOf(await open.session.GET(get(`session?sessionId=${SID}`)), 200)).session.workingDirectory, '/srv/secret/workspace')
})

// ---- 5. The stream answers once the task is queued ---------------------------------------------

/** A fake manager whose task is queued at once and starts only when `release()` is called; an
 * abort while it waits ends it as the addon does (a TaskResult with ABORTED). */
function queueingManager() {
  const state = { abortedWhileQueued: false, started: false }
  let release
  const gate = new Promise((r) => (release = r))
  const m = {
    state,
    release: () => release(),
    executeTask: (task, { onEvent, signal }) =>
      new Promise((resolve) => {
        onEvent({ type: 'task_queued', sessionId: SID })
        let done = false
        const aborted = () => {
          if (done) return
          done = true
          if (!state.started) state.abortedWhileQueued = true
          resolve({ success: false, sessionId: SID, error: { code: 'ABORTED', message: 'the task was aborted while it waited for its session' } })
        }
        // The addon's calling convention (one array argument); the adapter accepts it.
        signal.addEventListener(['abort', aborted])
        if (signal.aborted) aborted()
        gate.then(() => {
          if (done) return
          state.started = true
          onEvent({ type: 'task_started', sessionId: SID, taskId: 't' })
          done = true
          resolve({ success: true, sessionId: SID, result: 'ran' })
        })
      }),
  }
  return m
}

test('next security: the stream answers with task_queued before the task starts; leaving while queued aborts it', async (t) => {
  // 1. Answered while queued; the rest follows once the task runs.
  const m = queueingManager()
  const r = createClaudeRoutes({ getUserId: () => 'alice', manager: m, onError: null })
  const res = await Promise.race([
    r.stream.POST(post('stream', { prompt: 'x', projectId: 'p', sessionId: SID })),
    new Promise((_, reject) => setTimeout(() => reject(new Error('the stream route did not answer while the task was queued')), 2000)),
  ])
  t.assert.strictEqual(res.status, 200)
  t.assert.match(res.headers.get('content-type'), /^text\/event-stream/)
  const reader = res.body.getReader()
  const first = parseSse(new TextDecoder().decode((await reader.read()).value))
  t.assert.deepStrictEqual(first.map((e) => e.data), [{ type: 'task_queued', sessionId: SID }])
  t.assert.strictEqual(m.state.started, false)
  m.release()
  let rest = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    rest += new TextDecoder().decode(value)
  }
  const after = parseSse(rest)
  t.assert.strictEqual(after[0].data.type, 'task_started')
  t.assert.deepStrictEqual(after.at(-1), { event: 'result', data: { success: true, sessionId: SID, result: 'ran' } })

  // 2. The client goes away while queued (request.signal): the task is aborted, never started.
  const m2 = queueingManager()
  const r2 = createClaudeRoutes({ getUserId: () => 'alice', manager: m2, onError: null })
  const controller = new AbortController()
  const res2 = await r2.stream.POST(post('stream', { prompt: 'x', projectId: 'p', sessionId: SID }, { signal: controller.signal }))
  t.assert.strictEqual(res2.status, 200)
  controller.abort()
  const events2 = parseSse(await res2.text())
  t.assert.strictEqual(events2.at(-1).data.error.code, 'ABORTED')
  t.assert.strictEqual(m2.state.abortedWhileQueued, true)
  m2.release()

  // 3. The reader cancels the body while queued: aborted too.
  const m3 = queueingManager()
  const r3 = createClaudeRoutes({ getUserId: () => 'alice', manager: m3, onError: null })
  const res3 = await r3.stream.POST(post('stream', { prompt: 'x', projectId: 'p', sessionId: SID }))
  const reader3 = res3.body.getReader()
  await reader3.read()
  await reader3.cancel()
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.assert.strictEqual(m3.state.abortedWhileQueued, true)
  m3.release()

  // 4. Refused before it was queued: an HTTP error. Refused after (busy past queueTimeoutMs): an
  //    `error` event carrying the status.
  const before = createClaudeRoutes({
    getUserId: () => 'alice',
    manager: { executeTask: async () => { throw Object.assign(new Error('session not found'), { code: 'SESSION_NOT_FOUND' }) } },
    onError: null,
  })
  await expectError(t, await before.stream.POST(post('stream', { prompt: 'x', projectId: 'p', sessionId: SID })), 404, 'SESSION_NOT_FOUND')
  const busy = createClaudeRoutes({
    getUserId: () => 'alice',
    manager: {
      executeTask: async (task, { onEvent }) => {
        onEvent({ type: 'task_queued', sessionId: SID })
        await new Promise((resolve) => setTimeout(resolve, 30))
        throw Object.assign(new Error(`session ${SID} is running another task; waited 30 ms`), { code: 'SESSION_BUSY' })
      },
    },
    onError: null,
  })
  const res4 = await busy.stream.POST(post('stream', { prompt: 'x', projectId: 'p', sessionId: SID }))
  t.assert.strictEqual(res4.status, 200)
  const events4 = parseSse(await res4.text())
  t.assert.deepStrictEqual(events4.map((e) => e.event), ['message', 'error'])
  t.assert.strictEqual(events4[1].data.error.code, 'SESSION_BUSY')
  t.assert.strictEqual(events4[1].data.error.status, 409)
})
