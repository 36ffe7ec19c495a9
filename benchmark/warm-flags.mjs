// Whether the flags and environment the manager gives its warm CLI make a warm turn slower than
// the Agent SDK's CLI (benchmark/RESULTS-warm.md, "Where the warm follow-up's gap is").
//
//   BENCH_ADDON=<build>.node node benchmark/warm-flags.mjs [rounds=30]
//
// A warm manager runs one task; its CLI's argv and environment are read from /proc. Then five CLIs
// are driven directly (a user line on stdin, the result line read from stdout), each a variant of
// them: as the manager starts it (`direct`), without file checkpointing
// (CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING), without the disallowed background tools, with the
// SDK's environment instead of the manager's allow-list, and with both of the last two. One
// follow-up on each per round, the order rotated; the median per variant.
import { addon, claudeBinary, startStandIn, workspace, sdkEnvironment } from './lib/harness.mjs'
import { median } from './lib/stats.mjs'
import { driveCli, managersLaunch } from './lib/direct-cli.mjs'

const ROUNDS = Number(process.argv[2] ?? 30)
const PROMPT = 'Reply with one short sentence about warm processes.'
const real = claudeBinary()
const standIn = await startStandIn()
const ws = workspace('csm-flags-')
const { argv, env } = await managersLaunch(addon.SessionManager, {
  databasePath: ws.db,
  workingDirectory: ws.work,
  claudePath: real,
  env: { ...standIn.env, CLAUDE_CONFIG_DIR: ws.config },
})

function driver(name, args, env) {
  const w = workspace(`csm-flags-${name}-`)
  const { proc, turn } = driveCli(real, args, { cwd: w.work, env: { ...env, CLAUDE_CONFIG_DIR: w.config } })
  return { name, proc, turn }
}
// The manager's CLI reaches the API through its key proxy; these reach the stand-in directly.
const managers = { ...env, ...standIn.env }
const noCheckpoints = { ...managers }
delete noCheckpoints.CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING
const noDisallowed = argv.filter((a) => !a.startsWith('--disallowedTools'))
const sdkEnv = sdkEnvironment(standIn.env, {})
const variants = [
  driver('direct', argv, managers),
  driver('noCheckpoints', argv, noCheckpoints),
  driver('noDisallowed', noDisallowed, managers),
  driver('sdkEnv', argv, sdkEnv),
  driver('sdkEnvNoDisallowed', noDisallowed, sdkEnv),
]
const rows = Object.fromEntries(variants.map((v) => [v.name, []]))
for (const v of variants) await v.turn('warm up')
for (let i = 0; i < ROUNDS; i++) {
  for (let k = 0; k < variants.length; k++) {
    const v = variants[(k + i) % variants.length]
    rows[v.name].push(await v.turn(PROMPT))
  }
}
for (const [n, a] of Object.entries(rows)) console.log(`${n.padEnd(20)} ${median(a).toFixed(2)} ms`)
console.log(`the manager's environment beyond the SDK's: ${Object.keys(managers).filter((k) => managers[k] !== sdkEnv[k]).join(', ')}`)
for (const v of variants) v.proc.stdin.end()
standIn.close?.()
process.exit(0)
