// A task is not a connection: its events are in the store's log, numbered per session; a stream
// closed midway leaves the task running, and re-attaching replays what was missed exactly once, in
// order, then the live events, from this process, another process (SQLite) or another node
// (PostgreSQL: task on A, stream on B, abort from C; the listening connection killed midway). A
// task is stopped from anywhere (`abortTask`). Bad `after` values, another user's session and
// swept events answer clearly. With CSM_TEST_REDIS_URL the cross-node scenario runs again with
// `redisUrl` (events through Redis), and again with Redis dropped midway (the database path takes
// over; no event lost). A permission answer given on another node reaches the task's node through
// the store's doorbell.
import { test } from 'node:test'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import readline from 'node:readline'
import { spawn, execFileSync } from 'node:child_process'
import { PG_URL, addon, backendTag, makeManager, rejectsWith, skipWithoutPostgres, startStandInServer, tempDir, testBackends, until } from './helpers.mjs'

const FIXTURE = new URL('./fixtures/node-child.mjs', import.meta.url).pathname
const WORDS = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu'
const slow = (chunkDelayMs = 150) => ({ text: WORDS, chunkDelayMs })

/** The text of a stream's events: deltas joined (as a client renders them). */
const textOf = (events) =>
  events
    .filter((e) => e.event.type === 'stream_event' && e.event.event?.delta?.type === 'text_delta')
    .map((e) => e.event.event.delta.text)
    .join('')

/** Reads a stream to its end (or `limit` events, then closes it). */
async function collect(stream, limit = Infinity) {
  const out = []
  for await (const e of stream) {
    out.push(e)
    if (out.length >= limit) break
  }
  return out
}

/** Asserts the seqs are contiguous from `from`. */
function contiguous(t, events, from) {
  t.assert.deepStrictEqual(
    events.map((e) => e.seq),
    events.map((_, i) => from + i),
  )
}

/** A task started on `manager`; resolves once it runs, with its session id and its result promise. */
async function startTask(manager, extra = {}) {
  let started
  const running = new Promise((r) => (started = r))
  const result = manager.executeTask(
    { prompt: 'hi', projectId: 'p', userId: 'u', includePartialMessages: true, ...extra },
    { onEvent: (e) => e.type === 'task_started' && started(e) },
  )
  result.catch(() => {})
  const e = await Promise.race([running, result.then((r) => Promise.reject(new Error(`ended before it started: ${JSON.stringify(r.error)}`)))])
  return { sessionId: e.sessionId, taskId: e.taskId, result }
}

for (const backend of testBackends()) {
  test(`a stream closed midway leaves the task running; re-attaching replays the missed events once, in order, then the live ones${backendTag(backend)}`, async (t) => {
    const server = await startStandInServer()
    const { manager } = makeManager({ server, backend })
    t.after(async () => {
      await manager.close()
      await server.close()
    })
    server.enqueue(slow())
    const { sessionId, taskId, result } = await startTask(manager)
    const running = await manager.getRunningTask({ sessionId, userId: 'u' })
    t.assert.strictEqual(running.taskId, taskId)
    t.assert.strictEqual(running.abortRequested, false)

    // The first reader goes away after a few events; nothing stops the task.
    const first = await collect(await manager.streamEvents({ sessionId, userId: 'u' }), 5)
    t.assert.strictEqual(first.length, 5)
    contiguous(t, first, 1)
    t.assert.strictEqual(first[0].event.type, 'task_started')
    t.assert.strictEqual(first[0].taskId, taskId)

    // Re-attached with the last seen id: the rest, each once, in order, to the task's end.
    const rest = await collect(await manager.streamEvents({ sessionId, userId: 'u', after: first.at(-1).seq }))
    const res = await result
    t.assert.strictEqual(res.success, true, JSON.stringify(res.error))
    contiguous(t, rest, first.at(-1).seq + 1)
    const all = [...first, ...rest]
    t.assert.strictEqual(all.at(-1).event.type, 'task_end')
    t.assert.strictEqual(all.at(-1).event.result.taskId, taskId)
    t.assert.strictEqual(all.filter((e) => e.event.type === 'result').length, 1)
    t.assert.strictEqual(textOf(all), WORDS, 'every word, once')
    t.assert.strictEqual(await manager.getRunningTask({ sessionId, userId: 'u' }), null)

    // Nothing runs: a stream answers at once with what is logged; a second one sees the same.
    const again = await collect(await manager.streamEvents({ sessionId, userId: 'u' }))
    t.assert.deepStrictEqual(
      again.map((e) => [e.seq, e.event.type]),
      all.map((e) => [e.seq, e.event.type]),
    )
    const tail = await collect(await manager.streamEvents({ sessionId, userId: 'u', after: all.at(-1).seq }))
    t.assert.deepStrictEqual(tail, [])
  })

  test(`the log's task_end carries the TaskResult executeTask returned, field for field, for a success and a failure${backendTag(backend)}`, async (t) => {
    const server = await startStandInServer()
    const { manager } = makeManager({ server, backend })
    t.after(async () => {
      await manager.close()
      server.close()
    })
    const ok = await manager.executeTask({ prompt: 'hi', projectId: 'p', userId: 'u' })
    server.enqueue({ error: { status: 500 } })
    const failed = await manager.executeTask({ prompt: 'again', projectId: 'p', userId: 'u', sessionId: ok.sessionId })
    t.assert.strictEqual(failed.success, false)
    const ends = (await collect(await manager.streamEvents({ sessionId: ok.sessionId, userId: 'u', after: 0, exposeServerDetails: true }))).filter((e) => e.event.type === 'task_end')
    // The browser renders the logged result as it renders executeTask's (duration.total, error.code).
    t.assert.deepStrictEqual(
      ends.map((e) => e.event.result),
      [ok, failed].map((r) => JSON.parse(JSON.stringify(r))),
    )
  })

  test(`abortTask stops a running task from another manager on the same store; its row says aborted${backendTag(backend)}`, async (t) => {
    const server = await startStandInServer()
    const a = makeManager({ server, backend })
    const c = { manager: new addon.SessionManager(a.options) }
    t.after(async () => {
      await a.manager.close()
      await c.manager.close()
      await server.close()
    })
    server.enqueue(slow(1000))
    const { sessionId, result } = await startTask(a.manager)
    const follower = collect(await c.manager.streamEvents({ sessionId, userId: 'u' }))
    await rejectsWith(t, c.manager.abortTask({ sessionId, userId: 'someone-else' }), 'SESSION_NOT_FOUND')
    t.assert.strictEqual(await c.manager.abortTask({ sessionId, userId: 'u' }), true)
    const res = await result
    t.assert.strictEqual(res.error?.code, 'ABORTED')
    const tasks = await c.manager.listTasks(sessionId, 'u')
    t.assert.strictEqual(tasks.at(-1).status, 'aborted')
    const seen = await follower
    t.assert.strictEqual(seen.at(-1).event.type, 'task_end')
    t.assert.strictEqual(seen.at(-1).event.result.error.code, 'ABORTED')
    contiguous(t, seen, 1)
    t.assert.strictEqual(await c.manager.abortTask({ sessionId, userId: 'u' }), false, 'nothing runs any more')
  })

  test(`streamEvents refuses bad input clearly; swept events start with one events_truncated${backendTag(backend)}`, async (t) => {
    const server = await startStandInServer()
    const { manager } = makeManager({ server, backend, eventRetentionMs: 1 })
    t.after(async () => {
      await manager.close()
      await server.close()
    })
    const res = await manager.executeTask({ prompt: 'hi', projectId: 'p', userId: 'u' })
    t.assert.strictEqual(res.success, true)
    const sessionId = res.sessionId
    await rejectsWith(t, manager.streamEvents({ sessionId, userId: 'mallory' }), 'SESSION_NOT_FOUND')
    await rejectsWith(t, manager.streamEvents({ sessionId: '00000000-0000-4000-8000-000000000000', userId: 'u' }), 'SESSION_NOT_FOUND')
    for (const after of [-1, 1.5, NaN, Infinity, '3', 1e9]) {
      await rejectsWith(t, manager.streamEvents({ sessionId, userId: 'u', after }), 'INVALID_ARGUMENT', '', `after ${String(after)}`)
    }
    await rejectsWith(t, manager.streamEvents({ sessionId, userId: 'u', bogus: 1 }), 'INVALID_ARGUMENT')
    await rejectsWith(t, manager.getRunningTask({ sessionId, userId: 'mallory' }), 'SESSION_NOT_FOUND')

    // The task ended more than eventRetentionMs ago: the background sweep takes its events; a
    // stream from before them says so once, with the first number still available.
    const last = (await collect(await manager.streamEvents({ sessionId, userId: 'u', follow: false }))).at(-1)?.seq ?? 0
    await manager.executeTask({ prompt: 'again', projectId: 'p', userId: 'u', sessionId })
    const swept = await until('the sweep', async () => {
      const e = await collect(await manager.streamEvents({ sessionId, userId: 'u', follow: false }))
      return e[0]?.event.type === 'events_truncated' && e
    })
    t.assert.ok(swept[0].event.firstSeq > last, JSON.stringify(swept[0]))
    t.assert.strictEqual(swept[0].seq, swept[0].event.firstSeq - 1)
    t.assert.strictEqual(swept.filter((e) => e.event.type === 'events_truncated').length, 1)
  })
}

test('a follower that never reads holds no events and does not slow the task; break and signal end a stream', async (t) => {
  const server = await startStandInServer()
  const { manager } = makeManager({ server })
  t.after(async () => {
    await manager.close()
    await server.close()
  })
  server.enqueue({ text: WORDS.repeat(20), chunkDelayMs: 1 })
  const { sessionId, result } = await startTask(manager)
  const idle = await manager.streamEvents({ sessionId, userId: 'u' })
  const res = await result
  t.assert.strictEqual(res.success, true)
  // Read long after the task ended: everything is there (the log is the buffer).
  const all = await collect(idle)
  contiguous(t, all, 1)
  t.assert.strictEqual(all.at(-1).event.type, 'task_end')
  t.assert.ok(all.length < 200, `text deltas are joined: ${all.length} events`)

  const ac = new AbortController()
  const forever = await manager.streamEvents({ sessionId, userId: 'u', follow: true }, { signal: ac.signal })
  // Aborted 200 ms after the last logged event came (not after a fixed time: a loaded machine may
  // take longer than that to hand them all over).
  const got = []
  const backstop = setTimeout(() => ac.abort(), 30_000) // a follower that hands over too few fails, not hangs
  for await (const e of forever) {
    got.push(e)
    if (got.length === all.length) setTimeout(() => ac.abort(), 200)
  }
  clearTimeout(backstop)
  t.assert.strictEqual(got.length, all.length, 'the logged events, then it waits until the signal')
  t.assert.ok(ac.signal.aborted, 'it ended with the signal, not before')
})

/** A child process with a manager on `options` (see fixtures/node-child.mjs). */
async function child(options) {
  const proc = spawn(process.execPath, [FIXTURE, JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const pending = new Map()
  const events = []
  let ready
  const isReady = new Promise((r) => (ready = r))
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const m = JSON.parse(line)
    if (m.ready) return ready()
    if (m.event) return events.push(m)
    const p = pending.get(m.id)
    pending.delete(m.id)
    if (m.ok) p.resolve(m.value)
    else p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }))
  })
  await isReady
  let next = 0
  return {
    proc,
    /** What its tasks reported (`task_started`, `permission_settled`). */
    events,
    call(method, ...args) {
      const id = next++
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject })
        proc.stdin.write(JSON.stringify({ id, method, args }) + '\n')
      })
    },
  }
}

test('across processes on SQLite: the task runs in another process, this one follows every event in order and stops it', async (t) => {
  const server = await startStandInServer()
  const b = makeManager({ server })
  const a = await child({ ...b.options, stateDirectory: path.join(b.dir, 'state-a') })
  t.after(async () => {
    a.proc.kill('SIGKILL')
    await b.manager.close()
    await server.close()
  })
  server.enqueue(slow(100), slow(1000))
  const created = await a.call('getOrCreateSession', { projectId: 'p', userId: 'u' })
  const sessionId = created.session.id
  const first = a.call('executeTask', { prompt: 'hi', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  await until('the task to run in the other process', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  const seen = await collect(await b.manager.streamEvents({ sessionId, userId: 'u' }))
  const res = await first
  t.assert.strictEqual(res.success, true)
  contiguous(t, seen, 1)
  t.assert.strictEqual(seen.at(-1).event.type, 'task_end')
  t.assert.strictEqual(textOf(seen), WORDS)

  const second = a.call('executeTask', { prompt: 'again', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  const running = await until('the second task', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  t.assert.strictEqual(running.pid, a.proc.pid)
  const following = collect(await b.manager.streamEvents({ sessionId, userId: 'u', after: seen.at(-1).seq }))
  t.assert.strictEqual(await b.manager.abortTask({ sessionId, userId: 'u' }), true)
  t.assert.strictEqual((await second).error?.code, 'ABORTED')
  const rest = await following
  contiguous(t, rest, seen.at(-1).seq + 1)
  t.assert.strictEqual(rest.at(-1).event.result.error.code, 'ABORTED')
  t.assert.strictEqual((await b.manager.listTasks(sessionId, 'u')).at(-1).status, 'aborted')
})

test('across nodes on PostgreSQL: task on A, stream on B, abort from C; B follows through the listener being killed', async (t) => {
  if (skipWithoutPostgres(t)) return
  const { server, a, b, c } = await threeNodes(t)
  server.enqueue(slow(200), slow(1000))
  const created = await a.call('getOrCreateSession', { projectId: 'p', userId: 'u' })
  const sessionId = created.session.id
  const first = a.call('executeTask', { prompt: 'hi', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  const running = await until('the task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  t.assert.strictEqual(running.nodeId, 'a')
  const stream = await b.manager.streamEvents({ sessionId, userId: 'u' })
  const seen = []
  let killed = false
  for await (const e of stream) {
    seen.push(e)
    // Midway, the database drops B's listening connection: B reconnects and reads what it missed.
    if (!killed && textOf(seen).split(' ').length === 3) {
      killed = true
      execFileSync('psql', [PG_URL, '-qAtc', "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'csm-listener'"])
    }
  }
  t.assert.strictEqual((await first).success, true)
  contiguous(t, seen, 1)
  t.assert.ok(killed)
  t.assert.strictEqual(textOf(seen), WORDS)
  t.assert.strictEqual(seen.at(-1).event.type, 'task_end')

  await abortFromC(t, { a, b, c }, sessionId, seen.at(-1).seq)
})

/** A second task on A, followed on B from `after`, stopped from C once it streams: B gets the rest
 * in order, to the ABORTED end; the row says `aborted`. Resolves to the task as B saw it running. */
async function abortFromC(t, { a, b, c }, sessionId, after) {
  const second = a.call('executeTask', { prompt: 'again', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  const running = await until('the second task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  const following = collect(await b.manager.streamEvents({ sessionId, userId: 'u', after }))
  await until('a few words of the second reply', async () => textOf(await b.manager.streamEvents({ sessionId, userId: 'u', after, follow: false }).then(collect)).length > 0)
  t.assert.strictEqual(await c.call('abortTask', { sessionId, userId: 'u' }), true)
  t.assert.strictEqual((await second).error?.code, 'ABORTED')
  const rest = await following
  contiguous(t, rest, after + 1)
  t.assert.strictEqual(rest.at(-1).event.result.error.code, 'ABORTED')
  t.assert.strictEqual((await c.call('listTasks', sessionId, 'u')).at(-1).status, 'aborted')
  return running
}

const REDIS_URL = process.env.CSM_TEST_REDIS_URL || ''
const REDIS_SKIP = 'Redis tests skipped: set CSM_TEST_REDIS_URL=redis://… to run them'

/** Watches what is published on Redis for `sessionId` (a raw RESP PSUBSCRIBE): `count()` batches. */
function redisWatch(url, sessionId) {
  const u = new URL(url)
  const sock = net.connect(Number(u.port || 6379), u.hostname)
  const pattern = `csm:*:${sessionId}`
  const auth = u.password ? `*3\r\n$4\r\nAUTH\r\n$${(u.username || 'default').length}\r\n${u.username || 'default'}\r\n$${decodeURIComponent(u.password).length}\r\n${decodeURIComponent(u.password)}\r\n` : ''
  sock.write(`${auth}*2\r\n$10\r\nPSUBSCRIBE\r\n$${pattern.length}\r\n${pattern}\r\n`)
  let data = ''
  sock.on('data', (d) => (data += d))
  sock.on('error', () => {})
  return { count: () => data.split(`"s":"${sessionId}"`).length - 1, close: () => sock.destroy() }
}

/** A TCP proxy to Redis that the test can drop (every connection cut, nothing accepted) and bring back. */
async function redisProxy(url) {
  const u = new URL(url)
  const [upHost, upPort] = [u.hostname, Number(u.port || 6379)]
  const sockets = new Set()
  let server
  const listen = (port) =>
    new Promise((resolve) => {
      server = net.createServer((c) => {
        const up = net.connect(upPort, upHost)
        for (const s of [c, up]) {
          sockets.add(s)
          s.on('error', () => {})
          s.on('close', () => (sockets.delete(s), c.destroy(), up.destroy()))
        }
        c.pipe(up)
        up.pipe(c)
      })
      server.listen(port, '127.0.0.1', () => resolve(server.address().port))
    })
  const port = await listen(0)
  u.hostname = '127.0.0.1'
  u.port = String(port)
  return {
    url: u.toString(),
    async drop() {
      await new Promise((r) => (server.close(() => r()), sockets.forEach((s) => s.destroy())))
    },
    restore: () => listen(port),
    close() {
      sockets.forEach((s) => s.destroy())
      server.close()
    },
  }
}

/** Three managers on one store: B here, A and C in processes of their own (PostgreSQL when set, else SQLite). */
async function threeNodes(t, extra = {}) {
  const server = await startStandInServer()
  const root = tempDir('csm-streams-')
  const pg = Boolean(PG_URL)
  const schema = `csm_streams_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const store = pg ? { backend: 'postgres', databaseSchema: schema } : {}
  const b = makeManager({ server, dir: path.join(root, 'b'), ...store, nodeId: 'b', ...extra })
  const a = await child({ ...b.options, nodeId: 'a', stateDirectory: path.join(root, 'state-a') })
  const c = await child({ ...b.options, nodeId: 'c', stateDirectory: path.join(root, 'state-c') })
  t.after(async () => {
    a.proc.kill('SIGKILL')
    c.proc.kill('SIGKILL')
    await b.manager.close()
    await server.close()
    if (pg) {
      try {
        execFileSync('psql', [PG_URL, '-qc', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], { stdio: 'ignore' })
      } catch {}
    }
  })
  return { server, a, b, c, root }
}

test('through Redis: task on A, stream on B, abort from C; B gets every event in order, published on Redis; the CLI on A stops, the row says aborted', async (t) => {
  if (!REDIS_URL) return t.skip(REDIS_SKIP)
  const { server, a, b, c } = await threeNodes(t, { redisUrl: REDIS_URL })
  server.enqueue(slow(100), slow(1000))
  const sessionId = (await a.call('getOrCreateSession', { projectId: 'p', userId: 'u' })).session.id
  const watch = redisWatch(REDIS_URL, sessionId)
  t.after(() => watch.close())
  const first = a.call('executeTask', { prompt: 'hi', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  await until('the task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  const seen = await collect(await b.manager.streamEvents({ sessionId, userId: 'u' }))
  t.assert.strictEqual((await first).success, true)
  contiguous(t, seen, 1)
  t.assert.strictEqual(textOf(seen), WORDS)
  t.assert.strictEqual(seen.at(-1).event.type, 'task_end')
  t.assert.ok(watch.count() > 0, 'the live events were published on Redis')

  const running = await abortFromC(t, { a, b, c }, sessionId, seen.at(-1).seq)
  t.assert.strictEqual(running.pid, a.proc.pid)
  // The CLI on A is gone: A's process has no child left.
  await until('the CLI on A to exit', () => {
    try {
      return execFileSync('ps', ['-o', 'pid=', '--ppid', String(a.proc.pid)]).toString().trim() === ''
    } catch {
      return true // ps exits 1 when it lists nothing
    }
  })
})

test('Redis dropped mid-task: B still gets every event, in order, through the database; Redis is used again once it is back', async (t) => {
  if (!REDIS_URL) return t.skip(REDIS_SKIP)
  const proxy = await redisProxy(REDIS_URL)
  t.after(() => proxy.close())
  const { server, a, b } = await threeNodes(t, { redisUrl: proxy.url })
  server.enqueue(slow(150), slow(50))
  const sessionId = (await a.call('getOrCreateSession', { projectId: 'p', userId: 'u' })).session.id
  const first = a.call('executeTask', { prompt: 'hi', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  await until('the task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  const seen = []
  let dropped = false
  for await (const e of await b.manager.streamEvents({ sessionId, userId: 'u' })) {
    seen.push(e)
    if (!dropped && textOf(seen).split(' ').length === 3) {
      dropped = true
      await proxy.drop()
    }
  }
  t.assert.strictEqual((await first).success, true)
  t.assert.ok(dropped)
  contiguous(t, seen, 1)
  t.assert.strictEqual(textOf(seen), WORDS)
  t.assert.strictEqual(seen.at(-1).event.type, 'task_end')

  // Back: the next task's events come through Redis again, and still all of them.
  await proxy.restore()
  const watch = redisWatch(REDIS_URL, sessionId)
  t.after(() => watch.close())
  const second = a.call('executeTask', { prompt: 'again', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  await until('the second task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  const rest = await collect(await b.manager.streamEvents({ sessionId, userId: 'u', after: seen.at(-1).seq }))
  t.assert.strictEqual((await second).success, true)
  contiguous(t, rest, seen.at(-1).seq + 1)
  t.assert.strictEqual(textOf(rest), WORDS)
  await until('a batch published on Redis after it came back', () => watch.count() > 0)
})

test('a permission answer given on another node reaches the task on A through the doorbell; the tool runs', async (t) => {
  const { server, a, b } = await threeNodes(t, { warmIdleMs: 600_000, permissionTimeoutMs: 60_000 })
  // Every node works in B's folder (the same options).
  const file = path.join(b.work, 'answered.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: 'after the answer\n' } } }, { text: 'Done.' })
  const sessionId = (await a.call('getOrCreateSession', { projectId: 'p', userId: 'u' })).session.id
  const run = a.call('executeTask', { prompt: 'write it', projectId: 'p', userId: 'u', sessionId, permissionMode: 'default' }, { waitForAnswers: true })
  // B learns of the request from the event log, and answers it.
  await until('the task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  let request
  for await (const e of await b.manager.streamEvents({ sessionId, userId: 'u' })) {
    if (e.event.type === 'permission_request') {
      request = e.event
      break
    }
  }
  t.assert.strictEqual(request.toolName, 'Write')
  t.assert.strictEqual(fs.existsSync(file), false)
  await b.manager.respondToPermission({ sessionId, userId: 'u', requestId: request.requestId, behavior: 'allow' })
  const r = await run
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'after the answer\n')
  t.assert.ok(a.events.some((e) => e.event === 'permission_settled' && e.requestId === request.requestId), "A's callback was told it was answered elsewhere")
})

test('streamEvents yields each event as the Next.js routes make it public, unless exposeServerDetails: the two filters agree event for event', async (t) => {
  const { publicEvent } = (await import('node:module')).createRequire(import.meta.url)('../next/public.js')
  const server = await startStandInServer()
  const { manager } = makeManager({ server })
  t.after(async () => {
    await manager.close()
    server.close()
  })
  server.enqueue({ toolUse: { name: 'Bash', input: { command: 'echo hi' } } }, { text: 'done' })
  const r = await manager.executeTask({ prompt: 'hi', projectId: 'p', userId: 'u', allowedTools: ['Bash'], includePartialMessages: true })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const read = async (extra) => collect(await manager.streamEvents({ sessionId: r.sessionId, userId: 'u', follow: false, ...extra }))
  const [shown, raw] = [await read({}), await read({ exposeServerDetails: true })]
  t.assert.deepStrictEqual(shown.map((e) => e.seq), raw.map((e) => e.seq))
  t.assert.deepStrictEqual(shown.map((e) => e.event), raw.map((e) => publicEvent(e.event)))
  const init = raw.find((e) => e.event.type === 'system' && e.event.subtype === 'init')
  t.assert.ok(init && init.event.cwd && init.event.tools, 'control: the logged init event names the server folder and the tools')
  t.assert.ok(shown.every((e) => !('cwd' in e.event) && !('tools' in e.event)), 'none does by default')
})
