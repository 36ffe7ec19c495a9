// Section 4: how cost grows.
// A. With 1k, 10k and 100k sessions in the store: per-task overhead (lifetime wrapper, as in the
//    tasks section) of new and resumed tasks, tasks per second (a batch at concurrency 4), and the
//    latency of the store reads and of creating a session.
// B. As one session's history grows (1, 10, 50 prior turns): resume cost (wall, CLI lifetime,
//    overhead) and the latency of getMessages and estimatePromptTokens.
import fs from 'node:fs'
import path from 'node:path'
import { args, median, p90, writeJson, machineLoad } from '../lib/stats.mjs'
import { addon, claudeBinary, startStandIn, workspace, populate, populatedSession, LifetimeLog, BENCH_SANDBOX } from '../lib/harness.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const wrapper = opt.wrapper
if (!wrapper) throw new Error('--wrapper=<path of the compiled lib/lifetime.c> is required')
const COUNTS = (opt.counts ?? '1000,10000,100000').split(',').map(Number)
const SEQ = quick ? 3 : 8 // sequential new + resumed tasks per store size
const BATCH = quick ? 4 : 16 // tasks in the throughput batch
const CONC = 4
const READS = quick ? 200 : 1000
const LEVELS = (opt.levels ?? '1,10,50').split(',').map(Number)
const PER_LEVEL = quick ? 2 : 5
const real = claudeBinary()
const ns = () => process.hrtime.bigint()
const ms = (a, b) => Number(b - a) / 1e6
const standIn = await startStandIn()
const out = { load: [machineLoad()], sizes: [], history: [] }

function openManager(ws, log) {
  return new addon.SessionManager({ warmIdleMs: 0,
  sandbox: BENCH_SANDBOX,
    databasePath: ws.db,
    workingDirectory: ws.work,
    claudePath: wrapper,
    maxConcurrentTasks: 8,
    env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config, REAL_CLAUDE: real, LIFETIME_LOG: log.file },
  })
}

async function timedTask(manager, log, request) {
  const t0 = ns()
  const r = await manager.executeTask({ prompt: 'Reply with one short sentence.', userId: 'u', ...request })
  const t1 = ns()
  if (!r.success) throw new Error(`task failed: ${r.error?.code} ${r.error?.message}`)
  const [life] = (await log.next()).sort((a, b) => Number(b.reaped - b.forked - (a.reaped - a.forked)))
  // As in section 2: executeTask settles at the end of the CLI's result line.
  return { sessionId: r.sessionId, wall: ms(t0, t1), cli: ms(life.forked, life.reaped), overhead: ms(t0, life.main) + ms(life.result ?? life.reaped, t1) }
}

const stat = (v) => ({ median: median(v), p90: p90(v) })

// ---- A: store size ---------------------------------------------------------------------------
for (const n of COUNTS) {
  const ws = workspace('csm-growth-')
  const log = new LifetimeLog(path.join(ws.dir, 'lifetime.log'))
  new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, databasePath: ws.db, workingDirectory: ws.work }).close()
  await new Promise((r) => setTimeout(r, 50))
  populate(ws.db, n, { workDir: ws.work })
  const manager = openManager(ws, log)
  await timedTask(manager, log, { projectId: 'warm' })
  const fresh = []
  const resumed = []
  for (let i = 0; i < SEQ; i++) {
    const a = await timedTask(manager, log, { projectId: 'growth' })
    fresh.push(a)
    resumed.push(await timedTask(manager, log, { projectId: 'growth', sessionId: a.sessionId }))
  }
  // Throughput: BATCH new-session tasks, CONC at a time.
  let next = 0
  const t0 = ns()
  await Promise.all(
    Array.from({ length: CONC }, async () => {
      while (next < BATCH) {
        next++
        const r = await manager.executeTask({ prompt: 'Reply with one short sentence.', userId: 'u', projectId: `batch-${next}` })
        if (!r.success) throw new Error(`task failed: ${r.error?.code} ${r.error?.message}`)
      }
    }),
  )
  const batchMs = ms(t0, ns())
  await log.next(100) // the batch's records: not per-task figures
  // Store operations at this size.
  const time = async (f) => {
    const s = ns()
    await f()
    return ms(s, ns())
  }
  const ctx = []
  const list = []
  const create = []
  for (let i = 0; i < READS; i++) {
    const s = populatedSession((i * 7919) % n)
    ctx.push(await time(() => manager.getSessionContext(s.id, s.userId)))
    if (i % 4 === 0) list.push(await time(() => manager.listSessions({ userId: s.userId })))
    if (i % 4 === 0) create.push(await time(() => manager.getOrCreateSession({ projectId: `new-${i}`, userId: s.userId, preferActive: false })))
  }
  out.sizes.push({
    sessions: n,
    newTask: { wall: stat(fresh.map((r) => r.wall)), overhead: stat(fresh.map((r) => r.overhead)), cli: stat(fresh.map((r) => r.cli)) },
    resumedTask: { wall: stat(resumed.map((r) => r.wall)), overhead: stat(resumed.map((r) => r.overhead)), cli: stat(resumed.map((r) => r.cli)) },
    batch: { tasks: BATCH, concurrency: CONC, ms: batchMs, tasksPerSec: BATCH / (batchMs / 1000) },
    getSessionContext: stat(ctx),
    listSessions: stat(list),
    createSession: stat(create),
  })
  console.error(
    `[growth] ${n} sessions: overhead new ${median(fresh.map((r) => r.overhead)).toFixed(2)} ms, resumed ${median(resumed.map((r) => r.overhead)).toFixed(2)} ms; ${(BATCH / (batchMs / 1000)).toFixed(2)} tasks/s`,
  )
  await manager.close()
  fs.rmSync(ws.dir, { recursive: true, force: true })
}
out.load.push(machineLoad())

// ---- B: history length -----------------------------------------------------------------------
{
  const ws = workspace('csm-history-')
  const log = new LifetimeLog(path.join(ws.dir, 'lifetime.log'))
  const manager = openManager(ws, log)
  const first = await timedTask(manager, log, { projectId: 'history' })
  const sid = first.sessionId
  let turns = 1
  const transcriptBytes = () => {
    const root = path.join(ws.config, 'projects')
    for (const d of fs.existsSync(root) ? fs.readdirSync(root) : []) {
      const f = path.join(root, d, `${sid}.jsonl`)
      if (fs.existsSync(f)) return fs.statSync(f).size
    }
    return NaN
  }
  const prompt = 'A follow-up question about the earlier answers, of ordinary length for a prompt to an agent.'
  for (const level of LEVELS) {
    while (turns < level) {
      await timedTask(manager, log, { projectId: 'history', sessionId: sid })
      turns++
    }
    const bytes = transcriptBytes()
    const msgs = []
    const est = []
    let total = 0
    for (let i = 0; i < (quick ? 20 : 100); i++) {
      let s = ns()
      const page = await manager.getMessages(sid, 'u')
      msgs.push(ms(s, ns()))
      total = page.total
      s = ns()
      await manager.estimatePromptTokens(sid, 'u', prompt)
      est.push(ms(s, ns()))
    }
    const resumes = []
    for (let i = 0; i < PER_LEVEL; i++) {
      resumes.push(await timedTask(manager, log, { projectId: 'history', sessionId: sid }))
      turns++
    }
    out.history.push({
      priorTurns: level,
      resumedAt: `${level}–${level + PER_LEVEL - 1}`,
      messages: total,
      transcriptKb: bytes / 1024,
      getMessages: stat(msgs),
      estimatePromptTokens: stat(est),
      resume: { wall: stat(resumes.map((r) => r.wall)), cli: stat(resumes.map((r) => r.cli)), overhead: stat(resumes.map((r) => r.overhead)) },
    })
    console.error(`[growth] ${level} prior turns: resume wall ${median(resumes.map((r) => r.wall)).toFixed(0)} ms, getMessages ${median(msgs).toFixed(2)} ms`)
  }
  await manager.close()
  fs.rmSync(ws.dir, { recursive: true, force: true })
}
out.load.push(machineLoad())
await standIn.close()
writeJson(opt.json, out)
