// Section 6: the PostgreSQL store beside SQLite.
// A. Task overhead on each backend: two managers (one SQLite file, one PostgreSQL schema) over
//    the same claude binary and stand-in, both pointed at the lifetime wrapper (lib/lifetime.c)
//    so the CLI's own lifetime is taken out: overhead = (call → wrapper main) + (the CLI's
//    `result` line → settled promise), as in section 2. New-session and resumed tasks,
//    interleaved run by run. The difference of medians is what PostgreSQL adds per task.
// B. getSessionContext / getSession / listSessions with 100,000 sessions in the PostgreSQL
//    schema (bulk-inserted with generate_series into tables the addon created).
// R. Round trips to PostgreSQL per task, new and resumed: the PostgreSQL manager again, through a
//    counting proxy (lib/pg-proxy.mjs; a separate pass, so the proxy's hop is not in A's times):
//    flights before the CLI's main (on the task's path: not the event log's writer, which runs
//    beside it until the task's end waits for it, nor the last task's lease release, taken over),
//    after its result line (all but that release), and in all.
// C. Three Node processes (three "nodes") sharing one schema, 50 new-session tasks each, 4 at a
//    time per node: wall time, tasks per second, every task row written — and the same on one
//    SQLite file shared by three processes.
// --model-ms=N makes the stand-in wait N ms before each reply (default 0, at once): with a model
// that takes time, the transcript lines the CLI mirrors before its result are stored before it
// comes, as with a real model, instead of being written when it comes.
// --parts=A,R,B,C picks the parts (default all). --baseline=<an older build's .node> adds a third
// manager to A, PostgreSQL on that build (`baseline/…` rows), interleaved with the other two, so
// that both builds' PostgreSQL overhead is measured in the same run, under the same noise;
// with --baseline-store=sqlite the older build runs on SQLite instead (both builds' SQLite
// overhead, in the same run).
// Needs a database: --url=postgresql://… or CSM_BENCH_DATABASE_URL or CSM_TEST_DATABASE_URL;
// without one the section records that it was skipped. Each run uses schemas of its own and
// drops them at the end.
import fs from 'node:fs'
import path from 'node:path'
import { fork, execFileSync } from 'node:child_process'
import { args, median, p90, p99, writeJson, machineLoad } from '../lib/stats.mjs'
import { startPgProxy } from '../lib/pg-proxy.mjs'
import { addon, startStandIn, workspace, LifetimeLog, claudeBinary, timeStoreCalls, BENCH_SANDBOX } from '../lib/harness.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const url = opt.url || process.env.CSM_BENCH_DATABASE_URL || process.env.CSM_TEST_DATABASE_URL || ''
if (!url) {
  writeJson(opt.json, { skipped: 'no PostgreSQL URL (--url=, CSM_BENCH_DATABASE_URL or CSM_TEST_DATABASE_URL)' })
  process.exit(0)
}
const RUNS = Number(opt.runs ?? (quick ? 4 : 20))
const SESSIONS = Number(opt.sessions ?? (quick ? 10_000 : 100_000))
const NODES = 3
const PER_NODE = Number(opt.perNode ?? (quick ? 10 : 50))
const wrapper = opt.wrapper
if (!wrapper) throw new Error('--wrapper=<path of the compiled lib/lifetime.c> is required')
const real = claudeBinary()
const ns = () => process.hrtime.bigint()
const ms = (a, b) => Number(b - a) / 1e6
const stat = (v) => ({ median: median(v), p90: p90(v), p99: p99(v), n: v.length })
const psql = (sql) => execFileSync('psql', [url, '-v', 'ON_ERROR_STOP=1', '-qtAc', sql], { encoding: 'utf8' })
const schemas = []
const schema = (tag) => {
  const s = `csm_bench_${tag}_${process.pid}`
  schemas.push(s)
  return s
}
const out = { load: [machineLoad()], database: url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@') }
out.server = psql('SHOW server_version').trim()
const MODEL_MS = Number(opt['model-ms'] ?? 0)
out.modelMs = MODEL_MS
const standIn = await startStandIn({ delayMs: MODEL_MS })
const parts = new Set(String(opt.parts ?? 'A,R,B,C').split(','))

try {
  // ---- A: overhead per task, SQLite vs PostgreSQL -------------------------------------------
  if (parts.has('A')) {
    const { createRequire } = await import('node:module')
    const baseline = opt.baseline ? createRequire(import.meta.url)(path.resolve(String(opt.baseline))) : null
    const make = (kind, lib = addon) => {
      const ws = workspace(`csm-bench-${kind}-`)
      const log = new LifetimeLog(path.join(ws.dir, 'lifetime.log'))
      const sqlite = kind === 'sqlite' || (kind === 'baseline' && opt['baseline-store'] === 'sqlite')
      const store = sqlite ? { databasePath: ws.db } : { databaseUrl: url, databaseSchema: schema(kind === 'baseline' ? 'baseline' : 'overhead') }
      const m = new lib.SessionManager({
        warmIdleMs: 0, // the cold path: one CLI per task, as the lifetime wrapper measures
        sandbox: BENCH_SANDBOX,
        ...store,
        workingDirectory: ws.work,
        claudePath: wrapper,
        env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config, REAL_CLAUDE: real, LIFETIME_LOG: log.file },
      })
      return { m, log, ws, pg: !sqlite }
    }
    const sides = { sqlite: make('sqlite'), postgres: make('postgres'), ...(baseline ? { baseline: make('baseline', baseline) } : {}) }
    const one = async (side, sessionId) => {
      const t0 = ns()
      const r = await side.m.executeTask({ prompt: 'Reply with one short sentence about databases.', projectId: 'bench', userId: 'u', sessionId })
      const t1 = ns()
      if (!r.success) throw new Error(`executeTask failed: ${r.error?.code} ${r.error?.message}`)
      const life = (await side.log.next()).sort((a, b) => Number(b.reaped - b.forked - (a.reaped - a.forked)))[0]
      // PostgreSQL as in production: the CLI mirrors its transcript into the store.
      if (side.pg && !life.mirror) throw new Error('the CLI ran without --session-mirror on PostgreSQL')
      const pre = ms(t0, life.main)
      const post = ms(life.result ?? life.reaped, t1)
      return { sessionId: r.sessionId, wall: ms(t0, t1), pre, post, overhead: pre + post }
    }
    const rows = Object.fromEntries(Object.keys(sides).flatMap((k) => [[`${k}/new`, []], [`${k}/resume`, []]]))
    // Warm-up, not recorded: the first CLI start, the pool's first connections.
    for (const k of Object.keys(sides)) await one(sides[k], (await one(sides[k])).sessionId)
    for (let i = 0; i < RUNS; i++) {
      const names = Object.keys(sides)
      const order = names.map((_, j) => names[(i + j) % names.length])
      for (const k of order) {
        const n = await one(sides[k])
        rows[`${k}/new`].push(n)
        rows[`${k}/resume`].push(await one(sides[k], n.sessionId))
      }
    }
    out.overhead = {}
    for (const [k, v] of Object.entries(rows)) {
      out.overhead[k] = { overhead: stat(v.map((r) => r.overhead)), pre: stat(v.map((r) => r.pre)), post: stat(v.map((r) => r.post)), wall: stat(v.map((r) => r.wall)) }
    }
    out.overhead.addedNewMs = out.overhead['postgres/new'].overhead.median - out.overhead['sqlite/new'].overhead.median
    out.overhead.addedResumedMs = out.overhead['postgres/resume'].overhead.median - out.overhead['sqlite/resume'].overhead.median
    out.overhead.runs = RUNS
    console.error(`[postgres] overhead added: new ${out.overhead.addedNewMs.toFixed(2)} ms, resumed ${out.overhead.addedResumedMs.toFixed(2)} ms`)
    if (baseline) {
      out.overhead.baselineAddedNewMs = out.overhead['baseline/new'].overhead.median - out.overhead['sqlite/new'].overhead.median
      out.overhead.baselineAddedResumedMs = out.overhead['baseline/resume'].overhead.median - out.overhead['sqlite/resume'].overhead.median
      out.overhead.baseline = path.basename(String(opt.baseline))
      console.error(`[postgres] baseline build adds: new ${out.overhead.baselineAddedNewMs.toFixed(2)} ms, resumed ${out.overhead.baselineAddedResumedMs.toFixed(2)} ms`)
    }
    for (const s of Object.values(sides)) {
      await s.m.close()
      fs.rmSync(s.ws.dir, { recursive: true, force: true })
    }
    out.load.push(machineLoad())
  }

  // ---- R: round trips per task ----------------------------------------------------------------
  if (parts.has('R')) {
    const proxy = await startPgProxy(url)
    const ws = workspace('csm-bench-rt-')
    const log = new LifetimeLog(path.join(ws.dir, 'lifetime.log'))
    const m = new addon.SessionManager({
      warmIdleMs: 0,
      sandbox: BENCH_SANDBOX,
      databaseUrl: proxy.url,
      databaseSchema: schema('roundtrips'),
      workingDirectory: ws.work,
      claudePath: wrapper,
      env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config, REAL_CLAUDE: real, LIFETIME_LOG: log.file },
    })
    const one = async (sessionId) => {
      const t0 = ns()
      const r = await m.executeTask({ prompt: 'Reply with one short sentence about databases.', projectId: 'bench', userId: 'u', sessionId })
      const t1 = ns()
      if (!r.success) throw new Error(`executeTask failed: ${r.error?.code} ${r.error?.message}`)
      const life = (await log.next()).sort((a, b) => Number(b.reaped - b.forked - (a.reaped - a.forked)))[0]
      const flights = await proxy.flights()
      // Before the CLI, on the task's path: not the event log's writer, which runs beside it; after
      // the result, every flight (the task's end waits for its events to be written).
      // (The stop-request watch polls beside the task, nothing waits for it: never counted there;
      // nor the release of the lease the last task kept while its CLI exited, which the next task
      // takes over instead of waiting for: __test__/pg-round-trips.test.mjs proves it.)
      const count = (a, b, skip) => flights.filter((f) => f.t >= a && f.t <= b && !skip.includes(f.kind)).length
      return {
        sessionId: r.sessionId,
        pre: count(t0, life.main, ['events', 'watch', 'release']),
        post: count(life.result ?? life.reaped, t1, ['watch', 'release']),
        total: count(t0, t1, []),
      }
    }
    // Warm-up, not recorded: the pool's connections and prepared statements.
    await one((await one()).sessionId)
    const rows = { new: [], resume: [] }
    for (let i = 0; i < Math.max(3, Math.round(RUNS / 4)); i++) {
      // The last task's exit (another session's) is over: its writes are not this one's.
      await new Promise((r) => setTimeout(r, 300))
      const n = await one()
      rows.new.push(n)
      rows.resume.push(await one(n.sessionId))
    }
    out.roundTrips = {}
    for (const [k, v] of Object.entries(rows)) {
      const pick = (f) => ({ median: median(v.map(f)), max: Math.max(...v.map(f)), n: v.length })
      out.roundTrips[k] = { pre: pick((r) => r.pre), post: pick((r) => r.post), total: pick((r) => r.total) }
    }
    const rt = out.roundTrips
    console.error(`[postgres] round trips: new ${rt.new.pre.median} before the CLI + ${rt.new.post.median} after its result (${rt.new.total.median} in all), resumed ${rt.resume.pre.median} + ${rt.resume.post.median} (${rt.resume.total.median})`)
    await m.close()
    await proxy.close()
    fs.rmSync(ws.dir, { recursive: true, force: true })
  }

  // ---- B: store calls with 100,000 sessions ---------------------------------------------------
  if (parts.has('B')) {
    const ws = workspace('csm-bench-pgstore-')
    const S = schema('store')
    const m0 = new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, databaseUrl: url, databaseSchema: S, workingDirectory: ws.work })
    await m0.close()
    const now = Date.now()
    const t0 = ns()
    // The same sessions as lib/harness.mjs populate() (ids from populatedSession()).
    psql(`
INSERT INTO "${S}".sessions (id, project_id, user_id, status, parent_id, title, model, working_directory,
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens,
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source,
  context_measured_at, materialized, cli_cost_watermark, config_dir)
SELECT lpad(to_hex(i), 8, '0') || '-' || lpad(to_hex((i * 7919) % 65536), 4, '0') || '-4' || lpad(to_hex(i % 4096), 3, '0') || '-'
    || to_hex(8 + (i % 4)) || lpad(to_hex((i / 4) % 4096), 3, '0') || '-' || lpad(to_hex((i::bigint * 2654435761) % 281474976710656), 12, '0'),
  'p' || ((i / 100) % 10), 'u' || (i % 100),
  CASE WHEN i % 5 = 0 THEN 'archived' ELSE 'active' END, NULL, 'session ' || i, 'sonnet', '${ws.work}',
  ${now} - i * 1000::bigint, ${now} - i * 1000::bigint, ${now} - i * 997::bigint, i % 7, (i % 100) / 1000.0, i % 5000, i % 900, i % 20000, i % 3000,
  CASE WHEN i % 3 = 0 THEN NULL ELSE 1000 + i % 150000 END, 200000, CASE WHEN i % 3 = 0 THEN NULL ELSE 'api' END,
  CASE WHEN i % 3 = 0 THEN NULL ELSE ${now} - i * 1000::bigint END, i % 3 <> 0, 0, NULL
FROM generate_series(0, ${SESSIONS - 1}) AS i;
ANALYZE "${S}".sessions;`)
    const populateMs = ms(t0, ns())
    const m = new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, databaseUrl: url, databaseSchema: S, workingDirectory: ws.work })
    const t = await timeStoreCalls(m, SESSIONS, { iter: quick ? 300 : 3000, lists: quick ? 100 : 1000 })
    out.store = { sessions: SESSIONS, populateMs, ...Object.fromEntries(Object.entries(t).map(([k, v]) => [k, stat(v)])) }
    console.error(`[postgres] ${SESSIONS} sessions: getSessionContext median ${(out.store.getSessionContext.median * 1000).toFixed(0)} µs, listSessions median ${out.store.listSessions.median.toFixed(3)} ms`)
    await m.close()
    fs.rmSync(ws.dir, { recursive: true, force: true })
    out.load.push(machineLoad())
  }

  // ---- C: three nodes × PER_NODE tasks, PostgreSQL and SQLite --------------------------------
  if (parts.has('C')) out.nodes = {}
  for (const backend of parts.has('C') ? ['postgres', 'sqlite'] : []) {
    const ws = workspace(`csm-bench-nodes-${backend}-`)
    const store = backend === 'postgres' ? { databaseUrl: url, databaseSchema: schema('nodes') } : { databasePath: ws.db }
    // Create the schema once before the nodes start, so their start-up does not race on it.
    await new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, ...store, workingDirectory: ws.work }).close()
    const t0 = ns()
    const reports = await Promise.all(
      Array.from({ length: NODES }, (_, n) => {
        const config = path.join(ws.dir, `config-${n}`)
        fs.mkdirSync(config)
        const child = fork(new URL('../lib/store-node.mjs', import.meta.url), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
        return new Promise((resolve, reject) => {
          child.once('error', reject)
          child.once('message', resolve)
          child.send({ store, workingDirectory: ws.work, env: { ...standIn.env, CLAUDE_CONFIG_DIR: config }, tasks: PER_NODE, concurrency: 4, node: n })
        })
      }),
    )
    const wall = ms(t0, ns())
    const check = new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, ...store, workingDirectory: ws.work })
    let rows = 0
    for (const r of reports) for (const id of r.sessionIds) rows += (await check.getSession(id, 'u'))?.taskCount ?? 0
    await check.close()
    out.nodes[backend] = {
      nodes: NODES,
      tasksPerNode: PER_NODE,
      wallMs: wall,
      tasksPerSec: (NODES * PER_NODE) / (wall / 1000),
      completed: reports.reduce((a, r) => a + r.completed, 0),
      failures: reports.flatMap((r) => r.failures),
      taskRowsCounted: rows,
    }
    console.error(`[postgres] ${backend}: ${NODES} nodes × ${PER_NODE} tasks in ${(wall / 1000).toFixed(1)} s (${out.nodes[backend].tasksPerSec.toFixed(2)} tasks/s)`)
    fs.rmSync(ws.dir, { recursive: true, force: true })
    out.load.push(machineLoad())
  }
} finally {
  await standIn.close()
  for (const s of schemas) psql(`DROP SCHEMA IF EXISTS "${s}" CASCADE`)
}
writeJson(opt.json, out)
