// Two or more builds of the addon (or one build with and without the key proxy) side by side on
// warm follow-ups, interleaved in one process, so that a change's effect is measured under the
// same noise (benchmark/RESULTS-warm.md).
//
//   node benchmark/warm-builds.mjs [rounds=200] <name>=<build>.node[:open] …
//
// Each contender is a warm manager (SQLite, sandbox `none`, `cliNiceness: 0`) of the named build
// with one session that has had one task; `:open` gives that manager `exposeApiKeyToAgent: true`
// (unsafe; measurement only: its CLI calls the stand-in directly, with no key proxy and no spend
// ledger). Then `rounds` rounds of one follow-up on each, 20 ms apart, the order rotated each
// round. Printed: each contender's median, and the first contender minus each other one, as the
// difference of medians and as the median of the per-round differences.
import { createRequire } from 'node:module'
import { claudeBinary, startStandIn, workspace } from './lib/harness.mjs'
import { median } from './lib/stats.mjs'

const require = createRequire(import.meta.url)
const args = process.argv.slice(2)
const rounds = /^\d+$/.test(args[0] ?? '') ? Number(args.shift()) : 200
if (args.length < 2) throw new Error('usage: node benchmark/warm-builds.mjs [rounds] <name>=<build>.node[:open] <name>=<build>.node[:open] …')
const standIn = await startStandIn()
const contenders = []
for (const arg of args) {
  const [name, spec] = arg.split(/=(.*)/s)
  const open = spec.endsWith(':open')
  const addon = require(open ? spec.slice(0, -':open'.length) : spec)
  const ws = workspace(`csm-builds-${name}-`)
  const m = new addon.SessionManager({
    sandbox: 'none',
    databasePath: ws.db,
    workingDirectory: ws.work,
    claudePath: claudeBinary(),
    env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config },
    warmIdleMs: 600_000,
    cliNiceness: 0,
    ...(open ? { exposeApiKeyToAgent: true } : {}),
  })
  const first = await m.executeTask({ prompt: 'Reply with one short sentence.', projectId: 'bench', userId: 'u' })
  if (!first.success) throw new Error(`${name}: ${first.error?.code} ${first.error?.message}`)
  contenders.push({ name, m, sessionId: first.sessionId, ms: [] })
}
for (let i = 0; i < rounds; i++) {
  for (let k = 0; k < contenders.length; k++) {
    const c = contenders[(k + i) % contenders.length]
    await new Promise((r) => setTimeout(r, 20))
    const t = performance.now()
    const r = await c.m.executeTask({ prompt: `Follow-up ${i}: one short sentence.`, projectId: 'bench', userId: 'u', sessionId: c.sessionId })
    if (!r.success) throw new Error(`${c.name}: ${r.error?.code} ${r.error?.message}`)
    c.ms.push(performance.now() - t)
  }
}
const [head, ...rest] = contenders
for (const c of contenders) console.log(`${c.name}: median ${median(c.ms).toFixed(2)} ms over ${rounds} follow-ups`)
for (const c of rest) {
  const perRound = median(head.ms.map((x, i) => x - c.ms[i]))
  console.log(`${head.name} − ${c.name}: ${(median(head.ms) - median(c.ms)).toFixed(2)} ms (of medians), ${perRound.toFixed(2)} ms (per-round median)`)
}
for (const c of contenders) await c.m.close()
await standIn.close()
