// Event and permission-answer latency across processes and nodes (benchmark/RESULTS-streams.md).
//
//   node benchmark/streams.mjs [tasks=10] [answers=20]
//
// Env: CSM_TEST_DATABASE_URL (the PostgreSQL rows), CSM_TEST_REDIS_URL (the Redis row),
// BENCH_ADDON (another build's index.js or .node, for "before" figures: no Redis row then).
//
// - Event latency: node A (a process of its own) runs tasks with a slow scripted reply; node B
//   (this process) follows the session with `streamEvents`. Per event: B's time of receipt minus
//   the time A's `onEvent` saw it (both `performance.timeOrigin + performance.now()` on this
//   machine). Text deltas are matched by their place in the text (a logged delta joins several:
//   its latency is that of the first it holds); other events by their order.
// - Permission-answer latency: A runs a task whose permission callback never answers; B reads the
//   request from the stream and answers it with `respondToPermission`; the time from B's call to
//   A's callback being told the request was settled.
import fs from 'node:fs'
import path from 'node:path'
import { fork, execFileSync } from 'node:child_process'
import { addon, startStandIn, tempDir } from './lib/harness.mjs'
import { quantile, fmt } from './lib/stats.mjs'

const TASKS = Number(process.argv[2] || 10)
const ANSWERS = Number(process.argv[3] || 20)
const PG = process.env.CSM_TEST_DATABASE_URL || ''
const REDIS = process.env.CSM_TEST_REDIS_URL || ''
const WORDS = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ')
const now = () => performance.timeOrigin + performance.now()

const standIn = await startStandIn()
const enqueue = standIn.enqueue

/** A node: a manager in a child process. */
async function node(options) {
  const proc = fork(new URL('./lib/streams-node.mjs', import.meta.url), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const pending = new Map()
  const listeners = new Set()
  proc.on('message', (m) => {
    if (m.id !== undefined) {
      const p = pending.get(m.id)
      pending.delete(m.id)
      return m.ok ? p.resolve(m.value) : p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }))
    }
    for (const l of listeners) l(m)
  })
  let next = 0
  const ask = (m) =>
    new Promise((resolve, reject) => {
      const id = next++
      pending.set(id, { resolve, reject })
      proc.send({ ...m, id })
    })
  await ask({ open: options })
  return { ask, on: (l) => listeners.add(l), off: (l) => listeners.delete(l), close: () => ask({ close: true }) }
}

const isDelta = (e) => e.type === 'stream_event' && e.event?.type === 'content_block_delta'
const logOnly = new Set(['task_end', 'permission_request', 'permission_resolved', 'user_message'])

/** Latencies (ms) of one task's events, A's `onEvent` times against B's receipts: `[delta, other]`. */
function latencies(sent, received) {
  const out = []
  const deltas = []
  // Other events in order, by type (`onEvent` sees a few the log does not keep, and the reverse).
  const a = sent.filter((x) => !isDelta(x.e))
  let j = 0
  for (const x of received.filter((y) => !isDelta(y.e) && !logOnly.has(y.e.type))) {
    const k = a.findIndex((y, i) => i >= j && y.e.type === x.e.type)
    if (k < 0) continue
    out.push(x.at - a[k].at)
    j = k + 1
  }
  // Text deltas by offset in the joined text.
  const text = (x) => (x.e.event?.delta?.type === 'text_delta' ? x.e.event.delta.text : null)
  const starts = new Map()
  let off = 0
  for (const x of sent) {
    const t = text(x)
    if (t === null) continue
    starts.set(off, x.at)
    off += t.length
  }
  off = 0
  for (const x of received) {
    const t = text(x)
    if (t === null) continue
    if (starts.has(off)) deltas.push(x.at - starts.get(off))
    off += t.length
  }
  return [deltas, out]
}

async function eventLatency(label, store) {
  const root = tempDir('csm-bench-streams-')
  const work = path.join(root, 'work')
  fs.mkdirSync(work)
  const base = { sandbox: 'none', workingDirectory: work, env: standIn.env, warmIdleMs: 600_000, ...store }
  const b = new addon.SessionManager({ ...base, stateDirectory: path.join(root, 'state-b') })
  const a = await node({ ...base, stateDirectory: path.join(root, 'state-a') })
  const samples = [[], []]
  const { session } = await a.ask({ call: 'getOrCreateSession', args: [{ projectId: 'p', userId: 'u' }] })
  const sessionId = session.id
  // B follows the session from before the first task: every event is a live one.
  const received = []
  const stop = new AbortController()
  const following = (async () => {
    for await (const e of await b.streamEvents({ sessionId, userId: 'u', follow: true }, { signal: stop.signal })) {
      received.push({ at: now(), e: e.event, taskId: e.taskId })
    }
  })().catch(() => {})
  for (let i = 0; i < TASKS + 1; i++) {
    enqueue({ text: WORDS, chunkDelayMs: 25 })
    const r = await a.ask({ run: { prompt: `task ${i}`, projectId: 'p', userId: 'u', sessionId, includePartialMessages: true } })
    if (!r.success) throw new Error(`${label}: task failed: ${JSON.stringify(r.error)}`)
    const taskId = r.events.find((x) => x.e.type === 'task_started').e.taskId
    const end = Date.now() + 30000
    while (!received.some((x) => x.taskId === taskId && x.e.type === 'task_end') && Date.now() < end) await new Promise((res) => setTimeout(res, 20))
    // The first task warms the CLI and the connections: not counted.
    if (i > 0) latencies(r.events, received.filter((x) => x.taskId === taskId)).forEach((l, k) => samples[k].push(...l))
  }
  stop.abort()
  await following
  await a.close()
  await b.close()
  const all = [...samples[0], ...samples[1]]
  return [
    { label: `${label}, text deltas`, n: samples[0].length, p50: quantile(samples[0], 0.5), p99: quantile(samples[0], 0.99) },
    { label: `${label}, other events`, n: samples[1].length, p50: quantile(samples[1], 0.5), p99: quantile(samples[1], 0.99) },
    { label: `${label}, all`, n: all.length, p50: quantile(all, 0.5), p99: quantile(all, 0.99) },
  ]
}

async function answerLatency(label, store) {
  const root = tempDir('csm-bench-answers-')
  const work = path.join(root, 'work')
  fs.mkdirSync(work)
  const base = { sandbox: 'none', workingDirectory: work, env: standIn.env, warmIdleMs: 600_000, permissionTimeoutMs: 60_000, ...store }
  const b = new addon.SessionManager({ ...base, stateDirectory: path.join(root, 'state-b') })
  const a = await node({ ...base, stateDirectory: path.join(root, 'state-a') })
  const samples = []
  let sessionId
  for (let i = 0; i < ANSWERS + 1; i++) {
    enqueue({ toolUse: { name: 'Write', input: { file_path: path.join(work, `f${i}.txt`), content: 'x\n' } } }, { text: 'Done.' })
    let started
    const isStarted = new Promise((r) => (started = r))
    const settled = new Map()
    const l = (m) => {
      if (m.started) started(m.started)
      if (m.settled) settled.set(m.settled, m.at)
    }
    a.on(l)
    const run = a.ask({ run: { prompt: `write ${i}`, projectId: 'p', userId: 'u', sessionId, permissionMode: 'default' }, waitForAnswers: true })
    sessionId = await isStarted
    let request
    const after = (await b.getRunningTask({ sessionId, userId: 'u' }))?.lastSeq ?? 0
    for await (const e of await b.streamEvents({ sessionId, userId: 'u', after: Math.max(0, after - 5) })) {
      if (e.event.type === 'permission_request') {
        request = e.event
        break
      }
    }
    // The request is in the log a moment before it is answerable elsewhere: the answer that lands counts.
    let t0
    for (;;) {
      t0 = now()
      try {
        await b.respondToPermission({ sessionId, userId: 'u', requestId: request.requestId, behavior: 'allow' })
        break
      } catch (e) {
        if (e.code !== 'PERMISSION_REQUEST_NOT_FOUND') throw e
        await new Promise((res) => setTimeout(res, 2))
      }
    }
    const r = await run
    a.off(l)
    if (!r.success) throw new Error(`${label}: task failed: ${JSON.stringify(r.error)}`)
    if (i > 0) samples.push(settled.get(request.requestId) - t0)
  }
  await a.close()
  await b.close()
  return { label, n: samples.length, p50: quantile(samples, 0.5), p99: quantile(samples, 0.99) }
}

const schemas = []
const pg = () => {
  const schema = `csm_bench_streams_${process.pid}_${schemas.length}`
  schemas.push(schema)
  return { databaseUrl: PG, databaseSchema: schema }
}
const sqlite = () => ({ databasePath: path.join(tempDir('csm-bench-db-'), 'sessions.db') })

const rows = []
try {
  const events = async (label, store) => (await eventLatency(label, store)).forEach((r) => rows.push(['events', r]))
  await events('another process (SQLite)', sqlite())
  if (PG) await events('another node (PostgreSQL NOTIFY)', pg())
  if (PG && REDIS && !process.env.BENCH_ADDON) await events('another node (PostgreSQL + Redis)', { ...pg(), redisUrl: REDIS })
  rows.push(['permission answer', await answerLatency('another process (SQLite)', sqlite())])
  if (PG) rows.push(['permission answer', await answerLatency('another node (PostgreSQL)', pg())])
} finally {
  await standIn.close()
  for (const s of schemas) {
    try {
      execFileSync('psql', [PG, '-qc', `DROP SCHEMA IF EXISTS "${s}" CASCADE`], { stdio: 'ignore' })
    } catch {}
  }
}
console.log(`| what | where | samples | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |`)
for (const [what, r] of rows) console.log(`| ${what} | ${r.label} | ${r.n} | ${fmt(r.p50)} | ${fmt(r.p99)} |`)
