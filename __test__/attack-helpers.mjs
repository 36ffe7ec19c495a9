// Helpers for attacks.test.mjs: run one scripted Bash command in a task and read back what the
// tool printed, as the CLI sent it to the (stand-in) model.
import crypto from 'node:crypto'
import { filesUnder } from './helpers.mjs'

export const messageCalls = (server) => server.requests.filter((r) => r.path === '/v1/messages')

/** Every tool_result text the CLI sent to the model since `from` (index into server.requests). */
export function toolResults(server, from = 0) {
  const out = []
  for (const r of server.requests.slice(from)) {
    if (r.path !== '/v1/messages' || !r.body || !Array.isArray(r.body.messages)) continue
    const last = r.body.messages.at(-1)
    if (!last || last.role !== 'user' || !Array.isArray(last.content)) continue
    for (const b of last.content) {
      if (b.type !== 'tool_result') continue
      const c = b.content
      out.push(typeof c === 'string' ? c : Array.isArray(c) ? c.map((x) => x.text ?? '').join('\n') : JSON.stringify(c))
    }
  }
  return out
}

/** Everything the CLI sent to the API since `from`, as one string. */
export function requestsText(server, from = 0) {
  return server.requests.slice(from).map((r) => JSON.stringify(r.body)).join('\n')
}

/**
 * Runs a task whose model calls Bash with `command` once and then says "done". Returns the task
 * result and the tool result text (joined) the CLI sent back. `finalReply` answers the tool result.
 */
export async function runBash(manager, server, command, request = {}, options = {}, finalReply = { text: 'done' }) {
  const from = server.requests.length
  server.enqueue({ toolUse: { name: 'Bash', input: { command, description: 'attack' } } }, finalReply)
  const r = await manager.executeTask(
    { prompt: 'run it', projectId: 'p', userId: 'mallory', permissionMode: 'acceptEdits', allowedTools: ['Bash'], ...request },
    options,
  )
  return { r, output: toolResults(server, from).join('\n'), from }
}

/** Transcript files (*.jsonl) under a folder (see `filesUnder`). */
export const transcripts = (root) => filesUnder(root).filter((f) => f.endsWith('.jsonl'))


/** A marker string no other test (or the CLI) produces. */
export const mark = (name) => `${name}_${crypto.randomBytes(6).toString('hex')}`

/** `KEY=value` lines of a probe's output. */
export const fields = (output) => Object.fromEntries([...output.matchAll(/^([A-Z_0-9]+)=(.*)$/gm)].map((m) => [m[1], m[2].trim()]))

/** Skips (and closes the manager) when the agent would not run in bubblewrap. */
export async function requireSandbox(t, manager) {
  const { sandbox } = manager.info()
  if (sandbox === 'bubblewrap') return true
  t.skip(`agent sandbox is '${sandbox}', not 'bubblewrap': bwrap is unavailable here, the sandboxed attack cannot be checked`)
  await manager.close()
  return false
}
