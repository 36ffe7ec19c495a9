// Small statistics and formatting helpers shared by the benchmark sections.
import fs from 'node:fs'
import os from 'node:os'

export function quantile(values, q) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return NaN
  const pos = (v.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return v[lo] + (v[hi] - v[lo]) * (pos - lo)
}
export const median = (v) => quantile(v, 0.5)
export const p90 = (v) => quantile(v, 0.9)
export const p99 = (v) => quantile(v, 0.99)

export function fmt(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return 'n/a'
  if (!Number.isFinite(x)) return String(x)
  const a = Math.abs(x)
  if (a >= 1000) return x.toLocaleString('en-US', { maximumFractionDigits: 0 })
  if (a >= 100) return x.toFixed(Math.max(0, digits - 2))
  if (a >= 10) return x.toFixed(Math.max(0, digits - 1))
  return x.toFixed(digits)
}

/** MemAvailable from /proc/meminfo, in MiB. */
export function memAvailableMb() {
  const m = /MemAvailable:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))
  return m ? Number(m[1]) / 1024 : NaN
}

export const nowMs = () => Number(process.hrtime.bigint()) / 1e6

/** The parent pid of a process, or 0. */
function ppidOf(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  } catch {
    return 0
  }
}

/** The pids whose parent is `pid`. */
export function childrenOf(pid) {
  return fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p) && ppidOf(Number(p)) === pid)
    .map(Number)
}

/**
 * Load averages and the processes running on a CPU right now (state R) that are not this
 * benchmark's own (`root` and its descendants), by command name: what else was running.
 */
export function machineLoad(root = Number(process.env.BENCH_ROOT_PID || process.pid)) {
  const [l1, l5, l15] = os.loadavg()
  const counts = {}
  let ours = 0
  try {
    for (const pid of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
        const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
        const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
        if (state !== 'R') continue
        let p = Number(pid)
        let mine = false
        for (let hops = 0; p > 1 && hops < 64; hops++) {
          if (p === root) {
            mine = true
            break
          }
          p = ppidOf(p)
        }
        if (mine) ours++
        else counts[comm] = (counts[comm] || 0) + 1
      } catch {}
    }
  } catch {}
  return { at: new Date().toISOString(), load1: l1, load5: l5, load15: l15, ours, others: counts }
}

/** Runs `fn` every `ms` milliseconds; returns a stop function giving what was collected. */
export function sampler(fn, ms) {
  const out = []
  const t = setInterval(() => out.push(fn()), ms)
  t.unref()
  return () => {
    clearInterval(t)
    return out
  }
}

export function writeJson(file, data) {
  fs.writeFileSync(file, JSON.stringify(data, null, 2))
}

/** The `--name=value` and `--flag` arguments of this process. */
export function args() {
  const out = {}
  for (const a of process.argv.slice(2)) {
    const m = /^--([^=]+)(?:=(.*))?$/.exec(a)
    if (m) out[m[1]] = m[2] ?? true
  }
  return out
}
