// Section 6: warm sessions (issue #15). A follow-up task on a session whose CLI is still running
// (the default, `warmIdleMs` > 0: the prompt is one line on its stdin) against the same
// follow-up with `warmIdleMs: 0` (a new `claude -p --resume` per task, as before).
//
// Two managers over the same claude binary and the same stand-in API (in its own process), each
// with one session that has had one task. Then RUNS rounds, alternating which goes first: one
// follow-up on each. Wall time from the call to the settled promise (the task settles at the
// CLI's result in both modes). After the rounds: the warm CLI's memory (RSS and anonymous from
// /proc/<pid>/smaps_rollup; the rest of its RSS is the binary's pages, which every CLI shares),
// and whether one process ran every warm follow-up.
import fs from 'node:fs'
import { args, median, p90, writeJson, machineLoad } from '../lib/stats.mjs'
import { addon, startStandIn, workspace, BENCH_SANDBOX } from '../lib/harness.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const RUNS = Number(opt.runs ?? (quick ? 4 : 20))
const standIn = await startStandIn()

function manager(warm) {
  const ws = workspace(warm ? 'csm-bench-warm-' : 'csm-bench-cold-')
  return new addon.SessionManager({
    sandbox: BENCH_SANDBOX,
    databasePath: ws.db,
    workingDirectory: ws.work,
    env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config },
    warmIdleMs: warm ? 600_000 : 0,
  })
}
const cold = manager(false)
const warm = manager(true)

async function timed(m, sessionId) {
  const t0 = process.hrtime.bigint()
  const r = await m.executeTask({ prompt: 'Reply with one short sentence about warm processes.', projectId: 'bench', userId: 'u', sessionId })
  const t1 = process.hrtime.bigint()
  if (!r.success) throw new Error(`executeTask failed: ${r.error?.code} ${r.error?.message}`)
  return { ms: Number(t1 - t0) / 1e6, sessionId: r.sessionId }
}

/** The CLI processes whose argv names the session. */
function clis(sessionId) {
  const out = []
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      if (cmd.includes(sessionId) && cmd.includes('--input-format=stream-json')) out.push(Number(pid))
    } catch {}
  }
  return out
}
function memoryKb(pid) {
  const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  const kb = (k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t) || [])[1] || 0)
  return { rss: kb('Rss'), pss: kb('Pss'), anonymous: kb('Anonymous') }
}

const cs = (await timed(cold)).sessionId
const ws = (await timed(warm)).sessionId
const pids = new Set(clis(ws))
const rows = { cold: [], warm: [] }
for (let i = 0; i < RUNS; i++) {
  if (i % 2 === 0) {
    rows.warm.push((await timed(warm, ws)).ms)
    rows.cold.push((await timed(cold, cs)).ms)
  } else {
    rows.cold.push((await timed(cold, cs)).ms)
    rows.warm.push((await timed(warm, ws)).ms)
  }
}
const after = clis(ws)
const sameProcess = after.length > 0 && after.every((p) => pids.has(p))
const mem = after.map(memoryKb)
const ratios = rows.cold.map((c, i) => c / rows.warm[i])
const summary = (a) => ({ median: median(a), p90: p90(a), n: a.length })
const out = {
  runs: RUNS,
  sandbox: BENCH_SANDBOX,
  cold: summary(rows.cold),
  warm: summary(rows.warm),
  ratioOfMedians: median(rows.warm) / median(rows.cold),
  perRoundColdOverWarm: { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) },
  sameWarmProcessEveryRound: sameProcess,
  warmProcessMemoryKb: mem,
  load: machineLoad(),
}
await cold.close()
await warm.close()
await standIn.close()
writeJson(opt.json, out)
