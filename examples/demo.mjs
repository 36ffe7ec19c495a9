// The main job: a new session, a resumed task that shows the model got the earlier turn, a fork
// that leaves its parent as it was, and the context meter — through the real `claude` CLI.
// With ANTHROPIC_API_KEY set it talks to the real API; otherwise to the package's stand-in server.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { SessionManager } = require('../index.js')
const { startStandInServer } = require('../testing/index.js')

const real = Boolean(process.env.ANTHROPIC_API_KEY)
const server = real ? null : await startStandInServer()
const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'csm-demo-')))
const env = real ? {} : { ...server.env(), CLAUDE_CONFIG_DIR: path.join(dir, 'claude-config') }
if (!real) fs.mkdirSync(env.CLAUDE_CONFIG_DIR)

console.log(real ? 'Using the real Anthropic API (ANTHROPIC_API_KEY is set).' : `No ANTHROPIC_API_KEY: using the stand-in API server at ${server.url}.`)
const manager = new SessionManager({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: dir, env, defaultModel: real ? 'haiku' : 'sonnet' })

const meter = (c) => {
  const width = 30
  const filled = Math.min(width, Math.round((c.usagePercentage / 100) * width))
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${c.estimatedTokens} / ${c.maxTokens} tokens (${c.usagePercentage}%, ${c.source})`
}
const show = (label, r) => {
  if (!r.success) throw new Error(`${label} failed: ${r.error.code} ${r.error.message}`)
  console.log(`\n== ${label}\n   session ${r.sessionId}${r.parentSessionId ? ` (fork of ${r.parentSessionId})` : ''}`)
  console.log(`   reply:   ${r.result.trim().split('\n')[0].slice(0, 120)}`)
  console.log(`   cost:    $${r.cost.toFixed(6)}  turns: ${r.turns}  time: ${r.duration.total} ms`)
  console.log(`   context: ${meter(r.contextInfo)}`)
}

let streamed = 0
const first = await manager.executeTask(
  { prompt: 'My name is Ada and my favourite number is 7. Reply with one short sentence.', projectId: 'demo', userId: 'ada' },
  { onEvent: () => streamed++ },
)
show('1. new session', first)
console.log(`   (${streamed} events streamed while it ran)`)

const second = await manager.executeTask({ prompt: 'What is my name and favourite number?', projectId: 'demo', userId: 'ada', sessionId: first.sessionId })
show('2. resumed: the model sees turn 1', second)

const fork = await manager.executeTask({ prompt: 'Suppose my favourite number were 8 instead. What would it be?', projectId: 'demo', userId: 'ada', sessionId: first.sessionId, forkSession: true })
show('3. fork: a new session from the same history', fork)

const parent = await manager.executeTask({ prompt: 'What is my favourite number?', projectId: 'demo', userId: 'ada', sessionId: first.sessionId })
show('4. the parent after the fork (unchanged by it)', parent)

const sessions = await manager.listSessions({ userId: 'ada', projectId: 'demo' })
console.log(`\n== sessions of ada/demo (newest activity first)`)
for (const s of sessions) console.log(`   ${s.id}  tasks: ${s.taskCount}  cost: $${s.totalCostUsd.toFixed(6)}${s.parentId ? `  parent: ${s.parentId}` : ''}`)
console.log(`\n== context of the parent, from the store (nothing spawned)\n   ${meter(await manager.getSessionContext(first.sessionId, 'ada'))}`)

await manager.close()
await server?.close()
console.log(`\nDatabase: ${path.join(dir, 'sessions.db')}`)
