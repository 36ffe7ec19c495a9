// Section 3: scale on this machine.
// A. 64 concurrent tasks across 64 sessions (maxConcurrentTasks 64), the real CLI against the
//    stand-in (in its own process): every task must complete; the event loop's delay
//    (perf_hooks.monitorEventLoopDelay) and the RSS of this Node process are recorded.
// B. getSessionContext and listSessions latency with 100,000 sessions in the store (bulk-inserted
//    into a database the addon created, so the schema is the addon's own).
import fs from 'node:fs'
import { fork } from 'node:child_process'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { args, median, p90, p99, writeJson, machineLoad, sampler, memAvailableMb } from '../lib/stats.mjs'
import { addon, startStandIn, workspace, populate, timeStoreCalls, BENCH_SANDBOX } from '../lib/harness.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const TASKS = Number(opt.tasks ?? 64)
const SESSIONS = Number(opt.sessions ?? 100_000)
const ns = () => process.hrtime.bigint()
const msSince = (t) => Number(ns() - t) / 1e6

/** CPU time and time spent waiting for a CPU (ms) of this process's main (JavaScript) thread. */
function schedstat() {
  const [cpu, wait, slices] = fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').trim().split(' ').map(Number)
  return { cpuMs: cpu / 1e6, waitMs: wait / 1e6, slices }
}

const out = { load: [machineLoad()] }

// ---- A: 64 concurrent tasks ------------------------------------------------------------------
{
  const standIn = await startStandIn()
  const ws = workspace('csm-scale-')
  const manager = new addon.SessionManager({ warmIdleMs: 0,
  sandbox: BENCH_SANDBOX,
    databasePath: ws.db,
    workingDirectory: ws.work,
    maxConcurrentTasks: 64,
    // --niceness=N sets cliNiceness (default: the addon's default, 10).
    ...(opt.niceness !== undefined ? { cliNiceness: Number(opt.niceness) } : {}),
    env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config },
  })
  // Warm-up (page cache, the CLI's first start), then an idle baseline of the event loop.
  await manager.executeTask({ prompt: 'warm up', projectId: 'warm', userId: 'u' })
  const idle = monitorEventLoopDelay({ resolution: 1 })
  idle.enable()
  await new Promise((r) => setTimeout(r, 1000))
  idle.disable()

  const memBefore = memAvailableMb()
  const rssBefore = process.memoryUsage().rss / 2 ** 20
  const h = monitorEventLoopDelay({ resolution: 1 })
  const monitor = fork(new URL('../lib/monitor.mjs', import.meta.url), [String(process.pid), String(standIn.pid)])
  await new Promise((r) => monitor.once('message', r))
  monitor.send('start')
  const stopRss = sampler(() => process.memoryUsage().rss / 2 ** 20, 25)
  const sched0 = schedstat()
  h.enable()
  const t0 = ns()
  const results = await Promise.all(
    Array.from({ length: TASKS }, (_, i) =>
      manager
        .executeTask({ prompt: `Task ${i}: reply with one short sentence.`, projectId: `scale-${i}`, userId: 'u' })
        .then(
          (r) => ({ ok: r.success, code: r.error?.code ?? null, ms: msSince(t0), sessionId: r.sessionId }),
          (e) => ({ ok: false, code: e.code ?? String(e), ms: msSince(t0) }),
        ),
    ),
  )
  const wall = msSince(t0)
  h.disable()
  const sched1 = schedstat()
  const rss = stopRss()
  monitor.send('stop')
  const kids = await new Promise((r) => monitor.once('message', r))
  const sessions = new Set(results.map((r) => r.sessionId).filter(Boolean))
  out.concurrent = {
    cliNiceness: opt.niceness !== undefined ? Number(opt.niceness) : 'default (10)',
    tasks: TASKS,
    completed: results.filter((r) => r.ok).length,
    distinctSessions: sessions.size,
    failures: results.filter((r) => !r.ok).map((r) => r.code),
    wallMs: wall,
    tasksPerSec: TASKS / (wall / 1000),
    latency: { median: median(results.map((r) => r.ms)), p90: p90(results.map((r) => r.ms)), max: Math.max(...results.map((r) => r.ms)) },
    eventLoopDelayMs: { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6, mean: h.mean / 1e6 },
    idleEventLoopDelayMs: { p50: idle.percentile(50) / 1e6, p99: idle.percentile(99) / 1e6, max: idle.max / 1e6 },
    rssMb: { before: rssBefore, peak: Math.max(rssBefore, ...rss), after: process.memoryUsage().rss / 2 ** 20 },
    controlEventLoopDelayMs: kids.controlEventLoopDelayMs,
    jsThread: { cpuMs: sched1.cpuMs - sched0.cpuMs, runqueueWaitMs: sched1.waitMs - sched0.waitMs, wakeups: sched1.slices - sched0.slices },
    cliProcesses: { peakCount: kids.peakCount, peakTotalRssMb: kids.peakTotalRssMb },
    memAvailableMbBefore: memBefore,
  }
  console.error(
    `[scale] ${out.concurrent.completed}/${TASKS} completed in ${(wall / 1000).toFixed(1)} s; event-loop delay p99 ${out.concurrent.eventLoopDelayMs.p99.toFixed(2)} ms; RSS peak ${out.concurrent.rssMb.peak.toFixed(0)} MB`,
  )
  out.load.push(machineLoad())
  await manager.close()
  await standIn.close()
  fs.rmSync(ws.dir, { recursive: true, force: true })
}

// ---- B: store latency with 100,000 sessions --------------------------------------------------
{
  const ws = workspace('csm-store-')
  new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, databasePath: ws.db, workingDirectory: ws.work }).close()
  await new Promise((r) => setTimeout(r, 50))
  const t0 = ns()
  populate(ws.db, SESSIONS, { workDir: ws.work })
  const populateMs = msSince(t0)
  const manager = new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, databasePath: ws.db, workingDirectory: ws.work })
  const t = await timeStoreCalls(manager, SESSIONS, { iter: quick ? 300 : 3000, lists: quick ? 100 : 1000 })
  const stat = (v) => ({ median: median(v), p90: p90(v), p99: p99(v) })
  out.store = {
    sessions: SESSIONS,
    users: 100,
    sessionsPerUser: SESSIONS / 100,
    populateMs,
    dbMb: fs.statSync(ws.db).size / 2 ** 20,
    getSessionContext: stat(t.getSessionContext),
    getSession: stat(t.getSession),
    listSessions: stat(t.listSessions),
    listSessionsProject: stat(t.listSessionsProject),
  }
  console.error(`[scale] ${SESSIONS} sessions: getSessionContext median ${(out.store.getSessionContext.median * 1000).toFixed(0)} µs, listSessions median ${out.store.listSessions.median.toFixed(3)} ms`)
  await manager.close()
  fs.rmSync(ws.dir, { recursive: true, force: true })
}
out.load.push(machineLoad())
writeJson(opt.json, out)
