// Section 8: warm sessions (issue #15). One stand-in API server (in its own process) and one claude
// binary for everything below; sandbox 'none' (the process model the Agent SDK has).
//
// A. Follow-up latency. Five contenders, each with one session that has had one task:
//      cold   – a manager with `warmIdleMs: 0` (a new `claude -p --resume` per task)
//      warm   – a manager with the default `warmIdleMs` (the session's CLI kept running; the prompt
//               is one line on its stdin)
//      open   – warm with `exposeApiKeyToAgent: true`: no key proxy, no spend ledger (warm − open is
//               what they add)
//      sdk    – the Agent SDK's query() with streaming input (an async iterable of user messages)
//               on one CLI process, its options mapped to the warm manager's argv
//      direct – the CLI driven by a few lines of Node: spawned with the warm manager's CLI's argv
//               and environment (read from /proc), a user line written to its stdin, its stdout
//               parsed line by line until the result: the floor for any driver of a warm CLI
//    Then RUNS rounds of one follow-up on each, the order rotated each round; after a cold task the
//    next contender waits until its CLI has exited (it exits after its result, in the background). Time: the managers,
//    call → settled promise; sdk, the message handed to the iterable → its `result` message out of
//    the iterator; direct, the line written → the result line parsed. Both managers run their CLIs
//    at `cliNiceness: 0` here, the priority the SDK's and the direct CLI have.
//    The manager's overhead over the SDK is (warm median − sdk median); the per-round differences
//    (warm − sdk of the same round) are given too, and the same against direct.
// B. Memory at the default cap: a manager with the default `maxWarmSessions`; SESSIONS_CAP (16)
//    sessions with one task each, then IDLE_MS idle; each warm CLI's VmRSS, RssAnon, RssFile
//    (/proc/<pid>/status) and Pss (/proc/<pid>/smaps_rollup). Then a 17th session, and how many
//    warm CLIs are left.
// C. SESSIONS sessions × FOLLOWUPS follow-ups, warm vs cold, ROUNDS64 rounds alternating which
//    goes first: a fresh manager per run (`maxConcurrentTasks` = SESSIONS; warm with
//    `maxWarmSessions` = SESSIONS so that every session keeps its CLI; cold with `warmIdleMs: 0`;
//    default `cliNiceness`), every session started at once, each running its first task and then
//    its follow-ups one after the other. Wall time until the last follow-up settled; CPU seconds of
//    this process (process.cpuUsage) and of its reaped children (cutime + cstime from
//    /proc/self/stat, taken after `close()` has waited for every CLI's exit; the stand-in server
//    is not reaped until the end, so it is left out and its own CPU is reported beside);
//    peak RSS (a sibling process samples this process's and its CLIs' VmRSS every 250 ms);
//    event-loop delay p99 (perf_hooks.monitorEventLoopDelay, resolution 1 ms). Skipped, with the
//    reason recorded, when MemAvailable is under MIN_AVAILABLE_GB before a run.
import fs from 'node:fs'
import { fork, execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { args, median, p90, p99, writeJson, machineLoad, memAvailableMb, childrenOf } from '../lib/stats.mjs'
import { addon, claudeBinary, startStandIn, workspace, sdkWarmOptions, procMemoryKb, BENCH_SANDBOX } from '../lib/harness.mjs'
import { driveCli, processLaunch, userLine } from '../lib/direct-cli.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const RUNS = Number(opt.runs ?? (quick ? 4 : 30))
const SESSIONS_CAP = 16
const IDLE_MS = Number(opt['idle-ms'] ?? (quick ? 2000 : 10_000))
const SESSIONS = Number(opt.sessions ?? (quick ? 8 : 64))
const FOLLOWUPS = Number(opt.followups ?? (quick ? 2 : 5))
const ROUNDS64 = Number(opt.rounds64 ?? (quick ? 1 : 2))
const MIN_AVAILABLE_GB = Number(opt['min-available-gb'] ?? 14)
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
const { query } = await import('@anthropic-ai/claude-agent-sdk')
const real = claudeBinary()
const standIn = await startStandIn()
const ns = () => process.hrtime.bigint()
const msSince = (t) => Number(ns() - t) / 1e6
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const PROMPT = 'Reply with one short sentence about warm processes.'
const summary = (a) => ({ median: median(a), p90: p90(a), p99: p99(a), min: Math.min(...a), max: Math.max(...a), n: a.length })
const out = { runs: RUNS, sandbox: BENCH_SANDBOX, load: [machineLoad()] }

function manager(ws, options) {
  return new addon.SessionManager({
    sandbox: BENCH_SANDBOX,
    databasePath: ws.db,
    workingDirectory: ws.work,
    claudePath: real,
    env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config },
    ...options,
  })
}
async function task(m, sessionId, prompt = PROMPT, projectId = 'bench') {
  const t0 = ns()
  const r = await m.executeTask({ prompt, projectId, userId: 'u', sessionId })
  const ms = msSince(t0)
  if (!r.success) throw new Error(`executeTask failed: ${r.error?.code} ${r.error?.message}`)
  return { ms, sessionId: r.sessionId }
}

/** The warm (stream-json) CLI processes among this process's children, optionally those in `cwd`. */
function warmClis(cwd) {
  return childrenOf(process.pid).filter((pid) => {
    try {
      if (!fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((a) => a === '--input-format=stream-json' || a === 'stream-json')) return false
      return cwd === undefined || processCwd(pid) === cwd
    } catch {
      return false
    }
  })
}

function processCwd(pid) {
  try {
    return fs.readlinkSync(`/proc/${pid}/cwd`)
  } catch {
    return null
  }
}


// ---- A: follow-up latency ----------------------------------------------------------------------
const coldWs = workspace('csm-bench-cold-')
const warmWs = workspace('csm-bench-warm-')
const cold = manager(coldWs, { warmIdleMs: 0, cliNiceness: 0 })
const warm = manager(warmWs, { warmIdleMs: 600_000, cliNiceness: 0 })
// The warm manager without the key proxy (`exposeApiKeyToAgent`, unsafe, for this measurement
// only): its CLI calls the API directly, as the SDK's does, and no call is admitted in the spend
// ledger; warm − open is what the proxy and the ledger add to a follow-up.
const openWs = workspace('csm-bench-open-')
const open = manager(openWs, { warmIdleMs: 600_000, cliNiceness: 0, exposeApiKeyToAgent: true })
const coldSession = (await task(cold)).sessionId
const warmSession = (await task(warm)).sessionId
const openSession = (await task(open)).sessionId
const [warmPid] = warmClis(warmWs.work)
if (!warmPid) throw new Error('the warm manager kept no CLI after its first task')
const { argv: managerArgv, env: managerEnv } = processLaunch(warmPid)

// The SDK: one query() fed by an async iterable; each follow-up is pushed into it.
const sdkWs = workspace('csm-bench-sdk-')
const inbox = {
  items: [],
  wake: null,
  done: false,
  push(m) {
    this.items.push(m)
    this.wake?.()
  },
  end() {
    this.done = true
    this.wake?.()
  },
  async *[Symbol.asyncIterator]() {
    for (;;) {
      while (this.items.length) yield this.items.shift()
      if (this.done) return
      await new Promise((r) => (this.wake = r))
      this.wake = null
    }
  },
}
// The SDK's CLI gets the warm manager's flags.
const sdkOptions = sdkWarmOptions(real, sdkWs, standIn.env)
const sdkQuery = query({ prompt: inbox, options: sdkOptions })
const sdkIter = sdkQuery[Symbol.asyncIterator]()
async function sdkTurn(text) {
  const t0 = ns()
  inbox.push(userLine(text))
  for (;;) {
    const { value, done } = await sdkIter.next()
    if (done) throw new Error('the SDK query ended before a result')
    if (value.type === 'result') {
      const ms = msSince(t0)
      if (value.subtype !== 'success' || value.is_error) throw new Error(`SDK turn failed: ${JSON.stringify(value).slice(0, 300)}`)
      return { ms }
    }
  }
}
await sdkTurn(PROMPT)
const sdkPids = childrenOf(process.pid).filter((p) => processCwd(p) === sdkWs.work)
const sdkArgv = sdkPids.length ? fs.readFileSync(`/proc/${sdkPids[0]}/cmdline`, 'utf8').split('\0').slice(1, -1) : []

// Direct: the same argv (a session id of its own) and environment (a config dir of its own).
const directWs = workspace('csm-bench-direct-')
// The stand-in's address and key, as the SDK's CLI has them: the manager's CLI reaches the API
// through the key proxy, whose token answers only while one of the manager's tasks runs.
const { proc: direct, argv: directArgv, turn: directMs } = driveCli(real, managerArgv, {
  cwd: directWs.work,
  env: { ...managerEnv, ...standIn.env, CLAUDE_CONFIG_DIR: directWs.config },
})
const directTurn = async (text) => ({ ms: await directMs(text) })
await directTurn(PROMPT)

// A cold task settles at the CLI's result line and its CLI exits afterwards (~30 ms of work, in
// the background): the next contender starts only once it is gone, so that none runs beside it.
async function coldTask() {
  const r = await task(cold, coldSession)
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline && childrenOf(process.pid).some((p) => processCwd(p) === coldWs.work)) await sleep(2)
  return r
}
const contenders = {
  cold: coldTask,
  warm: () => task(warm, warmSession),
  open: () => task(open, openSession),
  sdk: () => sdkTurn(PROMPT),
  direct: () => directTurn(PROMPT),
}
const names = Object.keys(contenders)
const rows = Object.fromEntries(names.map((n) => [n, []]))
for (let i = 0; i < RUNS; i++) {
  const order = names.map((_, k) => names[(k + i) % names.length])
  for (const n of order) rows[n].push((await contenders[n]()).ms)
  if (i % 10 === 9) out.load.push(machineLoad())
}
const afterA = warmClis(warmWs.work)
const diff = (a, b) => rows[a].map((x, i) => x - rows[b][i])
out.followUp = {
  rounds: RUNS,
  cold: summary(rows.cold),
  warm: summary(rows.warm),
  open: summary(rows.open),
  sdk: summary(rows.sdk),
  direct: summary(rows.direct),
  ratioOfMedians: median(rows.warm) / median(rows.cold),
  perRoundColdOverWarm: summary(rows.cold.map((c, i) => c / rows.warm[i])),
  managerMinusSdk: { ofMedians: median(rows.warm) - median(rows.sdk), perRound: summary(diff('warm', 'sdk')) },
  proxyAndLedger: { ofMedians: median(rows.warm) - median(rows.open), perRound: summary(diff('warm', 'open')) },
  openMinusSdk: { ofMedians: median(rows.open) - median(rows.sdk), perRound: summary(diff('open', 'sdk')) },
  managerMinusDirect: { ofMedians: median(rows.warm) - median(rows.direct), perRound: summary(diff('warm', 'direct')) },
  sdkMinusDirect: { ofMedians: median(rows.sdk) - median(rows.direct), perRound: summary(diff('sdk', 'direct')) },
  sameWarmProcessEveryRound: afterA.length === 1 && afterA[0] === warmPid,
  sdkOneProcess: sdkPids.length === 1,
  argv: { manager: managerArgv, sdk: sdkArgv, direct: directArgv },
  warmProcessMemoryKb: afterA.map(procMemoryKb),
  raw: rows,
}
console.error(
  `[warm] follow-up medians: cold ${median(rows.cold).toFixed(1)}, warm ${median(rows.warm).toFixed(1)}, open (no key proxy) ${median(rows.open).toFixed(1)}, sdk ${median(rows.sdk).toFixed(1)}, direct ${median(rows.direct).toFixed(1)} ms`,
)
inbox.end()
for (;;) if ((await sdkIter.next()).done) break
direct.stdin.end()
if (direct.exitCode === null) await once(direct, 'exit')
await cold.close()
await warm.close()
await open.close()

// ---- B: memory at the default cap ----------------------------------------------------------------
{
  const ws = workspace('csm-bench-cap-')
  const m = manager(ws, { maxConcurrentTasks: SESSIONS_CAP })
  await Promise.all(Array.from({ length: SESSIONS_CAP }, (_, i) => task(m, undefined, PROMPT, `cap-${i}`)))
  await sleep(IDLE_MS)
  const pids = warmClis(ws.work)
  const mem = pids.map(procMemoryKb)
  const nodeRssKb = procMemoryKb(process.pid)
  await task(m, undefined, PROMPT, 'cap-extra')
  const deadline = Date.now() + 5000
  let afterExtra = warmClis(ws.work).length
  while (afterExtra > SESSIONS_CAP && Date.now() < deadline) {
    await sleep(50)
    afterExtra = warmClis(ws.work).length
  }
  const total = (k) => mem.reduce((s, x) => s + x[k], 0)
  const per = (k) => summary(mem.map((x) => x[k]))
  out.cap = {
    sessions: SESSIONS_CAP,
    idleMs: IDLE_MS,
    warmClis: pids.length,
    warmClisAfterOneMoreSession: afterExtra,
    perSessionKb: { rss: per('rss'), anon: per('anon'), file: per('file'), pss: per('pss'), pssAnon: per('pssAnon'), pssFile: per('pssFile') },
    totalKb: { rss: total('rss'), anon: total('anon'), file: total('file'), pss: total('pss') },
    nodeRssKb: nodeRssKb.rss,
    raw: mem,
  }
  console.error(`[warm] default cap: ${pids.length} warm CLIs, RssAnon median ${(per('anon').median / 1024).toFixed(0)} MB, Pss total ${(total('pss') / 1024).toFixed(0)} MB; after a 17th session: ${afterExtra}`)
  await m.close()
  fs.rmSync(ws.dir, { recursive: true, force: true })
}
out.load.push(machineLoad())

// ---- C: SESSIONS sessions × FOLLOWUPS follow-ups, warm vs cold -----------------------------------
/** CPU seconds of this process and of the children it has reaped (their own reaped children included). */
function cpuNow() {
  const s = fs.readFileSync('/proc/self/stat', 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  const u = process.cpuUsage()
  return { self: (u.user + u.system) / 1e6, children: (Number(f[13]) + Number(f[14])) / CLK_TCK }
}
function cpuOf(pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / CLK_TCK
}

async function burst(kind) {
  const availableGb = memAvailableMb() / 1024
  if (availableGb < MIN_AVAILABLE_GB) return { kind, skipped: `MemAvailable ${availableGb.toFixed(1)} GB < ${MIN_AVAILABLE_GB} GB before the run` }
  const ws = workspace(`csm-bench-${kind}${SESSIONS}-`)
  const m = manager(ws, kind === 'warm' ? { maxConcurrentTasks: SESSIONS, maxWarmSessions: SESSIONS } : { maxConcurrentTasks: SESSIONS, warmIdleMs: 0 })
  const monitor = fork(new URL('../lib/monitor.mjs', import.meta.url), [String(process.pid), String(standIn.pid)])
  await once(monitor, 'message')
  monitor.send('start')
  const h = monitorEventLoopDelay({ resolution: 1 })
  const cpu0 = cpuNow()
  const stand0 = cpuOf(standIn.pid)
  h.enable()
  const t0 = ns()
  const sessions = await Promise.all(
    Array.from({ length: SESSIONS }, async (_, i) => {
      const ms = []
      let sessionId
      for (let k = 0; k <= FOLLOWUPS; k++) {
        const t = ns()
        try {
          const r = await m.executeTask({ prompt: `Session ${i}, task ${k}: reply with one short sentence.`, projectId: `s${i}`, userId: 'u', sessionId })
          if (!r.success) return { ms, failure: r.error?.code ?? 'failed' }
          sessionId = r.sessionId
        } catch (e) {
          return { ms, failure: e.code ?? String(e) }
        }
        ms.push(msSince(t))
      }
      return { ms }
    }),
  )
  const wallMs = msSince(t0)
  h.disable()
  const warmAtEnd = warmClis(ws.work).length
  const tc = ns()
  await m.close()
  const closeMs = msSince(tc)
  const cpu1 = cpuNow()
  const stand1 = cpuOf(standIn.pid)
  monitor.send('stop')
  const [kids] = await once(monitor, 'message')
  if (monitor.exitCode === null) await once(monitor, 'exit')
  const leftover = childrenOf(process.pid).filter((p) => p !== standIn.pid)
  fs.rmSync(ws.dir, { recursive: true, force: true })
  const first = sessions.filter((s) => s.ms.length).map((s) => s.ms[0])
  const follow = sessions.flatMap((s) => s.ms.slice(1))
  const r = {
    kind,
    sessions: SESSIONS,
    followUps: FOLLOWUPS,
    tasksCompleted: sessions.reduce((n, s) => n + s.ms.length, 0),
    tasks: SESSIONS * (FOLLOWUPS + 1),
    failures: sessions.filter((s) => s.failure).map((s) => s.failure),
    wallMs,
    closeMs,
    cpuSeconds: { node: cpu1.self - cpu0.self, clis: cpu1.children - cpu0.children, total: cpu1.self - cpu0.self + cpu1.children - cpu0.children, standIn: stand1 - stand0 },
    peakRssMb: { total: kids.peakTotalWithWatchedRssMb, clis: kids.peakTotalRssMb, peakClis: kids.peakCount },
    cliProcessesSeen: kids.distinctChildren,
    warmClisAtEnd: warmAtEnd,
    eventLoopDelayMs: { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 },
    controlEventLoopDelayMs: kids.controlEventLoopDelayMs,
    firstTaskMs: summary(first),
    followUpMs: summary(follow),
    memAvailableGbBefore: availableGb,
    childrenLeftAfterClose: leftover.length,
    load: machineLoad(),
  }
  console.error(
    `[warm] ${SESSIONS}x${FOLLOWUPS} ${kind}: ${r.tasksCompleted}/${r.tasks} in ${(wallMs / 1000).toFixed(1)} s, CPU ${r.cpuSeconds.total.toFixed(1)} s, peak RSS ${(r.peakRssMb.total / 1024).toFixed(1)} GB, event-loop p99 ${r.eventLoopDelayMs.p99.toFixed(1)} ms, CLIs seen ${r.cliProcessesSeen}`,
  )
  return r
}

out.many = { sessions: SESSIONS, followUps: FOLLOWUPS, rounds: ROUNDS64, minAvailableGb: MIN_AVAILABLE_GB, runs: [] }
for (let r = 0; r < ROUNDS64; r++) {
  for (const kind of r % 2 === 0 ? ['warm', 'cold'] : ['cold', 'warm']) {
    const run = await burst(kind)
    out.many.runs.push(run)
    if (run.skipped) console.error(`[warm] ${SESSIONS}x${FOLLOWUPS} ${kind} skipped: ${run.skipped}`)
  }
}
out.load.push(machineLoad())
await standIn.close()
for (const w of [coldWs, warmWs, sdkWs, directWs]) fs.rmSync(w.dir, { recursive: true, force: true })
writeJson(opt.json, out)
