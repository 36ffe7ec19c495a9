// claude-session-manager/next: the App Router route handlers, driven directly with Request objects
// against a real SessionManager whose `claude` CLI runs offline against the stand-in server.
import { test, before, after } from 'node:test'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { backendTag, makeManager, parseSse, processesMentioning, startStandInServer, tempDir, testBackends, until, UUID, workDir } from './helpers.mjs'

const require = createRequire(import.meta.url)
const nextRoutes = require('../next/index.js')
const { createClaudeRoutes, getSessionManager, closeSessionManager, statusForCode } = nextRoutes

const BASE = 'http://localhost/api/claude'
let server
let manager
let routes
let work
let configDir

before(async () => {
  server = await startStandInServer()
  ;({ manager, work, configDir } = makeManager({ server, queueTimeoutMs: 400 }))
  routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
})
after(async () => {
  await manager.close()
  await server.close()
})

/** A JSON POST as the browser would send it; `user: null` sends no user. */
function post(path, body, { user = 'alice', raw, contentType = 'application/json', signal } = {}) {
  const headers = {}
  if (user) headers['x-user'] = user
  if (contentType) headers['content-type'] = contentType
  return new Request(`${BASE}/${path}`, { method: 'POST', headers, body: raw !== undefined ? raw : JSON.stringify(body), signal })
}
function get(pathAndQuery, { user = 'alice' } = {}) {
  return new Request(`${BASE}/${pathAndQuery}`, { headers: user ? { 'x-user': user } : {} })
}
async function jsonOf(res, status) {
  const text = await res.text()
  let body
  try {
    body = JSON.parse(text)
  } catch {
    throw new Error(`not JSON (HTTP ${res.status}): ${text.slice(0, 300)}`)
  }
  if (status !== undefined && res.status !== status) throw new Error(`expected HTTP ${status}, got ${res.status}: ${text.slice(0, 500)}`)
  return body
}
async function expectError(t, res, status, code, messagePart) {
  const body = await jsonOf(res, status)
  t.assert.strictEqual(res.headers.get('content-type'), 'application/json; charset=utf-8')
  t.assert.strictEqual(body.error.code, code, JSON.stringify(body))
  t.assert.strictEqual(typeof body.error.message, 'string')
  if (messagePart) t.assert.match(body.error.message, messagePart)
  return body.error
}

test('next routes: task POST runs a task and answers with the TaskResult; resume carries history', async (t) => {
  server.reset()
  const res = await routes.task.POST(post('task', { prompt: 'hello from a route', projectId: 'web' }))
  const r = await jsonOf(res, 200)
  t.assert.strictEqual(res.headers.get('cache-control'), 'no-store')
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.match(r.sessionId, UUID)
  t.assert.strictEqual(r.result, 'Echo #1: hello from a route')
  t.assert.strictEqual(r.contextInfo.source, 'api')
  t.assert.ok(r.contextInfo.estimatedTokens > 0)
  const again = await jsonOf(await routes.task.POST(post('task', { prompt: 'and again', projectId: 'web', sessionId: r.sessionId })), 200)
  t.assert.strictEqual(again.result, 'Echo #2: and again', 'the resumed task saw turn 1')
  const session = (await jsonOf(await routes.session.GET(get(`session?sessionId=${r.sessionId}`)), 200)).session
  t.assert.strictEqual(session.userId, 'alice', 'the user came from getUserId')
  t.assert.strictEqual(session.taskCount, 2)
})

test('next routes: the stream route sends every event as SSE, then a result event with the TaskResult', async (t) => {
  server.reset()
  server.enqueue({ text: 'streamed word by word', chunkDelayMs: 5 })
  const { session } = await jsonOf(await routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'sse' })), 200)
  const res = await routes.stream.POST(post('stream', { prompt: 'stream please', projectId: 'sse', sessionId: session.id }))
  t.assert.strictEqual(res.status, 200)
  t.assert.match(res.headers.get('content-type'), /^text\/event-stream/)
  t.assert.match(res.headers.get('cache-control'), /no-cache/)
  const events = parseSse(await res.text())
  const messages = events.filter((e) => e.event === 'message')
  t.assert.deepStrictEqual(messages.slice(0, 2).map((e) => e.data.type), ['task_queued', 'task_started'])
  t.assert.strictEqual(messages[1].data.sessionId, session.id)
  const types = new Set(messages.map((e) => e.data.type))
  for (const type of ['system', 'stream_event', 'assistant', 'result']) t.assert.ok(types.has(type), `has a ${type} event: ${[...types]}`)
  const deltas = messages
    .filter((e) => e.data.type === 'stream_event' && e.data.event?.delta?.type === 'text_delta')
    .map((e) => e.data.event.delta.text)
    .join('')
  t.assert.strictEqual(deltas, 'streamed word by word', 'text deltas are forwarded (includePartialMessages defaults to true)')
  t.assert.strictEqual(events[0].id, undefined, 'task_queued is not in the log')
  const ids = events.slice(1).map((e) => Number(e.id))
  t.assert.deepStrictEqual(ids, ids.map((_, i) => ids[0] + i), 'ids are the log\'s numbers: contiguous')
  const last = events.at(-1)
  t.assert.strictEqual(last.event, 'result', 'the final event is the TaskResult')
  t.assert.strictEqual(events.filter((e) => e.event === 'result').length, 1)
  t.assert.strictEqual(last.data.success, true)
  t.assert.strictEqual(last.data.result, 'streamed word by word')
  t.assert.strictEqual(last.data.sessionId, session.id)
  t.assert.strictEqual(typeof last.data.contextInfo.usagePercentage, 'number')
  t.assert.strictEqual(typeof last.data.taskId, 'string')

  // includePartialMessages: false leaves the deltas out.
  const quiet = parseSse(await (await routes.stream.POST(post('stream', { prompt: 'quiet', projectId: 'sse', sessionId: session.id, includePartialMessages: false }))).text())
  t.assert.ok(!quiet.some((e) => e.data.type === 'stream_event'))
  t.assert.strictEqual(quiet.at(-1).data.result, 'Echo #2: quiet')
})

test('next routes: closing the stream (client disconnect) aborts the task with abortOnDisconnect', async (t) => {
  server.reset()
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null, abortOnDisconnect: true })
  const { session } = await jsonOf(await routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'abort' })), 200)
  // 1. The request's signal fires (Next aborts request.signal when the client goes away).
  server.enqueue({ text: 'a b c d e f g h i j k l m n o p q r s t u v w x y z '.repeat(4), chunkDelayMs: 100 })
  const controller = new AbortController()
  const res = await routes.stream.POST(post('stream', { prompt: 'long one', projectId: 'abort', sessionId: session.id }, { signal: controller.signal }))
  t.assert.strictEqual(res.status, 200)
  const reader = res.body.getReader()
  let seen = ''
  while (!seen.includes('text_delta')) {
    const { value, done } = await reader.read()
    if (done) break
    seen += new TextDecoder().decode(value)
  }
  controller.abort()
  let rest = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    rest += new TextDecoder().decode(value)
  }
  const result = parseSse(rest).find((e) => e.event === 'result')
  t.assert.strictEqual(result?.data.success, false)
  t.assert.strictEqual(result.data.error.code, 'ABORTED')
  const tasks = (await jsonOf(await routes.session.POST(post('session', { action: 'tasks', sessionId: session.id })), 200)).tasks
  t.assert.strictEqual(tasks.at(-1).status, 'aborted')

  // 2. The body is cancelled (the response stream's reader goes away) once the task runs (a
  // task left while it is still queued has no row: the stream test below covers that).
  server.enqueue({ text: 'slow '.repeat(80), chunkDelayMs: 100 })
  const res2 = await routes.stream.POST(post('stream', { prompt: 'long two', projectId: 'abort', sessionId: session.id }))
  const reader2 = res2.body.getReader()
  for (let seen2 = ''; !seen2.includes('task_started'); ) {
    const { value, done } = await reader2.read()
    if (done) break
    seen2 += new TextDecoder().decode(value)
  }
  await reader2.cancel()
  await until('the second task to end aborted', async () => {
    const list = (await jsonOf(await routes.session.POST(post('session', { action: 'tasks', sessionId: session.id })), 200)).tasks
    return list.length === 2 && list[1].status === 'aborted'
  })
})

test('next routes: the task outlives its stream; GET resumes after Last-Event-ID (or ?after=) with every missed event once; DELETE stops it', async (t) => {
  server.reset()
  const { session } = await jsonOf(await routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'resume' })), 200)
  const sid = session.id
  t.assert.strictEqual((await routes.stream.GET(get(`stream?sessionId=${sid}`))).status, 204, 'nothing runs: answered at once')
  const words = 'one two three four five six seven eight nine ten'
  server.enqueue({ text: words, chunkDelayMs: 300 })
  const res = await routes.stream.POST(post('stream', { prompt: 'resume me', projectId: 'resume', sessionId: sid }))
  const reader = res.body.getReader()
  let head = ''
  while (!head.includes('text_delta')) {
    const { value, done } = await reader.read()
    if (done) break
    head += new TextDecoder().decode(value)
  }
  await reader.cancel() // the browser reloads
  const seen = parseSse(head).filter((e) => e.id !== undefined)
  const lastId = seen.at(-1).id
  const text = (events) =>
    events
      .filter((e) => e.data.type === 'stream_event' && e.data.event?.delta?.type === 'text_delta')
      .map((e) => e.data.event.delta.text)
      .join('')
  // Another tab, from the start of the running task, and the reloaded page from its last id.
  const other = routes.stream.GET(get(`stream?sessionId=${sid}`)).then((r) => r.text())
  const resumed = parseSse(await (await routes.stream.GET(new Request(`${BASE}/stream?sessionId=${sid}`, { headers: { 'x-user': 'alice', 'last-event-id': lastId } }))).text())
  const ids = [...seen, ...resumed].map((e) => Number(e.id))
  t.assert.deepStrictEqual(ids, ids.map((_, i) => ids[0] + i), 'every event once, in order')
  t.assert.strictEqual(resumed.at(-1).event, 'result')
  t.assert.strictEqual(resumed.at(-1).data.success, true, 'closing the stream did not stop the task')
  t.assert.strictEqual(text([...seen, ...resumed]), words)
  t.assert.strictEqual(text(parseSse(await other)), words, 'a second tab sees the same stream')
  const replay = parseSse(await (await routes.stream.GET(get(`stream?sessionId=${sid}&after=${lastId}`))).text())
  t.assert.deepStrictEqual(replay.map((e) => e.id), resumed.map((e) => e.id), '?after= as Last-Event-ID; nothing runs: at once')

  // Bad ids and someone else's session.
  await expectError(t, await routes.stream.GET(get(`stream?sessionId=${sid}&after=abc`)), 400, 'INVALID_ARGUMENT')
  await expectError(t, await routes.stream.GET(get(`stream?sessionId=${sid}&after=${Number(resumed.at(-1).id) + 1}`)), 400, 'INVALID_ARGUMENT')
  await expectError(t, await routes.stream.GET(new Request(`${BASE}/stream?sessionId=${sid}`, { headers: { 'x-user': 'alice', 'last-event-id': '-3' } })), 400, 'INVALID_ARGUMENT')
  await expectError(t, await routes.stream.GET(get(`stream?sessionId=${sid}&after=0`, { user: 'mallory' })), 404, 'SESSION_NOT_FOUND')
  await expectError(t, await routes.stream.DELETE(new Request(`${BASE}/stream?sessionId=${sid}`, { method: 'DELETE', headers: { 'x-user': 'mallory' } })), 404, 'SESSION_NOT_FOUND')

  // DELETE stops a running task whose stream is gone.
  server.enqueue({ text: 'slow '.repeat(80), chunkDelayMs: 100 })
  const res2 = await routes.stream.POST(post('stream', { prompt: 'stop me later', projectId: 'resume', sessionId: sid }))
  const reader2 = res2.body.getReader()
  await reader2.read()
  await reader2.cancel()
  await until('the task to run', async () => {
    const res = await routes.stream.GET(get(`stream?sessionId=${sid}`))
    await res.body?.cancel() // a stream left unread stays open (it is read as the client reads)
    return res.status === 200
  })
  const del = (user = 'alice') => routes.stream.DELETE(new Request(`${BASE}/stream?sessionId=${sid}`, { method: 'DELETE', headers: { 'x-user': user } }))
  t.assert.deepStrictEqual(await jsonOf(await del(), 200), { aborted: true, sessionId: sid })
  await until('the task to end aborted', async () => {
    const list = (await jsonOf(await routes.session.POST(post('session', { action: 'tasks', sessionId: sid })), 200)).tasks
    return list.at(-1).status === 'aborted'
  })
  t.assert.deepStrictEqual(await jsonOf(await del(), 200), { aborted: false, sessionId: sid })
})

test('next routes: the stream routes read the event log only as fast as the client reads the response (a client that never reads costs a frame, not the log)', async (t) => {
  server.reset()
  // The routes over the same manager, counting the log's events they take from streamEvents.
  let pulled = 0
  let returned = 0
  const counting = new Proxy(manager, {
    get(target, prop) {
      if (prop === 'streamEvents')
        return async (...args) => {
          const events = await target.streamEvents(...args)
          const it = events[Symbol.asyncIterator]()
          // As the EventStream: an iterable whose iterator alone has `return()`.
          return {
            [Symbol.asyncIterator]: () => ({
              next: async () => {
                const r = await it.next()
                if (!r.done) pulled++
                return r
              },
              return: async () => {
                returned++
                return it.return()
              },
            }),
          }
        }
      const v = Reflect.get(target, prop)
      return typeof v === 'function' ? v.bind(target) : v
    },
  })
  const r = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager: counting, onError: null })
  const { session } = await jsonOf(await r.session.POST(post('session', { action: 'getOrCreate', projectId: 'slow-reader' })), 200)
  const words = Array.from({ length: 150 }, (_, i) => `w${i}`).join(' ')
  const done = async () => (await jsonOf(await r.session.POST(post('session', { action: 'tasks', sessionId: session.id })), 200)).tasks.at(-1)?.status === 'succeeded'

  // The task's own stream, read once, then left unread until the task has ended.
  server.enqueue({ text: words, chunkDelayMs: 5 }) // many events
  const live = await r.stream.POST(post('stream', { prompt: 'many events', projectId: 'slow-reader', sessionId: session.id }))
  const reader = live.body.getReader()
  await reader.read()
  await until('the task to end', done)
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.assert.ok(pulled <= 4, `taken from the log while nobody read: ${pulled}`)
  let rest = ''
  for (;;) {
    const { value, done: end } = await reader.read()
    if (end) break
    rest += new TextDecoder().decode(value)
  }
  t.assert.strictEqual(parseSse(rest).at(-1).event, 'result', 'read to its end once the client reads')
  const total = pulled

  // A replay of the whole log, never read.
  pulled = 0
  const replay = await r.stream.GET(get(`stream?sessionId=${session.id}&after=0`))
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.assert.ok(pulled <= 2, `taken from the log while nobody read: ${pulled}`)
  const all = parseSse(await replay.text())
  t.assert.ok(total > 40 && all.length >= total, `${all.length} frames of ${total} events`)
  t.assert.strictEqual(all.at(-1).event, 'result')

  // A client leaving a quiet running task's stream ends its reader of the log at once (a pending
  // read settles), on both routes.
  server.enqueue({ text: 'late', delayMs: 3000 })
  const quiet = await r.stream.POST(post('stream', { prompt: 'quiet', projectId: 'slow-reader', sessionId: session.id }))
  const qr = quiet.body.getReader()
  await qr.read()
  await until('the model call', () => server.requests.filter((q) => q.path === '/v1/messages').length >= 2)
  const follower = await r.stream.GET(get(`stream?sessionId=${session.id}`))
  const fr = follower.body.getReader()
  await fr.read()
  returned = 0
  await qr.cancel()
  await fr.cancel()
  t.assert.ok(returned >= 2, `both readers of the log were ended (${returned} returns)`)
  await until('the task to end', done)
})

test('next routes: the stream answers as soon as its task is queued; a client leaving the queue aborts the task', async (t) => {
  server.reset()
  // The server lets tasks wait long for their session, so the queued streams would wait too.
  const r = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, taskDefaults: { queueTimeoutMs: 30000 }, onError: null, abortOnDisconnect: true })
  const { session } = await jsonOf(await r.session.POST(post('session', { action: 'getOrCreate', projectId: 'queued' })), 200)
  server.enqueue({ text: 'first, slowly', delayMs: 3000 })
  let firstDone = false
  const first = r.task.POST(post('task', { prompt: 'slow first', projectId: 'queued', sessionId: session.id })).then((res) => {
    firstDone = true
    return res
  })
  await until('the first task to reach the model', () => server.requests.some((q) => q.path === '/v1/messages'))

  // 1. Headers and task_queued at once, while the first task still runs; request.signal aborts it.
  const began = Date.now()
  const controller = new AbortController()
  const res = await r.stream.POST(post('stream', { prompt: 'queued one', projectId: 'queued', sessionId: session.id }, { signal: controller.signal }))
  t.assert.strictEqual(res.status, 200)
  t.assert.strictEqual(firstDone, false, 'answered while the task was queued behind the first')
  t.assert.ok(Date.now() - began < 2000, `answered after ${Date.now() - began} ms`)
  const reader = res.body.getReader()
  let head = ''
  while (!head.includes('\n\n')) {
    const { value, done } = await reader.read()
    if (done) break
    head += new TextDecoder().decode(value)
  }
  t.assert.deepStrictEqual(parseSse(head)[0].data, { type: 'task_queued', sessionId: session.id })
  controller.abort()
  let rest = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    rest += new TextDecoder().decode(value)
  }
  const result = parseSse(head + rest).find((e) => e.event === 'result')
  t.assert.strictEqual(result?.data.error?.code, 'ABORTED', rest)
  t.assert.strictEqual(firstDone, false, 'aborted while still queued')

  // 2. The same when the body is cancelled instead.
  const res2 = await r.stream.POST(post('stream', { prompt: 'queued two', projectId: 'queued', sessionId: session.id }))
  t.assert.strictEqual(res2.status, 200)
  const reader2 = res2.body.getReader()
  await reader2.read()
  await reader2.cancel()
  t.assert.strictEqual(firstDone, false, 'both left the queue before the first task ended')

  const done = await jsonOf(await first, 200)
  t.assert.strictEqual(done.result, 'first, slowly')
  // Tasks on a session start in arrival order: had either queued task not been aborted, it would
  // have run before this one.
  const third = await jsonOf(await r.task.POST(post('task', { prompt: 'third', projectId: 'queued', sessionId: session.id })), 200)
  t.assert.strictEqual(third.success, true)
  const list = (await jsonOf(await r.session.POST(post('session', { action: 'tasks', sessionId: session.id })), 200)).tasks
  t.assert.deepStrictEqual(list.map((x) => x.status), ['succeeded', 'succeeded'], 'tasks aborted while queued never started and left no row')
  const text = JSON.stringify(server.requests.map((q) => q.body))
  t.assert.ok(!text.includes('queued one') && !text.includes('queued two'), 'the aborted tasks never reached the model')
})

// 200 real CLI runs one after another would take minutes here (about 0.7 s each), so the CLI is
// a stand-in script (`claudePath`, no sandbox) that appends the prompt it got on stdin to a log
// and answers at once; the order of the log is the order the tasks started. The first task holds
// the session until every request is queued (it waits for a gate file), so all 200 wait at once.
// Each request is sent once the one before has been answered (its task is queued): that is the
// order they reach the session. (With the real CLI: lifecycle.test.mjs, five tasks.)
for (const backend of testBackends()) test(`next routes: 200 stream requests queued on one session start in the order they arrived${backendTag(backend)}`, { timeout: 300_000 }, async (t) => {
  const N = 200
  const dir = tempDir('csm-order-')
  const log = path.join(dir, 'started.log')
  const gate = path.join(dir, 'gate')
  const cli = path.join(dir, 'fake-claude')
  fs.writeFileSync(
    cli,
    `#!/bin/sh
# (The manager first asks the CLI for its --version: none here, so it runs the script as it is
# and, on PostgreSQL, does not ask it to mirror its transcript.)
if [ "$1" = --version ]; then exit 0; fi
prompt=$(cat)
printf '%s\\n' "$prompt" >> '${log}'
if [ "$prompt" = hold ]; then while [ ! -e '${gate}' ]; do sleep 0.05; done; fi
echo '{"type":"system","subtype":"init","claude_code_version":"0.0.0","model":"sonnet"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"ok","num_turns":1,"total_cost_usd":0}'
`,
    { mode: 0o755 },
  )
  const { manager: m } = makeManager({ dir, backend, claudePath: cli, sandbox: 'none' })
  t.after(() => m.close())
  const r = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager: m, taskDefaults: { queueTimeoutMs: 240_000 }, onError: null })
  const { session } = await jsonOf(await r.session.POST(post('session', { action: 'getOrCreate', projectId: 'order' })), 200)
  const first = r.task.POST(post('task', { prompt: 'hold', projectId: 'order', sessionId: session.id }))
  t.after(() => fs.writeFileSync(gate, '')) // a failure below must not leave the first task waiting
  await until('the first task to start', () => fs.existsSync(log))
  const streams = []
  for (let i = 0; i < N; i++) {
    const res = await r.stream.POST(post('stream', { prompt: `order ${i}`, projectId: 'order', sessionId: session.id }))
    t.assert.strictEqual(res.status, 200)
    streams.push(res)
  }
  t.assert.deepStrictEqual(fs.readFileSync(log, 'utf8'), 'hold\n', 'all of them wait behind the first task')
  fs.writeFileSync(gate, '')
  t.assert.strictEqual((await jsonOf(await first, 200)).success, true)
  const results = await Promise.all(streams.map(async (res) => parseSse(await res.text()).find((e) => e.event === 'result')?.data))
  t.assert.deepStrictEqual(results.map((x) => x?.success), Array(N).fill(true))
  const started = fs.readFileSync(log, 'utf8').trim().split('\n')
  t.assert.deepStrictEqual(started, ['hold', ...Array.from({ length: N }, (_, i) => `order ${i}`)], 'the CLIs got their prompts in arrival order')
  const rows = (await jsonOf(await r.session.POST(post('session', { action: 'tasks', sessionId: session.id })), 200)).tasks
  t.assert.strictEqual(rows.length, N + 1)
})

test('next routes: the stream and session routes keep server paths from the browser unless exposeServerDetails', async (t) => {
  server.reset()
  const res = await routes.stream.POST(post('stream', { prompt: 'where are you', projectId: 'paths' }))
  const events = parseSse(await res.text())
  const init = events.find((e) => e.data.type === 'system' && e.data.subtype === 'init')
  t.assert.ok(init, 'the init event is forwarded')
  t.assert.match(init.data.session_id, UUID)
  for (const key of Object.keys(init.data)) {
    t.assert.ok(['type', 'subtype', 'session_id', 'model', 'permissionMode', 'uuid'].includes(key), `init event field ${key}`)
  }
  const all = JSON.stringify(events)
  t.assert.ok(!all.includes(work), 'no event names the working directory')
  t.assert.ok(!all.includes(configDir), 'no event names the config folder')
  t.assert.ok(!all.includes('"cwd"'))
  const sessionId = events.at(-1).data.sessionId
  const { session } = await jsonOf(await routes.session.GET(get(`session?sessionId=${sessionId}`)), 200)
  t.assert.strictEqual(session.id, sessionId)
  t.assert.ok(!('workingDirectory' in session))
  t.assert.ok(!JSON.stringify(await jsonOf(await routes.session.GET(get('session?projectId=paths')), 200)).includes(work))

  // exposeServerDetails: the CLI's init event as it is.
  const open = createClaudeRoutes({ getUserId: () => 'alice', manager, exposeServerDetails: true, onError: null })
  const raw = parseSse(await (await open.stream.POST(post('stream', { prompt: 'and now', projectId: 'paths', sessionId }))).text())
  const rawInit = raw.find((e) => e.data.type === 'system' && e.data.subtype === 'init')
  t.assert.strictEqual(typeof rawInit.data.cwd, 'string')
  t.assert.ok(Array.isArray(rawInit.data.tools))
  t.assert.match((await jsonOf(await open.session.GET(get(`session?sessionId=${sessionId}`)), 200)).session.workingDirectory, /\/work$/)
})

test('next routes: oversized bodies and prompts are a 413, never a 500', async (t) => {
  const seen = []
  const r = createClaudeRoutes({ getUserId: () => 'gina', manager, onError: (e) => seen.push(e) })
  // Over the default 1 MiB body limit.
  const big = 'x'.repeat(2 * 1024 * 1024)
  await expectError(t, await r.task.POST(post('task', { prompt: big, projectId: 'huge' })), 413, 'PAYLOAD_TOO_LARGE', /1048576/)
  await expectError(t, await r.stream.POST(post('stream', { prompt: big, projectId: 'huge' })), 413, 'PAYLOAD_TOO_LARGE')
  // Within a raised body limit, but over the manager's 4 MiB prompt limit.
  const roomy = createClaudeRoutes({ getUserId: () => 'gina', manager, maxBodyBytes: 8 * 1024 * 1024, onError: (e) => seen.push(e) })
  const huge = 'x'.repeat(5 * 1024 * 1024)
  await expectError(t, await roomy.task.POST(post('task', { prompt: huge, projectId: 'huge' })), 413, 'CONTEXT_OVERFLOW')
  await expectError(t, await roomy.stream.POST(post('stream', { prompt: huge, projectId: 'huge' })), 413, 'CONTEXT_OVERFLOW')
  // More tokens than the context window.
  const small = makeManager({ server, contextWindow: 5000 })
  try {
    const tight = createClaudeRoutes({ getUserId: () => 'gina', manager: small.manager, onError: (e) => seen.push(e) })
    const long = 'lorem ipsum dolor sit amet '.repeat(3000)
    await expectError(t, await tight.task.POST(post('task', { prompt: long, projectId: 'huge' })), 413, 'CONTEXT_OVERFLOW', /context window/)
    await expectError(t, await tight.stream.POST(post('stream', { prompt: long, projectId: 'huge' })), 413, 'CONTEXT_OVERFLOW')
  } finally {
    await small.manager.close()
  }
  t.assert.deepStrictEqual(seen, [], 'none of them was a server error')
  t.assert.strictEqual((await manager.listSessions({ userId: 'gina' })).length, 0, 'nothing was stored')
})

test('next routes: model — refused by default, checked against allowedModels', async (t) => {
  server.reset()
  await expectError(t, await routes.task.POST(post('task', { prompt: 'x', projectId: 'models', model: 'opus' })), 400, 'INVALID_ARGUMENT', /allowedModels/)
  t.assert.strictEqual(server.requests.length, 0, 'nothing reached the model')
  const r = createClaudeRoutes({ getUserId: () => 'alice', manager, allowedModels: ['haiku'], taskDefaults: { maxTurns: 2 }, onError: null })
  await expectError(t, await r.task.POST(post('task', { prompt: 'x', projectId: 'models', model: 'opus' })), 400, 'INVALID_ARGUMENT', /allowed models: haiku/)
  const ok = await jsonOf(await r.task.POST(post('task', { prompt: 'pick haiku', projectId: 'models', model: 'haiku', maxTurns: 10000 })), 200)
  t.assert.strictEqual(ok.success, true, JSON.stringify(ok.error))
  const models = server.requests.filter((q) => q.path === '/v1/messages' && JSON.stringify(q.body).includes('pick haiku')).map((q) => q.body.model)
  t.assert.ok(models.length > 0 && models.every((m) => /haiku/.test(m)), `models asked for: ${models}`)
})

test('next routes: no user is a 401 on every route, before the body is read', async (t) => {
  const calls = [
    routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { user: null })),
    routes.stream.POST(post('stream', { prompt: 'x', projectId: 'p' }, { user: null })),
    routes.session.GET(get('session?projectId=p', { user: null })),
    routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'p' }, { user: null })),
    routes.compact.GET(get('compact?sessionId=00000000-0000-4000-8000-000000000000', { user: null })),
    routes.compact.POST(post('compact', { sessionId: '00000000-0000-4000-8000-000000000000' }, { user: null })),
    routes.task.POST(post('task', null, { user: null, raw: '{not json' })),
  ]
  for (const res of await Promise.all(calls)) await expectError(t, res, 401, 'UNAUTHORIZED')
})

test('next routes: malformed JSON and invalid arguments are 400 INVALID_ARGUMENT with a message', async (t) => {
  const cases = [
    [routes.task.POST(post('task', null, { raw: '{"prompt": ' })), /not valid JSON/],
    [routes.task.POST(post('task', null, { raw: '' })), /empty/],
    [routes.task.POST(post('task', null, { raw: '[1,2]' })), /JSON object/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { contentType: 'text/plain' })), /application\/json/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { contentType: null })), /application\/json/],
    // Only application/json itself, with at most a UTF-8 charset.
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { contentType: 'application/x-evil+json; charset=utf-16' })), /application\/json/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { contentType: 'application/json; charset=utf-16' })), /application\/json/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { contentType: 'application/vnd.api+json' })), /application\/json/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p' }, { contentType: 'application/jsonx' })), /application\/json/],
    [routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'p\u202Eexe' })), /projectId/],
    [routes.session.POST(post('session', { action: 'getOrCreate', projectId: '\uFEFFp' })), /projectId/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p', userId: 'mallory' })), /userId/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p', allowedTools: ['Bash'] })), /allowedTools/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p', permissionMode: 'bypassPermissions' })), /permissionMode/],
    [routes.task.POST(post('task', { projectId: 'p' })), /prompt/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p', sessionId: 'not-a-uuid' })), /sessionId/],
    [routes.task.POST(post('task', { prompt: 'x', projectId: 'p', maxTurns: -1 })), /maxTurns/],
    [routes.stream.POST(post('stream', { prompt: 'x', projectId: 'p\n' })), /projectId/],
    [routes.stream.POST(post('stream', null, { raw: 'nope' })), /not valid JSON/],
    [routes.session.POST(post('session', { projectId: 'p' })), /action/],
    [routes.session.POST(post('session', { action: 'explode' })), /action/],
    [routes.session.POST(post('session', { action: 'fork', sessionId: 'x', extra: 1 })), /extra/],
    [routes.session.POST(post('session', { action: 'getOrCreate' })), /projectId/],
    [routes.session.POST(post('session', { action: 'archive', sessionId: '../../etc' })), /sessionId/],
    [routes.session.POST(post('session', { action: 'cleanup', maxAgeMs: -1 })), /maxAgeMs/],
    [routes.session.GET(get('session?projectId=p&limit=many')), /limit/],
    [routes.session.GET(get('session?status=deleted')), /status/],
    [routes.session.GET(get('session?sessionId=42')), /sessionId/],
    [routes.compact.GET(get('compact')), /sessionId/],
    [routes.compact.GET(get('compact?sessionId=00000000-0000-4000-8000-000000000000&threshold=150')), /threshold/],
    [routes.compact.POST(post('compact', { sessionId: '00000000-0000-4000-8000-000000000000', now: true })), /now/],
  ]
  for (const [i, [res, message]] of cases.entries()) {
    const error = await expectError(t, await res, 400, 'INVALID_ARGUMENT').catch((e) => {
      throw new Error(`case ${i}: ${e.message}`)
    })
    t.assert.match(error.message, message, `case ${i}`)
  }
  t.assert.strictEqual((await manager.listSessions({ userId: 'alice', projectId: 'p' })).length, 0, 'nothing was stored')
})

test('next routes: another user\'s session is a 404 everywhere, exactly like a missing one', async (t) => {
  server.reset()
  const mine = await jsonOf(await routes.task.POST(post('task', { prompt: 'private', projectId: 'secret' }, { user: 'bob' })), 200)
  t.assert.strictEqual(mine.success, true)
  const id = mine.sessionId
  const asMallory = { user: 'mallory' }
  const calls = [
    routes.session.GET(get(`session?sessionId=${id}`, asMallory)),
    routes.task.POST(post('task', { prompt: 'steal', projectId: 'secret', sessionId: id }, asMallory)),
    routes.task.POST(post('task', { prompt: 'steal', projectId: 'secret', sessionId: id, forkSession: true }, asMallory)),
    routes.stream.POST(post('stream', { prompt: 'steal', projectId: 'secret', sessionId: id }, asMallory)),
    routes.session.POST(post('session', { action: 'fork', sessionId: id }, asMallory)),
    routes.session.POST(post('session', { action: 'archive', sessionId: id }, asMallory)),
    routes.session.POST(post('session', { action: 'delete', sessionId: id }, asMallory)),
    routes.session.POST(post('session', { action: 'messages', sessionId: id }, asMallory)),
    routes.session.POST(post('session', { action: 'tasks', sessionId: id }, asMallory)),
    routes.compact.GET(get(`compact?sessionId=${id}`, asMallory)),
    routes.compact.POST(post('compact', { sessionId: id }, asMallory)),
    // Bob's own session under another project id is not found either.
    routes.task.POST(post('task', { prompt: 'x', projectId: 'other', sessionId: id }, { user: 'bob' })),
  ]
  for (const [i, res] of (await Promise.all(calls)).entries()) {
    const e = await expectError(t, res, 404, 'SESSION_NOT_FOUND').catch((err) => {
      throw new Error(`case ${i}: ${err.message}`)
    })
    t.assert.ok(!e.message.includes('bob'), 'the owner is not revealed')
  }
  const list = await jsonOf(await routes.session.GET(get('session?projectId=secret', asMallory)), 200)
  t.assert.deepStrictEqual(list.sessions, [])
  const bobs = await jsonOf(await routes.session.GET(get('session?projectId=secret', { user: 'bob' })), 200)
  t.assert.strictEqual(bobs.sessions.length, 1)
  t.assert.strictEqual(bobs.sessions[0].status, 'active', 'nothing mallory did changed it')
  t.assert.strictEqual(bobs.sessions[0].taskCount, 1)
})

test('next routes: a session running a task is 409 SESSION_BUSY for another task, a stream and a delete', async (t) => {
  server.reset()
  const { session } = await jsonOf(await routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'busy' })), 200)
  server.enqueue({ text: 'finally done', delayMs: 4000 })
  const first = routes.task.POST(post('task', { prompt: 'slow', projectId: 'busy', sessionId: session.id }))
  await until('the slow task to reach the model', () => server.requests.some((r) => r.path === '/v1/messages'))
  const [task, stream, del] = await Promise.all([
    routes.task.POST(post('task', { prompt: 'me too', projectId: 'busy', sessionId: session.id })),
    routes.stream.POST(post('stream', { prompt: 'me too', projectId: 'busy', sessionId: session.id })),
    routes.session.POST(post('session', { action: 'delete', sessionId: session.id })),
  ])
  for (const res of [task, del]) await expectError(t, res, 409, 'SESSION_BUSY')
  // The stream was answered as soon as its task was queued, so the refusal (after
  // queueTimeoutMs) is its `error` event, with the status the task route would have used.
  t.assert.strictEqual(stream.status, 200)
  const events = parseSse(await stream.text())
  t.assert.deepStrictEqual(events.map((e) => e.event), ['message', 'error'])
  t.assert.strictEqual(events[0].data.type, 'task_queued')
  t.assert.deepStrictEqual([events[1].data.error.code, events[1].data.error.status], ['SESSION_BUSY', 409])
  const done = await jsonOf(await first, 200)
  t.assert.strictEqual(done.result, 'finally done')
  const tasks = (await jsonOf(await routes.session.POST(post('session', { action: 'tasks', sessionId: session.id })), 200)).tasks
  t.assert.strictEqual(tasks.length, 1, 'the refused requests left no task behind')
})

test('next routes: session actions and the compact routes', async (t) => {
  server.reset()
  const P = 'actions'
  const created = await jsonOf(await routes.session.POST(post('session', { action: 'getOrCreate', projectId: P })), 200)
  t.assert.strictEqual(created.created, true)
  const same = await jsonOf(await routes.session.POST(post('session', { action: 'getOrCreate', projectId: P })), 200)
  t.assert.deepStrictEqual([same.created, same.session.id], [false, created.session.id])
  const id = created.session.id

  // The context meter of a session that never ran, then after a task with a large reported usage.
  const empty = (await jsonOf(await routes.compact.GET(get(`compact?sessionId=${id}`)), 200)).context
  t.assert.strictEqual(empty.estimatedTokens, 0)
  server.enqueue({ text: 'big context', usage: { input_tokens: 850000 } })
  const ran = await jsonOf(await routes.task.POST(post('task', { prompt: 'fill it', projectId: P, sessionId: id })), 200)
  t.assert.strictEqual(ran.success, true)
  const full = (await jsonOf(await routes.compact.GET(get(`compact?sessionId=${id}`)), 200)).context
  t.assert.strictEqual(full.shouldCompact, true, JSON.stringify(full))
  const lenient = (await jsonOf(await routes.compact.GET(get(`compact?sessionId=${id}&threshold=99`)), 200)).context
  t.assert.strictEqual(lenient.shouldCompact, false)

  // Compact: the meter drops.
  const compacted = await jsonOf(await routes.compact.POST(post('compact', { sessionId: id })), 200)
  t.assert.strictEqual(compacted.success, true, JSON.stringify(compacted.error))
  t.assert.ok(compacted.contextInfo.estimatedTokens < full.estimatedTokens / 10, `dropped: ${full.estimatedTokens} -> ${compacted.contextInfo.estimatedTokens}`)
  const after = (await jsonOf(await routes.compact.GET(get(`compact?sessionId=${id}`)), 200)).context
  t.assert.strictEqual(after.estimatedTokens, compacted.contextInfo.estimatedTokens)

  // A session with no conversation cannot be compacted: a 500 carrying the code and its message.
  const { session: blank } = await jsonOf(await routes.session.POST(post('session', { action: 'startFresh', projectId: 'blank' })), 200)
  const failed = await expectError(t, await routes.compact.POST(post('compact', { sessionId: blank.id })), 500, 'COMPACT_FAILED', /nothing to compact/)
  t.assert.ok(failed)

  // Fork, list with parentId, archive, startFresh, delete, cleanup.
  const fork = (await jsonOf(await routes.session.POST(post('session', { action: 'fork', sessionId: id, title: 'what if' })), 200)).session
  t.assert.strictEqual(fork.parentId, id)
  t.assert.strictEqual(fork.title, 'what if')
  const forks = (await jsonOf(await routes.session.GET(get(`session?parentId=${id}`)), 200)).sessions
  t.assert.deepStrictEqual(forks.map((s) => s.id), [fork.id])
  const listed = (await jsonOf(await routes.session.GET(get(`session?projectId=${P}&limit=10&offset=0`)), 200)).sessions
  t.assert.deepStrictEqual(new Set(listed.map((s) => s.id)), new Set([id, fork.id]))
  t.assert.strictEqual(listed[0].id, fork.id, 'newest activity first')
  const archived = (await jsonOf(await routes.session.POST(post('session', { action: 'archive', sessionId: fork.id })), 200)).session
  t.assert.strictEqual(archived.status, 'archived')
  t.assert.strictEqual((await jsonOf(await routes.session.GET(get(`session?projectId=${P}&status=archived`)), 200)).sessions.length, 1)
  const fresh = await jsonOf(await routes.session.POST(post('session', { action: 'startFresh', projectId: P })), 200)
  t.assert.strictEqual(fresh.archived, 1)
  t.assert.notStrictEqual(fresh.session.id, id)
  const deleted = await jsonOf(await routes.session.POST(post('session', { action: 'delete', sessionId: fork.id })), 200)
  t.assert.deepStrictEqual(deleted, { deleted: true, sessionId: fork.id })
  await expectError(t, await routes.session.GET(get(`session?sessionId=${fork.id}`)), 404, 'SESSION_NOT_FOUND')
  await new Promise((r) => setTimeout(r, 20))
  const cleaned = await jsonOf(await routes.session.POST(post('session', { action: 'cleanup', projectId: P, maxAgeMs: 1 })), 200)
  t.assert.deepStrictEqual(cleaned, { deleted: 1, remaining: 1 })

  // History replay of a session that never ran: empty.
  const none = await jsonOf(await routes.session.POST(post('session', { action: 'messages', sessionId: fresh.session.id, limit: 10 })), 200)
  t.assert.deepStrictEqual([none.messages, none.total], [[], 0])
})

test('next routes: the messages action answers what getMessages does for the user, with limit and offset', async (t) => {
  server.reset()
  const ran = await jsonOf(await routes.task.POST(post('task', { prompt: 'remember me', projectId: 'history' }, { user: 'carol' })), 200)
  t.assert.strictEqual(ran.success, true, JSON.stringify(ran.error))
  const all = await manager.getMessages(ran.sessionId, 'carol')
  t.assert.deepStrictEqual(all.messages.map((m) => m.role), ['user', 'assistant'])
  const page = await jsonOf(await routes.session.POST(post('session', { action: 'messages', sessionId: ran.sessionId, limit: 1, offset: 1 }, { user: 'carol' })), 200)
  // The route removes server paths only; here there are none, so it is getMessages' answer as is.
  t.assert.deepStrictEqual(page, JSON.parse(JSON.stringify(await manager.getMessages(ran.sessionId, 'carol', { limit: 1, offset: 1 }))))
  t.assert.deepStrictEqual([page.offset, page.total, page.messages.length, page.messages[0].text], [1, 2, 1, 'Echo #1: remember me'])
  const first = await jsonOf(await routes.session.POST(post('session', { action: 'messages', sessionId: ran.sessionId, limit: 1, offset: 0 }, { user: 'carol' })), 200)
  t.assert.strictEqual(first.messages[0].text.trim(), 'remember me')
  // The user comes from getUserId, never the body.
  await expectError(t, await routes.session.POST(post('session', { action: 'messages', sessionId: ran.sessionId, userId: 'carol' }, { user: 'dave' })), 400, 'INVALID_ARGUMENT')
  await expectError(t, await routes.session.POST(post('session', { action: 'messages', sessionId: ran.sessionId }, { user: 'dave' })), 404, 'SESSION_NOT_FOUND')
})

test('next routes: options — taskDefaults, clientTaskFields, getUserId throwing a Response, private 500s', async (t) => {
  server.reset()
  t.assert.throws(() => createClaudeRoutes({}), TypeError)
  t.assert.throws(() => createClaudeRoutes({ getUserId: 'alice' }), TypeError)

  const r = createClaudeRoutes({ getUserId: () => 'dave', manager, taskDefaults: { title: 'from the server', maxTurns: 3 }, clientTaskFields: ['prompt', 'projectId'] })
  await expectError(t, await r.task.POST(post('task', { prompt: 'x', projectId: 'd', model: 'opus' })), 400, 'INVALID_ARGUMENT', /model/)
  const ok = await jsonOf(await r.task.POST(post('task', { prompt: 'x', projectId: 'd' })), 200)
  t.assert.strictEqual((await manager.getSession(ok.sessionId, 'dave')).title, 'from the server')

  const redirect = createClaudeRoutes({
    getUserId: () => {
      throw Response.redirect('http://localhost/login', 302)
    },
    manager,
  })
  const res = await redirect.session.GET(get('session'))
  t.assert.strictEqual(res.status, 302)
  t.assert.strictEqual(res.headers.get('location'), 'http://localhost/login')

  const seen = []
  const broken = createClaudeRoutes({
    getUserId: () => 'erin',
    manager: () => {
      throw Object.assign(new Error('cannot open /srv/secret/path/sessions.db'), { code: 'STORE_ERROR' })
    },
    onError: (e) => seen.push(e),
  })
  const e = await expectError(t, await broken.session.GET(get('session')), 500, 'STORE_ERROR')
  t.assert.ok(!e.message.includes('/srv/secret'), 'private details stay on the server')
  t.assert.strictEqual(seen.length, 1)
  const thrown = createClaudeRoutes({ getUserId: () => 'erin', manager: () => { throw new TypeError('oops') }, onError: null })
  await expectError(t, await thrown.session.GET(get('session')), 500, 'INTERNAL')

  t.assert.deepStrictEqual(['INVALID_ARGUMENT', 'UNAUTHORIZED', 'SESSION_NOT_FOUND', 'SESSION_BUSY', 'API_ERROR'].map(statusForCode), [400, 401, 404, 409, 500])
})

test('next routes: getSessionManager is one manager per process, kept on globalThis', async (t) => {
  const { dir } = makeManager({ server }) // just for a temp folder
  const a = getSessionManager({ databasePath: `${dir}/shared.db`, workingDirectory: workDir(dir) })
  const b = getSessionManager({ databasePath: `${dir}/ignored.db`, workingDirectory: workDir(dir) })
  t.assert.strictEqual(a, b)
  t.assert.strictEqual(a.databasePath, `${dir}/shared.db`)
  t.assert.strictEqual(globalThis[Symbol.for('claude-session-manager.next.manager')], a)
  // A second copy of the module (what a hot reload evaluates) still finds it.
  delete require.cache[require.resolve('../next/index.js')]
  const reloaded = require('../next/index.js')
  t.assert.notStrictEqual(reloaded.getSessionManager, getSessionManager)
  t.assert.strictEqual(reloaded.getSessionManager(), a)
  // The default routes use it.
  const r = createClaudeRoutes({ getUserId: () => 'frank' })
  await jsonOf(await r.session.POST(post('session', { action: 'getOrCreate', projectId: 'g' })), 200)
  t.assert.strictEqual((await a.listSessions({ userId: 'frank' })).length, 1)
  await closeSessionManager()
  t.assert.strictEqual(globalThis[Symbol.for('claude-session-manager.next.manager')], undefined)
  await t.assert.rejects(a.listSessions({ userId: 'frank' }), (e) => e.code === 'CLOSED')
  const c = getSessionManager({ databasePath: `${dir}/shared.db`, workingDirectory: workDir(dir) })
  t.assert.notStrictEqual(c, a)
  await closeSessionManager()
})

test('next routes: application/json with an optional UTF-8 charset is accepted, in any letter case', async (t) => {
  for (const contentType of ['application/json', 'application/json; charset=utf-8', 'Application/JSON; Charset=UTF-8', 'application/json;charset="utf-8"']) {
    const res = await routes.session.POST(post('session', { action: 'getOrCreate', projectId: 'ct' }, { contentType }))
    t.assert.strictEqual(res.status, 200, `${contentType}: ${await res.text()}`)
  }
})

test('next routes: the prewarm action starts the session\'s CLI with the options the stream route gives its task (taskDefaults, permissionPrompts); the task then runs in it', async (t) => {
  server.reset()
  const warm = makeManager({ server, warmIdleMs: 600_000 })
  t.after(() => warm.manager.close())
  const r = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager: warm.manager, onError: null, permissionPrompts: true, taskDefaults: { model: 'haiku', maxTurns: 5 } })
  const { session } = await jsonOf(await r.session.POST(post('session', { action: 'getOrCreate', projectId: 'pw' })), 200)
  t.assert.deepStrictEqual(await jsonOf(await r.session.POST(post('session', { action: 'prewarm', sessionId: session.id, projectId: 'pw' })), 200), { status: 'started' })
  const cli = () => processesMentioning(session.id).filter((pid) => /claude/.test(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]))
  await until('the CLI to run', () => cli().length > 0)
  const before = cli()
  t.assert.strictEqual(server.requests.length, 0, 'no model call before the prompt')
  // The stream route's task (haiku, maxTurns 5, permission prompts) runs in that process.
  const res = await r.stream.POST(post('stream', { prompt: 'after a prewarm', projectId: 'pw', sessionId: session.id }))
  const events = parseSse(await res.text())
  t.assert.strictEqual(events.at(-1).event, 'result')
  t.assert.strictEqual(events.at(-1).data.result, 'Echo #1: after a prewarm')
  t.assert.deepStrictEqual(cli(), before, 'the prewarmed CLI ran the task')
  t.assert.ok(server.requests.at(-1).body.model.includes('haiku'))
  // Someone else's session, a field the client may not set, no session.
  await expectError(t, await r.session.POST(post('session', { action: 'prewarm', sessionId: session.id }, { user: 'mallory' })), 404, 'SESSION_NOT_FOUND')
  await expectError(t, await r.session.POST(post('session', { action: 'prewarm', sessionId: session.id, appendSystemPrompt: 'x' })), 400, 'INVALID_ARGUMENT')
  await expectError(t, await r.session.POST(post('session', { action: 'prewarm', projectId: 'pw' })), 400, 'INVALID_ARGUMENT')
})
