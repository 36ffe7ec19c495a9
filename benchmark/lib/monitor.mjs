// A sibling process for the scale and warm sections, so that observing does not load the process
// being observed: it measures its own event-loop delay (a control: an idle Node process on the
// same machine at the same time) and samples, every 250 ms, the RSS of the observed process's
// children (the CLI processes) from /proc, leaving out itself and the pids given as a
// comma-separated second argument (e.g. the stand-in server), and the observed process's own RSS.
// Started with the pid to watch; answers 'stop' with its figures.
import fs from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { childrenOf } from './stats.mjs'

const watched = Number(process.argv[2])
const excluded = new Set([process.pid, ...String(process.argv[3] ?? '').split(',').filter(Boolean).map(Number)])
const rssMb = (pid) => {
  const rss = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  return rss ? Number(rss[1]) / 1024 : null
}
const seen = new Set()
function sample() {
  let mb = 0
  let count = 0
  for (const pid of childrenOf(watched)) {
    if (excluded.has(pid)) continue
    try {
      const r = rssMb(pid)
      if (r !== null) {
        mb += r
        count++
        seen.add(pid)
      }
    } catch {}
  }
  let own = 0
  try {
    own = rssMb(watched) ?? 0
  } catch {}
  return { mb, count, withWatched: mb + own }
}
let h = null
const samples = []
let timer = null
process.on('message', (m) => {
  if (m === 'start') {
    h = monitorEventLoopDelay({ resolution: 1 })
    h.enable()
    timer = setInterval(() => samples.push(sample()), 250)
  } else if (m === 'stop') {
    clearInterval(timer)
    h.disable()
    process.send({
      controlEventLoopDelayMs: { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 },
      peakCount: Math.max(0, ...samples.map((s) => s.count)),
      peakTotalRssMb: Math.max(0, ...samples.map((s) => s.mb)),
      peakTotalWithWatchedRssMb: Math.max(0, ...samples.map((s) => s.withWatched)),
      distinctChildren: seen.size,
      samples: samples.length,
    })
    process.exit(0)
  }
})
process.send('ready')
