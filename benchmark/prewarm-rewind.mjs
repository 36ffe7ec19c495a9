// Would a warm-up turn, taken back at once, make a prewarmed CLI's first real turn as fast as a
// follow-up? (benchmark/RESULTS-prewarm.md, "A warm-up turn taken back".)
//
//   BENCH_ADDON=<build>.node node benchmark/prewarm-rewind.mjs [runs=8]
//
// A warm manager runs one task; its CLI's argv and environment are read from /proc (as
// warm-flags.mjs does). Then, per run and per variant, a new CLI is started with them (a new
// session, reaching the stand-in directly), left 3 s to start up, given the variant's warm-up, and
// then two prompts; the time of each from the user line written to the result line read:
//   none:       no warm-up (what `manager.prewarm` does today);
//   ok×1, ok×3: one or three warm-up turns the model answers, each taken back with the CLI's
//               `rewind_conversation` control request right after its result;
//   error×1:    one warm-up turn answered with HTTP 401 (as the key proxy answers a suspended
//               token), taken back the same way.
// After each variant the stand-in's requests for the two real prompts are checked for the warm-up's
// text: a rewind that left it in the conversation fails the run. Prints the medians per variant.
import crypto from 'node:crypto'
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import { addon, claudeBinary, workspace } from './lib/harness.mjs'
import { median } from './lib/stats.mjs'
import { jsonLines, managersLaunch, userLine } from './lib/direct-cli.mjs'

const require = createRequire(import.meta.url)
const { startStandInServer } = require('../testing/index.js')
const RUNS = Number(process.argv[2] ?? 8)
const real = claudeBinary()
const server = await startStandInServer({})
const ws = workspace('csm-rewind-')
const launch = await managersLaunch(addon.SessionManager, {
  databasePath: ws.db,
  workingDirectory: ws.work,
  claudePath: real,
  env: { ...server.env(), CLAUDE_CONFIG_DIR: ws.config },
})
const env = { ...launch.env, ...server.env() }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** A CLI with the manager's argv and environment, a new session; `turn`, `control`, `close`. */
function start() {
  const w = workspace('csm-rewind-run-')
  const argv = launch.argv.map((a) => (a.startsWith('--session-id=') ? `--session-id=${crypto.randomUUID()}` : a))
  const proc = spawn(real, argv, { cwd: w.work, env: { ...env, CLAUDE_CONFIG_DIR: w.config }, stdio: ['pipe', 'pipe', 'ignore'] })
  const waiters = []
  jsonLines(proc.stdout, (msg) => {
    const w = waiters.findIndex((x) => x.pred(msg))
    if (w >= 0) waiters.splice(w, 1)[0].resolve(msg)
  })
  const next = (pred) => new Promise((resolve) => waiters.push({ pred, resolve }))
  const write = (o) => proc.stdin.write(`${JSON.stringify(o)}\n`)
  return {
    async turn(text) {
      const line = userLine(text)
      const done = next((x) => x.type === 'result')
      const t0 = performance.now()
      write(line)
      const result = await done
      return { ms: performance.now() - t0, uuid: line.uuid, result }
    },
    async rewind(uuid) {
      const request_id = crypto.randomUUID()
      const answer = next((x) => x.type === 'control_response' && x.response?.request_id === request_id)
      write({ type: 'control_request', request_id, request: { subtype: 'rewind_conversation', target_message_uuid: uuid } })
      const r = (await answer).response.response
      if (!r?.rewound) throw new Error(`the rewind was refused: ${JSON.stringify(r)}`)
    },
    close: () => new Promise((done) => (proc.once('exit', done), proc.stdin.end())),
  }
}

const variants = {
  none: { turns: 0 },
  'ok×1': { turns: 1 },
  'ok×3': { turns: 3 },
  'error×1': { turns: 1, error: true },
}
const times = Object.fromEntries(Object.keys(variants).map((k) => [k, { first: [], second: [] }]))
for (let run = 0; run < RUNS; run++) {
  for (const [name, v] of Object.entries(variants)) {
    const cli = start()
    await sleep(3000)
    for (let k = 0; k < v.turns; k++) {
      if (v.error) server.enqueue({ error: { status: 401 } })
      const t = await cli.turn(`WARM-UP ${k}: reply with nothing`)
      await cli.rewind(t.uuid)
    }
    const seenFrom = server.requests.length
    const first = await cli.turn('Reply with one short sentence about warm processes.')
    const second = await cli.turn('And another one.')
    await cli.close()
    const leaked = server.requests.slice(seenFrom).some((r) => JSON.stringify(r.body ?? '').includes('WARM-UP'))
    if (leaked) throw new Error(`${name}: the model saw a warm-up turn`)
    times[name].first.push(first.ms)
    times[name].second.push(second.ms)
  }
  process.stderr.write(`run ${run + 1}/${RUNS}\n`)
}
await server.close()
console.log('| warm-up | first prompt, median ms | second prompt, median ms |')
console.log('| --- | ---: | ---: |')
for (const [name, t] of Object.entries(times)) console.log(`| ${name} | ${median(t.first).toFixed(1)} | ${median(t.second).toFixed(1)} |`)
