// A task is not a connection: its events are in the store's log, numbered per session; a stream
// closed midway leaves the task running, and re-attaching replays what was missed exactly once, in
// order, then the live events, from this process, another process (SQLite) or another node
// (PostgreSQL: task on A, stream on B, abort from C; the listening connection killed midway). A
// task is stopped from anywhere (`abortTask`). Bad `after` values, another user's session and
// swept events answer clearly.
import { test } from 'node:test'
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
    const ends = (await collect(await manager.streamEvents({ sessionId: ok.sessionId, userId: 'u', after: 0 }))).filter((e) => e.event.type === 'task_end')
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
  const reading = collect(forever)
  setTimeout(() => ac.abort(), 200)
  t.assert.strictEqual((await reading).length, all.length, 'the logged events, then it waits until the signal')
})

/** A child process with a manager on `options` (see fixtures/node-child.mjs). */
async function child(options) {
  const proc = spawn(process.execPath, [FIXTURE, JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const pending = new Map()
  let ready
  const isReady = new Promise((r) => (ready = r))
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const m = JSON.parse(line)
    if (m.ready) return ready()
    if (m.event) return
    const p = pending.get(m.id)
    pending.delete(m.id)
    if (m.ok) p.resolve(m.value)
    else p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }))
  })
  await isReady
  let next = 0
  return {
    proc,
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
  const server = await startStandInServer()
  const root = tempDir('csm-streams-')
  const schema = `csm_streams_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const b = makeManager({ server, dir: path.join(root, 'b'), backend: 'postgres', databaseSchema: schema, nodeId: 'b' })
  const a = await child({ ...b.options, nodeId: 'a', stateDirectory: path.join(root, 'state-a') })
  const c = await child({ ...b.options, nodeId: 'c', stateDirectory: path.join(root, 'state-c') })
  t.after(async () => {
    a.proc.kill('SIGKILL')
    c.proc.kill('SIGKILL')
    await b.manager.close()
    await server.close()
    try {
      execFileSync('psql', [PG_URL, '-qc', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], { stdio: 'ignore' })
    } catch {}
  })
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

  const second = a.call('executeTask', { prompt: 'again', projectId: 'p', userId: 'u', sessionId, includePartialMessages: true })
  await until('the second task on A', () => b.manager.getRunningTask({ sessionId, userId: 'u' }))
  const following = collect(await b.manager.streamEvents({ sessionId, userId: 'u', after: seen.at(-1).seq }))
  t.assert.strictEqual(await c.call('abortTask', { sessionId, userId: 'u' }), true)
  t.assert.strictEqual((await second).error?.code, 'ABORTED')
  const rest = await following
  contiguous(t, rest, seen.at(-1).seq + 1)
  t.assert.strictEqual(rest.at(-1).event.result.error.code, 'ABORTED')
  t.assert.strictEqual((await c.call('listTasks', sessionId, 'u')).at(-1).status, 'aborted')
})
