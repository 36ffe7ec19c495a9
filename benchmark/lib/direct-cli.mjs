// A warm CLI driven directly, with no manager and no SDK: the floor for any driver of one. Used by
// section 8 (`sections/warm.mjs`, the *direct* contender) and by `warm-flags.mjs`.
import fs from 'node:fs'
import crypto from 'node:crypto'
import { spawn } from 'node:child_process'

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
 * Starts `binary` with `argv` (its `--session-id=` replaced by a new one) in `cwd` with `env`;
 * `turn(text)` writes a user line to its stdin and resolves to the milliseconds until its result
 * line was parsed (rejects on an error result). `proc` is the child; `argv` what it got.
 */
export function driveCli(binary, argv, { cwd, env }) {
  const fresh = argv.map((a) => (a.startsWith('--session-id=') ? `--session-id=${crypto.randomUUID()}` : a))
  const proc = spawn(binary, fresh, { cwd, env, stdio: ['pipe', 'pipe', 'ignore'] })
  proc.stdout.setEncoding('utf8')
  let buf = ''
  let waiter = null
  proc.stdout.on('data', (d) => {
    buf += d
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (!line) continue
      const m = JSON.parse(line)
      if (m.type === 'result' && waiter) {
        const w = waiter
        waiter = null
        w(m)
      }
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
