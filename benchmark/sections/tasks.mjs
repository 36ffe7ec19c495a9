// Section 2: task overhead — the manager's executeTask against the Agent SDK's query(), both
// running the same claude binary against the same stand-in API server (in its own process),
// new-session and resumed tasks, interleaved run by run.
//
// How the CLI's own lifetime is measured: both are pointed at a small static C wrapper
// (lib/lifetime.c) instead of the binary. The wrapper logs CLOCK_MONOTONIC at its main(), forks
// and execs the real binary, waits for it, and logs the time it reaped it. Node's
// process.hrtime.bigint() reads the same clock, so per task:
//   pre  = wrapper main − call           (validation, store writes, spawning)
//   CLI  = reaped − fork                  (the claude process, start to exit)
//   post = settled − what the caller waits for: the end of the CLI's `result` line (the wrapper
//          relays the CLI's stdout and notes it) for executeTask, which settles there and leaves
//          the CLI's exit to the background; the exit (reaped) for the SDK, whose iterator ends
//          only then (its `result` message arrives earlier, "to result")
//   overhead = pre + post
// The wrapper itself costs a little (its exec, and its exit after the CLI's), which lands in
// pre/post: the "wrapper cost" calibration below measures it with a fake CLI that answers at
// once, run with and without the wrapper, and it is reported (not subtracted) next to the bar.
import fs from 'node:fs'
import path from 'node:path'
import { args, median, p90, writeJson, machineLoad } from '../lib/stats.mjs'
import { addon, claudeBinary, startStandIn, workspace, LifetimeLog, fakeCli, tempDir, sdkEnvironment, BENCH_SANDBOX } from '../lib/harness.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const RUNS = Number(opt.runs ?? (quick ? 4 : 20))
const CAL_RUNS = quick ? 10 : 40
const wrapper = opt.wrapper
if (!wrapper) throw new Error('--wrapper=<path of the compiled lib/lifetime.c> is required')
const { query } = await import('@anthropic-ai/claude-agent-sdk')
const real = claudeBinary()
const standIn = await startStandIn()
const ns = () => process.hrtime.bigint()
const ms = (a, b) => Number(b - a) / 1e6

// ---- the manager -----------------------------------------------------------------------------
const mw = workspace('csm-bench-mgr-')
const mLog = new LifetimeLog(path.join(mw.dir, 'lifetime.log'))
const manager = new addon.SessionManager({ warmIdleMs: 0,
  sandbox: BENCH_SANDBOX,
  databasePath: mw.db,
  workingDirectory: mw.work,
  claudePath: wrapper,
  env: { ...standIn.env, CLAUDE_CONFIG_DIR: mw.config, REAL_CLAUDE: real, LIFETIME_LOG: mLog.file },
})

async function managerTask(sessionId) {
  const t0 = ns()
  const r = await manager.executeTask({ prompt: 'Reply with one short sentence about benchmarks.', projectId: 'bench', userId: 'u', sessionId })
  const t1 = ns()
  if (!r.success) throw new Error(`executeTask failed: ${r.error?.code} ${r.error?.message}`)
  return { t0, t1, tResult: t1, sessionId: r.sessionId, life: await mLog.next() }
}

// ---- the SDK ---------------------------------------------------------------------------------
const sw = workspace('csm-bench-sdk-')
const sLog = new LifetimeLog(path.join(sw.dir, 'lifetime.log'))
const sdkEnv = sdkEnvironment(standIn.env, { CLAUDE_CONFIG_DIR: sw.config, REAL_CLAUDE: real, LIFETIME_LOG: sLog.file })

async function sdkTask(resume) {
  const t0 = ns()
  let tResult = null
  let sessionId = null
  let result = null
  for await (const m of query({
    prompt: 'Reply with one short sentence about benchmarks.',
    options: { pathToClaudeCodeExecutable: wrapper, cwd: sw.work, env: sdkEnv, resume, model: 'sonnet' },
  })) {
    if (m.session_id) sessionId = m.session_id
    if (m.type === 'result') {
      tResult = ns()
      result = m
    }
  }
  const t1 = ns()
  if (!result || result.subtype !== 'success') throw new Error(`query failed: ${JSON.stringify(result)?.slice(0, 300)}`)
  return { t0, t1, tResult, sessionId, life: await sLog.next() }
}

function record(impl, kind, r) {
  // The CLI process of this task: the longest-lived one the wrapper saw (the SDK may start others).
  const life = r.life.sort((a, b) => Number(b.reaped - b.forked - (a.reaped - a.forked)))[0]
  if (!life) return { impl, kind, wall: ms(r.t0, r.t1), toResult: ms(r.t0, r.tResult), cli: NaN, pre: NaN, post: NaN, overhead: NaN, processes: 0 }
  const pre = ms(r.t0, life.main)
  const settlesOn = impl === 'manager' ? life.result : life.reaped
  const post = settlesOn === null ? NaN : ms(settlesOn, r.t1)
  return {
    impl,
    kind,
    wall: ms(r.t0, r.t1),
    toResult: ms(r.t0, r.tResult),
    cli: ms(life.forked, life.reaped),
    cliToResult: life.result === null ? NaN : ms(life.forked, life.result),
    exitAfterResult: life.result === null ? NaN : ms(life.result, life.reaped),
    pre,
    post,
    overhead: pre + post,
    cliMaxRssMb: life.maxRssKb / 1024,
    processes: r.life.length,
  }
}

const runs = []
const loadSamples = [machineLoad()]
// Warm-up: one of each, not recorded (first SDK import, page cache, the CLI's first start).
{
  const a = await managerTask()
  await managerTask(a.sessionId)
  const b = await sdkTask()
  await sdkTask(b.sessionId)
}
for (let i = 0; i < RUNS; i++) {
  // Alternate which goes first, so neither always runs on a machine the other just warmed.
  const order = i % 2 === 0 ? ['manager', 'sdk'] : ['sdk', 'manager']
  for (const impl of order) {
    if (impl === 'manager') {
      const n = await managerTask()
      runs.push(record('manager', 'new', n))
      runs.push(record('manager', 'resume', await managerTask(n.sessionId)))
    } else {
      const n = await sdkTask()
      runs.push(record('sdk', 'new', n))
      runs.push(record('sdk', 'resume', await sdkTask(n.sessionId)))
    }
  }
  if (i % 5 === 4) loadSamples.push(machineLoad())
}

// ---- wrapper cost: a fake CLI that answers at once, with and without the wrapper -------------
const cw = workspace('csm-bench-cal-')
const fake = fakeCli(tempDir('csm-fake-'))
const cLog = new LifetimeLog(path.join(cw.dir, 'lifetime.log'))
const direct = new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, databasePath: path.join(cw.dir, 'a.db'), workingDirectory: cw.work, claudePath: fake })
const wrapped = new addon.SessionManager({ warmIdleMs: 0,
  sandbox: BENCH_SANDBOX,
  databasePath: path.join(cw.dir, 'b.db'),
  workingDirectory: cw.work,
  claudePath: wrapper,
  env: { REAL_CLAUDE: fake, LIFETIME_LOG: cLog.file },
})
const cal = { direct: [], wrapped: [], wrappedPre: [], wrappedPost: [], wrappedCli: [] }
for (let i = 0; i < CAL_RUNS + 2; i++) {
  let t0 = ns()
  await direct.executeTask({ prompt: 'x', projectId: 'c', userId: 'u' })
  const d = ms(t0, ns())
  t0 = ns()
  await wrapped.executeTask({ prompt: 'x', projectId: 'c', userId: 'u' })
  const t1 = ns()
  const [life] = await cLog.next()
  if (i < 2) continue
  cal.direct.push(d)
  cal.wrapped.push(ms(t0, t1))
  cal.wrappedPre.push(ms(t0, life.main))
  cal.wrappedPost.push(ms(life.result ?? life.reaped, t1))
  cal.wrappedCli.push(ms(life.forked, life.reaped))
}
await direct.close()
await wrapped.close()
await manager.close()
await standIn.close()

const summary = {}
for (const impl of ['manager', 'sdk']) {
  for (const kind of ['new', 'resume']) {
    const rs = runs.filter((r) => r.impl === impl && r.kind === kind)
    const col = (k) => rs.map((r) => r[k])
    summary[`${impl}/${kind}`] = {
      n: rs.length,
      wall: { median: median(col('wall')), p90: p90(col('wall')) },
      toResult: { median: median(col('toResult')), p90: p90(col('toResult')) },
      cli: { median: median(col('cli')), p90: p90(col('cli')) },
      cliToResult: { median: median(col('cliToResult')), p90: p90(col('cliToResult')) },
      exitAfterResult: { median: median(col('exitAfterResult')), p90: p90(col('exitAfterResult')) },
      pre: { median: median(col('pre')), p90: p90(col('pre')) },
      post: { median: median(col('post')), p90: p90(col('post')) },
      overhead: { median: median(col('overhead')), p90: p90(col('overhead')) },
      cliMaxRssMb: median(col('cliMaxRssMb')),
      processesPerTask: median(col('processes')),
    }
  }
}
// Wrapper cost = (wall with wrapper − wall without) for the fake CLI: its exec, fork and exit.
const wrapperCost = median(cal.wrapped) - median(cal.direct)
writeJson(opt.json, {
  runs: RUNS,
  summary,
  calibration: {
    runs: CAL_RUNS,
    directWall: median(cal.direct),
    wrappedWall: median(cal.wrapped),
    wrapperCost,
    fakeCliOverhead: median(cal.wrappedPre.map((p, i) => p + cal.wrappedPost[i])),
    fakeCliLifetime: median(cal.wrappedCli),
  },
  raw: runs,
  load: loadSamples,
})
fs.rmSync(mw.dir, { recursive: true, force: true })
fs.rmSync(sw.dir, { recursive: true, force: true })
fs.rmSync(cw.dir, { recursive: true, force: true })
