// A sibling process for the scale section, so that observing does not load the process being
// observed: it measures its own event-loop delay (a control: an idle Node process on the same
// machine at the same time) and samples the total RSS of the observed process's children
// (the CLI processes) from /proc. Started with the pid to watch; answers 'stop' with its figures.
import fs from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const watched = Number(process.argv[2])
function childrenRss() {
  let mb = 0
  let count = 0
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== watched) continue
      const rss = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
      if (rss) {
        mb += Number(rss[1]) / 1024
        count++
      }
    } catch {}
  }
  return { mb, count }
}
let h = null
const samples = []
let timer = null
process.on('message', (m) => {
  if (m === 'start') {
    h = monitorEventLoopDelay({ resolution: 1 })
    h.enable()
    timer = setInterval(() => samples.push(childrenRss()), 250)
  } else if (m === 'stop') {
    clearInterval(timer)
    h.disable()
    process.send({
      controlEventLoopDelayMs: { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 },
      peakCount: Math.max(0, ...samples.map((s) => s.count)),
      peakTotalRssMb: Math.max(0, ...samples.map((s) => s.mb)),
    })
    process.exit(0)
  }
})
process.send('ready')
