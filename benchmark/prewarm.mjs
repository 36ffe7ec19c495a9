#!/usr/bin/env node
// Prewarm against cold: `node benchmark/prewarm.mjs [--sessions=16] [--followups=5] [--think=2000]`
// (BENCH_ADDON=<.node> for another build than index.js's)
//
// Two runs, one after the other, each in its own Node process (so its CPU time, its CLIs' included
// once they are reaped, is its own): `cold` opens `sessions` new sessions and runs the first task
// of each, then `followups` more; `prewarm` does the same, but calls `manager.prewarm` when the
// session is opened (without waiting for it, as the React hook does). Both wait `think` ms between opening a session and its first prompt (a user
// typing), so the prewarmed CLI has started when the prompt comes, as it would in an app. Sessions
// run one after another (warm CLIs are kept: maxWarmSessions = sessions). The real CLI against the
// stand-in API, SQLite, the default sandbox. Prints a Markdown table: median and p95 of the first
// task's time (executeTask called → resolved), of the follow-ups, the run's wall time without the
// think time, its CPU seconds (user + system of the process and every descendant, sampled every 100 ms) and the peak of the
// summed RSS of the process and its descendants.
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const opt = {}
for (const a of process.argv.slice(2)) {
  const m = /^--([^=]+)(?:=(.*))?$/.exec(a)
  if (m) opt[m[1]] = m[2] ?? true
}
const SESSIONS = Number(opt.sessions ?? 16)
const FOLLOWUPS = Number(opt.followups ?? 5)
const THINK = Number(opt.think ?? 2000)

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const p95 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.95))]
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

if (opt.mode) {
  // One run, in this process.
  // BENCH_ADDON=<.node> measures that build instead of index.js's (as the suite's sections do).
  const { SessionManager } = require(process.env.BENCH_ADDON || '../index.js')
  const { startStandInServer } = require('../testing/index.js')
  const server = await startStandInServer()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csm-bench-prewarm-'))
  const work = path.join(dir, 'work')
  fs.mkdirSync(work)
  const manager = new SessionManager({
    stateDirectory: path.join(dir, 'state'),
    workingDirectory: work,
    warmIdleMs: 600_000,
    maxWarmSessions: SESSIONS,
    env: { ...server.env(), CLAUDE_CONFIG_DIR: path.join(dir, 'config'), HOME: dir },
  })
  const first = []
  const followups = []
  let thinking = 0
  const started = Date.now()
  for (let i = 0; i < SESSIONS; i++) {
    const { session } = await manager.getOrCreateSession({ projectId: 'bench', userId: `u${i}`, preferActive: false })
    // As the React hook does: the prewarm is not awaited; the user types meanwhile.
    const prewarmed = opt.mode === 'prewarm' ? manager.prewarm({ sessionId: session.id, userId: `u${i}` }) : null
    await sleep(THINK)
    thinking += THINK
    let t0 = performance.now()
    const r = await manager.executeTask({ projectId: 'bench', userId: `u${i}`, sessionId: session.id, prompt: 'first' })
    first.push(performance.now() - t0)
    if (!r.success) throw new Error(JSON.stringify(r.error))
    if (prewarmed && (await prewarmed).status !== 'started') throw new Error(`prewarm: ${(await prewarmed).status}`)
    for (let k = 0; k < FOLLOWUPS; k++) {
      t0 = performance.now()
      await manager.executeTask({ projectId: 'bench', userId: `u${i}`, sessionId: session.id, prompt: `next ${k}` })
      followups.push(performance.now() - t0)
    }
  }
  const wall = Date.now() - started - thinking
  await manager.close()
  await server.close()
  fs.rmSync(dir, { recursive: true, force: true })
  const cpu = process.resourceUsage()
  console.log(JSON.stringify({ first, followups, wall, cpuSelf: (cpu.userCPUTime + cpu.systemCPUTime) / 1e6 }))
  process.exit(0)
}

const TICK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }))

/** The summed RSS (KiB) of `pid` and its descendants now, and the CPU seconds each has used so
 * far (by pid: a process's last sample is what it used, less at most one interval). */
function sampleTree(pid, cpuByPid) {
  const kids = new Map()
  const seen = new Map()
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const ppid = Number(f[1])
      if (!kids.has(ppid)) kids.set(ppid, [])
      kids.get(ppid).push(Number(p))
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))
      // utime and stime (fields 14 and 15 of stat); start time (22) tells a reused pid apart.
      seen.set(Number(p), { rss: m ? Number(m[1]) : 0, cpu: (Number(f[11]) + Number(f[12])) / TICK, start: f[19] })
    } catch {}
  }
  let rss = 0
  const todo = [pid]
  while (todo.length) {
    const p = todo.pop()
    const s = seen.get(p)
    if (s) {
      rss += s.rss
      cpuByPid.set(`${p}/${s.start}`, s.cpu)
    }
    todo.push(...(kids.get(p) ?? []))
  }
  return rss
}

async function run(mode) {
  const script = fileURLToPath(import.meta.url)
  const child = spawn(process.execPath, [script, `--mode=${mode}`, `--sessions=${SESSIONS}`, `--followups=${FOLLOWUPS}`, `--think=${THINK}`], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  let peak = 0
  const cpuByPid = new Map()
  const sampler = setInterval(() => (peak = Math.max(peak, sampleTree(child.pid, cpuByPid))), 100)
  const code = await new Promise((r) => child.on('exit', r))
  clearInterval(sampler)
  if (code !== 0) throw new Error(`${mode} run failed:\n${err}`)
  const cpu = [...cpuByPid.values()].reduce((a, b) => a + b, 0)
  return { ...JSON.parse(out.trim().split('\n').at(-1)), cpu, peakMiB: peak / 1024 }
}
const cold = await run('cold')
const warm = await run('prewarm')
const f = (x) => x.toFixed(0)
console.log(`| | cold | prewarm | prewarm / cold |`)
console.log(`| --- | ---: | ---: | ---: |`)
console.log(`| first task, median (ms) | ${f(median(cold.first))} | ${f(median(warm.first))} | ${(median(warm.first) / median(cold.first)).toFixed(2)} |`)
console.log(`| first task, p95 (ms) | ${f(p95(cold.first))} | ${f(p95(warm.first))} | ${(p95(warm.first) / p95(cold.first)).toFixed(2)} |`)
console.log(`| follow-up, median (ms) | ${f(median(cold.followups))} | ${f(median(warm.followups))} | ${(median(warm.followups) / median(cold.followups)).toFixed(2)} |`)
console.log(`| wall without think time (s) | ${(cold.wall / 1000).toFixed(1)} | ${(warm.wall / 1000).toFixed(1)} | ${(warm.wall / cold.wall).toFixed(2)} |`)
console.log(`| CPU, user + system, with the CLIs (s) | ${cold.cpu.toFixed(1)} | ${warm.cpu.toFixed(1)} | ${(warm.cpu / cold.cpu).toFixed(2)} |`)
console.log(`| peak RSS of the process tree (MiB) | ${f(cold.peakMiB)} | ${f(warm.peakMiB)} | ${(warm.peakMiB / cold.peakMiB).toFixed(2)} |`)
console.log(`\n${SESSIONS} sessions × (first task + ${FOLLOWUPS} follow-ups), think time ${THINK} ms; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`)
