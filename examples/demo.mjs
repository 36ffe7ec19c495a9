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
// Everything the demo makes lives in one temp folder, removed at the end (also after a failure):
// the state folder (database) and the agents' working folder side by side, never one inside the
// other.
const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'csm-demo-')))
const cleanUp = () => fs.rmSync(dir, { recursive: true, force: true })
process.on('exit', cleanUp)
const work = path.join(dir, 'work')
fs.mkdirSync(work)
const env = real ? {} : server.env()

if (real) {
  console.log('Using the real Anthropic API (ANTHROPIC_API_KEY is set): the costs below are real.')
} else {
  console.log(`No ANTHROPIC_API_KEY: using the package's stand-in API server at ${server.url} (offline, nothing is charged).`)
  console.log('The stand-in "model" answers every call with `Echo #<n>: <your last message>`, where <n> is the')
  console.log('number of user turns it was sent: the history the CLI gave it. Costs are what the CLI computes')
  console.log("from the stand-in's made-up token counts with its own price table: labelled stand-in, not spent.")
}
const manager = new SessionManager({ stateDirectory: path.join(dir, 'state'), workingDirectory: work, env, defaultModel: real ? 'haiku' : 'sonnet' })

const meter = (c) => {
  const width = 30
  const filled = Math.min(width, Math.round((c.usagePercentage / 100) * width))
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${c.estimatedTokens} / ${c.maxTokens} tokens (${c.usagePercentage}%, ${c.source})`
}
const usd = (n) => `$${n.toFixed(6)}${real ? '' : ' (stand-in)'}`
/** What the stand-in's `Echo #<n>` says about the history the model saw. */
const echoMeans = (r, expected, why) => {
  if (real) return
  const n = Number(/^Echo #(\d+):/.exec(r.result.trim())?.[1])
  const verdict = n === expected ? 'as it should' : `EXPECTED ${expected}`
  console.log(`   means:   the model was sent ${n} user turn${n === 1 ? '' : 's'} (${verdict}): ${why}`)
}
const show = (label, r) => {
  if (!r.success) throw new Error(`${label} failed: ${r.error.code} ${r.error.message}`)
  console.log(`\n== ${label}\n   session ${r.sessionId}${r.parentSessionId ? ` (fork of ${r.parentSessionId})` : ''}`)
  console.log(`   reply:   ${r.result.trim().split('\n')[0].slice(0, 120)}`)
  console.log(`   cost:    ${usd(r.cost)}  turns: ${r.turns}  time: ${r.duration.total} ms`)
  console.log(`   context: ${meter(r.contextInfo)}`)
}

try {
  let streamed = 0
  const first = await manager.executeTask(
    { prompt: 'My name is Ada and my favourite number is 7. Reply with one short sentence.', projectId: 'demo', userId: 'ada' },
    { onEvent: () => streamed++ },
  )
  show('1. new session', first)
  console.log(`   (${streamed} events streamed while it ran)`)
  echoMeans(first, 1, 'a new session has only this prompt')

  const second = await manager.executeTask({ prompt: 'What is my name and favourite number?', projectId: 'demo', userId: 'ada', sessionId: first.sessionId })
  show('2. resumed: the model sees turn 1', second)
  echoMeans(second, 2, 'turn 1 came with it, so the session was resumed')

  const fork = await manager.executeTask({ prompt: 'Suppose my favourite number were 8 instead. What would it be?', projectId: 'demo', userId: 'ada', sessionId: first.sessionId, forkSession: true })
  show('3. fork: a new session from the same history', fork)
  echoMeans(fork, 3, "the fork starts from the parent's two turns")

  const parent = await manager.executeTask({ prompt: 'What is my favourite number?', projectId: 'demo', userId: 'ada', sessionId: first.sessionId })
  show('4. the parent after the fork (unchanged by it)', parent)
  echoMeans(parent, 3, "the fork's turn is not in the parent")

  const sessions = await manager.listSessions({ userId: 'ada', projectId: 'demo' })
  console.log(`\n== sessions of ada/demo (newest activity first)`)
  for (const s of sessions) console.log(`   ${s.id}  tasks: ${s.taskCount}  cost: ${usd(s.totalCostUsd)}${s.parentId ? `  parent: ${s.parentId}` : ''}`)
  console.log(`\n== context of the parent, from the store (nothing spawned)\n   ${meter(await manager.getSessionContext(first.sessionId, 'ada'))}`)
} finally {
  await manager.close()
  await server?.close()
}
console.log(`\nDone. The demo's database and working folder (${dir}) are removed now.`)
