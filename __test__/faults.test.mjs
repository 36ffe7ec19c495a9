// Faults: the Node process killed mid-task, a silent CLI, a dropped stream, API errors; and a
// stand-in CLI (a shell script, and it says so) only for output the real one cannot be made to
// produce (garbage and a truncated line).
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { makeManager, processesMentioning, startStandInServer, tempDir } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

test('faults: SIGKILL of the Node process mid-task takes its CLI down; the next start marks the task interrupted and the session resumes', async (t) => {
  server.reset()
  const { manager, dir, work, configDir } = makeManager({ server })
  const first = await manager.executeTask({ prompt: 'before the crash', projectId: 'p', userId: 'u' })
  await manager.close()
  server.enqueue({ text: 'never finished', delayMs: 60_000 })
  const script = `
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
    const m = new SessionManager(${JSON.stringify({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, env: { ...server.env(), CLAUDE_CONFIG_DIR: configDir } })});
    m.executeTask({ prompt: 'crash during me', projectId: 'p', userId: 'u', sessionId: ${JSON.stringify(first.sessionId)} },
      { onEvent: (e) => { if (e.type === 'task_started') console.log('started') } });`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise((resolve) => child.stdout.on('data', (d) => String(d).includes('started') && resolve()))
  // Wait until the CLI is talking to the API, so it is surely running.
  for (let i = 0; i < 200 && !server.requests.some((r) => r.sessionId === first.sessionId && r.endedAt === null); i++) await sleep(50)
  t.assert.ok(processesMentioning(first.sessionId).length >= 1, 'the CLI runs')
  child.kill('SIGKILL')
  await new Promise((r) => child.on('exit', r))
  let left = processesMentioning(first.sessionId)
  for (let i = 0; i < 40 && left.length; i++) {
    await sleep(50)
    left = processesMentioning(first.sessionId)
  }
  t.assert.deepStrictEqual(left, [], 'the CLI died with its Node process')

  const { manager: again } = makeManager({ server, dir })
  const tasks = await again.listTasks(first.sessionId, 'u')
  t.assert.deepStrictEqual(tasks.map((x) => x.status), ['succeeded', 'interrupted'])
  t.assert.strictEqual(tasks[1].errorCode, 'INTERRUPTED')
  server.reset()
  const resumed = await again.executeTask({ prompt: 'after the crash', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  t.assert.strictEqual(resumed.success, true, JSON.stringify(resumed.error))
  t.assert.strictEqual(resumed.sessionId, first.sessionId)
  t.assert.match(JSON.stringify(server.requests.at(-1).body.messages), /before the crash/, 'history survived')
  await again.close()
})

function fakeCli(dir, body) {
  // A stand-in CLI script: only for output the real CLI cannot be made to produce.
  const p = path.join(dir, 'fake-claude.sh')
  fs.writeFileSync(p, `#!/bin/sh\ncat > /dev/null\n${body}\n`, { mode: 0o755 })
  return p
}

test('faults (stand-in CLI): garbage and a truncated line fail with CLI_ERROR and the stderr tail; the session stays usable', async (t) => {
  const dir = tempDir()
  const claudePath = fakeCli(dir, `echo 'garbage here'\nprintf '{"type":"assis'\necho 'fatal: something broke' >&2\nexit 2`)
  const { manager } = makeManager({ dir, claudePath })
  const r = await manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'CLI_ERROR')
  t.assert.match(r.error.message, /exit code Some\(2\)|exit code 2/)
  t.assert.match(r.error.message, /fatal: something broke/)
  t.assert.strictEqual(r.warnings.length, 2, JSON.stringify(r.warnings))
  t.assert.match(r.warnings[0], /^malformed CLI output line: not JSON .*garbage here$/)
  t.assert.match(r.warnings[1], /\{"type":"assis$/)
  const [task] = await manager.listTasks(r.sessionId, 'u')
  t.assert.strictEqual(task.status, 'failed')
  t.assert.strictEqual((await manager.getSession(r.sessionId, 'u')).taskCount, 1)
  await manager.close()
})

test('faults: a CLI that goes silent (the API never answers) is stopped by the stall timeout', async (t) => {
  server.reset()
  // The real CLI waits 12 s for a reply and prints nothing meanwhile.
  // 6 s: long enough for the CLI's start-up on a loaded machine, which prints its init line within it.
  const { manager } = makeManager({ server, stallTimeoutMs: 6000 })
  server.enqueue({ text: 'too late', delayMs: 12_000 })
  const r = await manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u' })
  t.assert.deepStrictEqual(r.error, { code: 'TIMEOUT', message: 'the CLI printed nothing for 6000 ms and was stopped' })
  t.assert.strictEqual((await manager.listTasks(r.sessionId, 'u'))[0].status, 'timed_out')
  t.assert.strictEqual(server.requests.filter((x) => x.path === '/v1/messages').length, 1, 'it was waiting for the API')
  t.assert.deepStrictEqual(processesMentioning(r.sessionId), [], 'the CLI was stopped')
  await manager.close()
})

test('faults: a stream closed mid-response fails with a code, and the session goes on', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, env: { ...server.env(), CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK: '1' } })
  const first = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  server.enqueue({ text: 'cut off in the middle of a sentence', dropConnection: true })
  const r = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'API_ERROR', JSON.stringify(r.error))
  t.assert.match(r.error.message, /ECONNRESET/)
  const next = await manager.executeTask({ prompt: 'three', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  t.assert.strictEqual(next.success, true, JSON.stringify(next.error))
  await manager.close()
})

test('faults: 429 and 500 from the API resolve as API_ERROR with the status', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  for (const status of [429, 500]) {
    server.enqueue({ error: { status } })
    const r = await manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u' })
    t.assert.strictEqual(r.error?.code, 'API_ERROR')
    t.assert.strictEqual(r.error.status, status)
  }
  await manager.close()
})
