// Section 5: what the agent sandbox (bubblewrap) and the API-key proxy add to a task.
//
// Two managers over the same claude binary and the same stand-in API (in its own process):
//   plain:   sandbox 'none', exposeApiKeyToAgent (the CLI talks to the stand-in with the key)
//   secured: the defaults — bubblewrap where it works, the CLI talks to the loopback proxy with
//            a per-task token, the proxy to the stand-in with the key
// New-session and resumed tasks, interleaved run by run (plain, secured, plain, ...), wall time
// from the call to the settled promise. The difference of the medians is what the sandbox and
// the proxy cost per task (the CLI's own start-up, ~0.4 s here, is in both and cancels out).
import { args, median, p90, writeJson, machineLoad } from '../lib/stats.mjs'
import { addon, startStandIn, workspace } from '../lib/harness.mjs'

const opt = args()
const quick = Boolean(opt.quick)
const RUNS = Number(opt.runs ?? (quick ? 4 : 20))
const standIn = await startStandIn()

function manager(secured, warm = false) {
  const ws = workspace(secured ? 'csm-bench-sbx-' : 'csm-bench-plain-')
  const m = new addon.SessionManager({ warmIdleMs: warm ? 600_000 : 0,
    databasePath: ws.db,
    workingDirectory: ws.work,
    env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config },
    ...(secured ? {} : { sandbox: 'none', exposeApiKeyToAgent: true }),
  })
  return m
}
const plain = manager(false)
const secured = manager(true)
const plainWarm = manager(false, true)
const securedWarm = manager(true, true)
const info = secured.info()

async function timed(m, sessionId) {
  const t0 = process.hrtime.bigint()
  const r = await m.executeTask({ prompt: 'Reply with one short sentence about sandboxes.', projectId: 'bench', userId: 'u', sessionId })
  const t1 = process.hrtime.bigint()
  if (!r.success) throw new Error(`executeTask failed: ${r.error?.code} ${r.error?.message}`)
  return { ms: Number(t1 - t0) / 1e6, sessionId: r.sessionId, sandboxed: r.sandboxed }
}

// Warm-up: the first CLI start reads the binary from disk.
let ps = (await timed(plain)).sessionId
let ss = (await timed(secured)).sessionId
const rows = { plainNew: [], securedNew: [], plainResumed: [], securedResumed: [], plainWarm: [], securedWarm: [] }
// Warm follow-ups: each manager's session keeps its CLI; the second task on it is the first measured.
let pw = (await timed(plainWarm)).sessionId
let sw = (await timed(securedWarm)).sessionId
await timed(plainWarm, pw)
await timed(securedWarm, sw)
let sandboxed = true
for (let i = 0; i < RUNS; i++) {
  rows.plainNew.push((await timed(plain)).ms)
  const s = await timed(secured)
  sandboxed &&= s.sandboxed
  rows.securedNew.push(s.ms)
  rows.plainResumed.push((await timed(plain, ps)).ms)
  rows.securedResumed.push((await timed(secured, ss)).ms)
  rows.plainWarm.push((await timed(plainWarm, pw)).ms)
  rows.securedWarm.push((await timed(securedWarm, sw)).ms)
}
const summary = (a) => ({ median: median(a), p90: p90(a), n: a.length })
const out = {
  runs: RUNS,
  sandbox: info.sandbox,
  apiKeyProxy: info.apiKeyProxy,
  sandboxedEveryRun: sandboxed,
  plainNew: summary(rows.plainNew),
  securedNew: summary(rows.securedNew),
  plainResumed: summary(rows.plainResumed),
  securedResumed: summary(rows.securedResumed),
  addedNewMs: median(rows.securedNew) - median(rows.plainNew),
  addedResumedMs: median(rows.securedResumed) - median(rows.plainResumed),
  plainWarm: summary(rows.plainWarm),
  securedWarm: summary(rows.securedWarm),
  addedWarmMs: median(rows.securedWarm) - median(rows.plainWarm),
  sandboxDetails: info.sandboxDetails ?? null,
  load: machineLoad(),
}
await plain.close()
await secured.close()
await plainWarm.close()
await securedWarm.close()
await standIn.close()
writeJson(opt.json, out)
