// Where the CPU of a warm follow-up goes: the CLI's own and this process's threads, per follow-up,
// for the warm manager without the key proxy (`open`), the Agent SDK's query() and the CLI driven
// directly (see sections/warm.mjs for the contenders). Each contender runs its follow-ups alone,
// one phase after another, so that this process's threads can be charged to it.
//   BENCH_ADDON=<build> node benchmark/warm-cpu.mjs [rounds]
import fs from 'node:fs'
import { addon, claudeBinary, startStandIn, workspace, sdkWarmOptions, BENCH_SANDBOX } from './lib/harness.mjs'
import { childrenOf } from './lib/stats.mjs'
import { driveCli, processLaunch, userLine } from './lib/direct-cli.mjs'

const ROUNDS = Number(process.argv[2] ?? 100)
const PROMPT = 'Reply with one short sentence about warm processes.'
const { query } = await import('@anthropic-ai/claude-agent-sdk')
const real = claudeBinary()
const standIn = await startStandIn()
const TICK_MS = 10 // CLK_TCK 100

/** utime + stime of a process or thread, in ms. */
const cpu = (statPath) => {
  const f = fs.readFileSync(statPath, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) * TICK_MS
}
/** This process's threads' CPU by thread name. */
const threads = () => {
  const by = {}
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const name = fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()
      by[name] = (by[name] ?? 0) + cpu(`/proc/self/task/${tid}/stat`)
    } catch {}
  }
  return by
}
const cwdOf = (pid) => {
  try {
    return fs.readlinkSync(`/proc/${pid}/cwd`)
  } catch {
    return null
  }
}
const cliIn = (dir) => childrenOf(process.pid).find((p) => cwdOf(p) === dir)

const openWs = workspace('csm-cpu-open-')
const open = new addon.SessionManager({
  sandbox: BENCH_SANDBOX,
  databasePath: openWs.db,
  workingDirectory: openWs.work,
  claudePath: real,
  env: { ...standIn.env, CLAUDE_CONFIG_DIR: openWs.config },
  warmIdleMs: 600_000,
  cliNiceness: 0,
  exposeApiKeyToAgent: true,
})
const first = await open.executeTask({ prompt: PROMPT, projectId: 'bench', userId: 'u' })
const openTurn = async () => {
  const r = await open.executeTask({ prompt: PROMPT, projectId: 'bench', userId: 'u', sessionId: first.sessionId })
  if (!r.success) throw new Error(JSON.stringify(r.error))
}
await openTurn()
const openPid = cliIn(openWs.work)
const { argv, env } = processLaunch(openPid)

const sdkWs = workspace('csm-cpu-sdk-')
const inbox = {
  items: [],
  wake: null,
  push(m) {
    this.items.push(m)
    this.wake?.()
  },
  async *[Symbol.asyncIterator]() {
    for (;;) {
      while (this.items.length) yield this.items.shift()
      await new Promise((r) => (this.wake = r))
      this.wake = null
    }
  },
}
const sdkIter = query({
  prompt: inbox,
  options: sdkWarmOptions(real, sdkWs, standIn.env),
})[Symbol.asyncIterator]()
const sdkTurn = async () => {
  inbox.push(userLine(PROMPT))
  for (;;) {
    const { value } = await sdkIter.next()
    if (value.type === 'result') return
  }
}
await sdkTurn()
const sdkPid = cliIn(sdkWs.work)

const directWs = workspace('csm-cpu-direct-')
const { turn } = driveCli(real, argv, { cwd: directWs.work, env: { ...env, ...standIn.env, CLAUDE_CONFIG_DIR: directWs.config } })
const directTurn = () => turn(PROMPT)
await directTurn()
const directPid = cliIn(directWs.work)

const out = {}
for (const [name, run, pid] of [
  ['open', openTurn, openPid],
  ['sdk', sdkTurn, sdkPid],
  ['direct', directTurn, directPid],
  ['open (again)', openTurn, openPid],
  ['sdk (again)', sdkTurn, sdkPid],
]) {
  const [c0, t0, s0, w0] = [cpu(`/proc/${pid}/stat`), threads(), cpu(`/proc/${standIn.pid ?? process.pid}/stat`), process.hrtime.bigint()]
  for (let i = 0; i < ROUNDS; i++) await run()
  const [c1, t1, w1] = [cpu(`/proc/${pid}/stat`), threads(), process.hrtime.bigint()]
  const per = (a, b) => ((b - a) / ROUNDS).toFixed(2)
  const own = Object.fromEntries(Object.keys(t1).map((k) => [k, per(t0[k] ?? 0, t1[k])]).filter(([, v]) => Number(v) > 0))
  out[name] = { wallMs: (Number(w1 - w0) / 1e6 / ROUNDS).toFixed(2), cliCpuMs: per(c0, c1), thisProcessThreadsCpuMs: own }
  void s0
  console.log(name, JSON.stringify(out[name]))
}
// Interleaved, round by round: each CLI's CPU is its own process's, so it can be charged to its
// contender whatever ran beside it; this process's threads are the three contenders' together.
const all = [
  ['open', openTurn, openPid],
  ['sdk', sdkTurn, sdkPid],
  ['direct', directTurn, directPid],
]
const before = all.map(([, , pid]) => cpu(`/proc/${pid}/stat`))
const wall = all.map(() => 0)
const t0 = threads()
for (let i = 0; i < ROUNDS; i++) {
  for (let j = 0; j < all.length; j++) {
    const k = (i + j) % all.length
    const w0 = process.hrtime.bigint()
    await all[k][1]()
    wall[k] += Number(process.hrtime.bigint() - w0) / 1e6
  }
}
const t1 = threads()
out.interleaved = {
  rounds: ROUNDS,
  ...Object.fromEntries(all.map(([name, , pid], k) => [name, { wallMs: (wall[k] / ROUNDS).toFixed(2), cliCpuMs: ((cpu(`/proc/${pid}/stat`) - before[k]) / ROUNDS).toFixed(2) }])),
  thisProcessThreadsCpuMsPerRound: Object.fromEntries(Object.keys(t1).map((k) => [k, ((t1[k] - (t0[k] ?? 0)) / ROUNDS).toFixed(2)]).filter(([, v]) => Number(v) > 0)),
}
console.log('interleaved', JSON.stringify(out.interleaved))
await open.close()
process.exit(0)
