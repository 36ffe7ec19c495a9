// A warm CLI driven directly, with no manager and no SDK: the floor for any driver of one. Used by
// section 8 (`sections/warm.mjs`, the *direct* contender) and by `warm-flags.mjs`.
import fs from 'node:fs'
import crypto from 'node:crypto'
import { spawn } from 'node:child_process'
import { childrenOf } from './stats.mjs'

/** A user message in the stream-json input format (the line the SDK writes, with a uuid). */
export const userLine = (text) => ({ type: 'user', session_id: '', message: { role: 'user', content: [{ type: 'text', text }] }, parent_tool_use_id: null, uuid: crypto.randomUUID() })

/** A running process's argv (without the program) and environment, read from /proc. */
export function processLaunch(pid) {
  const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(1, -1)
  const env = Object.fromEntries(
    fs
      .readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  )
  return { argv, env }
}

/**
 * The argv (without the program) and environment of the warm CLI a manager made with `options`
 * (an addon's `SessionManager`, `sandbox: 'none'`, no CLI niceness) keeps after one task: what
 * the manager gives a CLI, to drive one like it directly.
 */
export async function managersLaunch(SessionManager, options) {
  const m = new SessionManager({ sandbox: 'none', warmIdleMs: 600_000, cliNiceness: 0, ...options })
  await m.executeTask({ prompt: 'hi', projectId: 'p', userId: 'u' })
  const pid = childrenOf(process.pid).find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('stream-json')
    } catch {
      return false
    }
  })
  if (!pid) throw new Error('the manager kept no warm CLI')
  const launch = processLaunch(pid)
  await m.close()
  return launch
}

/** Calls `onMessage` with each JSON line a child prints on `stdout`. */
export function jsonLines(stdout, onMessage) {
  stdout.setEncoding('utf8')
  let buf = ''
  stdout.on('data', (d) => {
    buf += d
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (line) onMessage(JSON.parse(line))
    }
  })
}

/**
 * Starts `binary` with `argv` (its `--session-id=` replaced by a new one) in `cwd` with `env`;
 * `turn(text)` writes a user line to its stdin and resolves to the milliseconds until its result
 * line was parsed (rejects on an error result). `proc` is the child; `argv` what it got.
 */
export function driveCli(binary, argv, { cwd, env }) {
  const fresh = argv.map((a) => (a.startsWith('--session-id=') ? `--session-id=${crypto.randomUUID()}` : a))
  const proc = spawn(binary, fresh, { cwd, env, stdio: ['pipe', 'pipe', 'ignore'] })
  let waiter = null
  jsonLines(proc.stdout, (m) => {
    if (m.type === 'result' && waiter) {
      const w = waiter
      waiter = null
      w(m)
    }
  })
  const turn = (text) =>
    new Promise((resolve, reject) => {
      const t0 = process.hrtime.bigint()
      waiter = (m) => (m.is_error ? reject(new Error(`direct turn failed: ${m.result}`)) : resolve(Number(process.hrtime.bigint() - t0) / 1e6))
      proc.stdin.write(`${JSON.stringify(userLine(text))}\n`)
    })
  return { proc, argv: fresh, turn }
}
