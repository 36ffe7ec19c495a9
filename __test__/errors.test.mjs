// Error codes produced by the real CLI against the stand-in: MAX_TURNS, BUDGET_EXCEEDED, CLI_ERROR
// (a binary that cannot start, and an error the CLI reports itself), AUTH_ERROR (no key, a refused
// key), and the exact code list.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { addon, makeManager, rejectsWith, startStandInServer, filesUnder } from './helpers.mjs'
import nextRoutes from '../next/index.js'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const messageCalls = () => server.requests.filter((r) => r.path === '/v1/messages')

test('errors: MAX_TURNS when the model keeps calling tools past maxTurns', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  // The model calls a tool on every turn; the CLI stops after the first.
  const tool = { toolUse: { name: 'Bash', input: { command: 'echo again' } } }
  server.enqueue(tool, tool, tool, tool)
  const r = await manager.executeTask({ prompt: 'loop', projectId: 'p', userId: 'u', maxTurns: 1, allowedTools: ['Bash'] })
  t.assert.strictEqual(r.success, false)
  t.assert.deepStrictEqual(r.error, { code: 'MAX_TURNS', message: 'Reached maximum number of turns (1)' })
  t.assert.strictEqual(messageCalls().length, 1, 'the CLI made one call and stopped instead of answering the tool result')
  const [task] = await manager.listTasks(r.sessionId, 'u')
  t.assert.deepStrictEqual([task.status, task.errorCode], ['failed', 'MAX_TURNS'])
  // The session goes on.
  const next = await manager.executeTask({ prompt: 'done?', projectId: 'p', userId: 'u', sessionId: r.sessionId })
  t.assert.strictEqual(next.success, true, JSON.stringify(next.error))
  await manager.close()
})

test('errors: BUDGET_EXCEEDED when a call costs more than maxBudgetUsd', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  // 100,000 input tokens cost far more than one cent on any Claude model.
  server.enqueue({ text: 'expensive', usage: { input_tokens: 100_000 } })
  const r = await manager.executeTask({ prompt: 'spend', projectId: 'p', userId: 'u', maxBudgetUsd: 0.01 })
  t.assert.strictEqual(r.success, false)
  t.assert.deepStrictEqual(r.error, { code: 'BUDGET_EXCEEDED', message: 'Reached maximum budget ($0.01)' })
  t.assert.ok(r.cost > 0.01, String(r.cost))
  t.assert.strictEqual(server.responses[0].usage.input_tokens, 100_000)
  const [task] = await manager.listTasks(r.sessionId, 'u')
  t.assert.deepStrictEqual([task.status, task.errorCode, task.costUsd], ['failed', 'BUDGET_EXCEEDED', r.cost])
  // Under the budget the same reply is fine.
  server.enqueue({ text: 'expensive', usage: { input_tokens: 100_000 } })
  const ok = await manager.executeTask({ prompt: 'spend', projectId: 'p', userId: 'u', maxBudgetUsd: 100 })
  t.assert.strictEqual(ok.success, true, JSON.stringify(ok.error))
  await manager.close()
})

test('errors: a claudePath that cannot start is CLI_ERROR; one that is no executable file is CLI_NOT_FOUND', async (t) => {
  server.reset()
  const { dir } = makeManager()
  // An executable file the kernel cannot run (no ELF header, no #!): exec fails with ENOEXEC.
  const garbage = path.join(dir, 'garbage-claude')
  fs.writeFileSync(garbage, Buffer.from([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]), { mode: 0o755 })
  const base = { prompt: 'x', projectId: 'p', userId: 'u' }
  {
    // Spawned directly: the exec itself fails.
    const { manager } = makeManager({ server, claudePath: garbage, sandbox: 'none' })
    const r = await manager.executeTask(base)
    t.assert.strictEqual(r.success, false)
    t.assert.strictEqual(r.error.code, 'CLI_ERROR')
    t.assert.strictEqual(r.error.message, `cannot start ${garbage}: Exec format error (os error 8)`)
    t.assert.deepStrictEqual((await manager.listTasks(r.sessionId, 'u')).map((x) => [x.status, x.errorCode]), [['failed', 'CLI_ERROR']])
    await manager.close()
  }
  {
    // Whatever the sandbox does with it, the task fails with CLI_ERROR and never reaches the API.
    const { manager } = makeManager({ server, claudePath: garbage })
    const r = await manager.executeTask(base)
    t.assert.strictEqual(r.error?.code, 'CLI_ERROR', JSON.stringify(r.error))
    await manager.close()
  }
  // Not an executable file at all (a folder, a file without the x bit): CLI_NOT_FOUND, as the
  // README's table says ("no claude binary"), rejected before anything is stored.
  const plain = path.join(dir, 'plain-claude')
  fs.writeFileSync(plain, '#!/bin/sh\necho hi\n', { mode: 0o644 })
  for (const claudePath of [dir, plain]) {
    const { manager } = makeManager({ server, claudePath })
    await rejectsWith(t, manager.executeTask(base), 'CLI_NOT_FOUND', /missing or not executable/, claudePath)
    t.assert.deepStrictEqual(await manager.listSessions({ userId: 'u' }), [])
    await manager.close()
  }
  t.assert.strictEqual(messageCalls().length, 0)
})

test('errors: a CLI older than the supported range is CLI_UNSUPPORTED before anything is stored; a newer one runs, with one warning on stderr', async (t) => {
  server.reset()
  const { dir } = makeManager()
  const real = path.resolve('node_modules/@anthropic-ai/claude-code/bin/claude.exe')
  if (!fs.existsSync(real)) return t.skip(`no CLI at ${real}`)
  // Wrappers (no sandbox: a script is run as it is) that report a version and run the real CLI.
  const wrapper = (name, version) => {
    const p = path.join(dir, name)
    fs.writeFileSync(p, `#!/bin/sh\nif [ "$1" = --version ]; then echo '${version} (Claude Code)'; exit 0; fi\nexec '${real}' "$@"\n`, { mode: 0o755 })
    return p
  }
  const base = { prompt: 'x', projectId: 'p', userId: 'u' }
  const old = wrapper('old-claude', '2.1.300')
  const { manager } = makeManager({ server, claudePath: old, sandbox: 'none' })
  await rejectsWith(t, manager.executeTask(base), 'CLI_UNSUPPORTED', /version 2\.1\.300, older than 2\.1\.331/)
  t.assert.deepStrictEqual(await manager.listSessions({ userId: 'u' }), [], 'nothing stored')
  t.assert.strictEqual(messageCalls().length, 0, 'nothing spawned that reached the API')
  await manager.close()

  // A newer one, in a process of its own to read its stderr: the task runs, the warning is
  // printed once for two tasks.
  const newer = wrapper('new-claude', '2.9.0')
  const script = `
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))})
    const m = new SessionManager(${JSON.stringify({ ...makeManager({ server }).options, claudePath: newer, sandbox: 'none' })})
    ;(async () => {
      for (const prompt of ['one', 'two']) {
        const r = await m.executeTask({ prompt, projectId: 'p', userId: 'u' })
        console.log(JSON.stringify({ success: r.success, result: r.result }))
      }
      await m.close()
    })()`
  const { stdout, stderr } = await promisify(execFile)(process.execPath, ['-e', script], { timeout: 120_000 })
  const results = stdout.trim().split('\n').map((l) => JSON.parse(l))
  t.assert.deepStrictEqual(results.map((r) => r.success), [true, true], stdout)
  const warnings = stderr.split('\n').filter((l) => l.includes('newer than the versions this package was tested with'))
  t.assert.strictEqual(warnings.length, 1, stderr)
  t.assert.match(warnings[0], /version 2\.9\.0/)
})

test('errors: an error the CLI reports itself is CLI_ERROR with its message', async (t) => {
  server.reset()
  const { manager, configDir } = makeManager({ server })
  const a = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(a.success, true, JSON.stringify(a.error))
  // The CLI's transcript disappears behind the manager's back (an operator cleaned the CLI's
  // folder): the manager passes --resume=<id>, and the real CLI refuses that value itself with a
  // result line of subtype error_during_execution.
  const transcripts = filesUnder(configDir).filter((f) => f.endsWith(`${a.sessionId}.jsonl`))
  t.assert.strictEqual(transcripts.length, 1)
  fs.rmSync(transcripts[0])
  server.reset()
  const events = []
  const r = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: a.sessionId }, { onEvent: (e) => events.push(e) })
  const result = events.find((e) => e.type === 'result')
  t.assert.deepStrictEqual([result.subtype, result.is_error], ['error_during_execution', true], 'the CLI itself reported the error')
  t.assert.strictEqual(r.success, false)
  t.assert.deepStrictEqual(r.error, { code: 'CLI_ERROR', message: `No conversation found with session ID: ${a.sessionId}` })
  t.assert.strictEqual(messageCalls().length, 0, 'the CLI stopped before calling the API')
  t.assert.deepStrictEqual((await manager.listTasks(a.sessionId, 'u')).map((x) => x.errorCode ?? null), [null, 'CLI_ERROR'])
  await manager.close()
})

test('errors: AUTH_ERROR when no API key reaches the CLI, the API refuses it, or answers 401; the task route answers 503 saying what to set', async (t) => {
  server.reset()
  // No credentials at all, whatever this process's environment has (empty values count as unset).
  const noKey = { ...server.env(), ANTHROPIC_API_KEY: '', ANTHROPIC_AUTH_TOKEN: '', CLAUDE_CODE_OAUTH_TOKEN: '' }
  const cases = [
    // The real CLI without any credentials: "Not logged in · Please run /login".
    { name: 'no key', env: noKey, status: undefined, cli: /Not logged in/ },
    // The same through a warm CLI (stream-json on stdin, the default in a server).
    { name: 'no key, warm', env: noKey, status: undefined, cli: /Not logged in/, warm: true },
    // A key the API refuses: the CLI says "Invalid API key".
    { name: 'a refused key', env: { ...server.env(), ANTHROPIC_API_KEY: 'not-the-right-key' }, status: 401, cli: /Invalid API key/ },
    // A 401 on a call (a key revoked while the server runs).
    { name: 'a 401 answer', env: server.env(), status: 401, cli: /401/, reply: { error: { status: 401 } } },
  ]
  for (const c of cases) {
    if (c.reply) server.enqueue(c.reply)
    const { manager: m } = makeManager({ server, env: c.env, ...(c.warm ? { warmIdleMs: 60000 } : {}) })
    const r = await m.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
    t.assert.strictEqual(r.success, false, c.name)
    t.assert.strictEqual(r.error.code, 'AUTH_ERROR', `${c.name}: ${JSON.stringify(r.error)}`)
    t.assert.strictEqual(r.error.status, c.status, c.name)
    t.assert.match(r.error.message, /set a valid ANTHROPIC_API_KEY in the server's environment/, c.name)
    t.assert.match(r.error.message, c.cli, `${c.name}: the CLI's own words follow`)
    const [task] = await m.listTasks(r.sessionId, 'u')
    t.assert.deepStrictEqual([task.status, task.errorCode], ['failed', 'AUTH_ERROR'], c.name)
    await m.close()
  }
  // Through the Next.js task route: 503 with the TaskResult, and onError told.
  const { manager: m } = makeManager({ server, env: noKey })
  const reported = []
  const routes = nextRoutes.createClaudeRoutes({ getUserId: () => 'u', manager: m, onError: (e) => reported.push(e.code) })
  const res = await routes.task.POST(new Request('http://localhost/api/claude/task', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'hi', projectId: 'p' }) }))
  t.assert.strictEqual(res.status, 503)
  const body = await res.json()
  t.assert.strictEqual(body.error.code, 'AUTH_ERROR')
  t.assert.match(body.error.message, /ANTHROPIC_API_KEY/)
  t.assert.deepStrictEqual(reported, ['AUTH_ERROR'])
  t.assert.strictEqual(nextRoutes.statusForCode('AUTH_ERROR'), 503)
  await m.close()
})

test('errorCodes lists every code exactly, and the README documents each', (t) => {
  const expected = [
    'INVALID_ARGUMENT',
    'SESSION_NOT_FOUND',
    'SESSION_BUSY',
    'STORE_ERROR',
    'CLI_NOT_FOUND',
    'CLI_UNSUPPORTED',
    'CLI_ERROR',
    'API_ERROR',
    'AUTH_ERROR',
    'MAX_TURNS',
    'BUDGET_EXCEEDED',
    'ABORTED',
    'TIMEOUT',
    'CLOSED',
    'CONTEXT_OVERFLOW',
    'COMPACT_FAILED',
    'SANDBOX_UNAVAILABLE',
    'LEASE_LOST',
    'PERMISSION_REQUEST_NOT_FOUND',
    'TRANSCRIPT_TOO_LARGE',
    'TRANSCRIPT_UNSAFE',
    'MESSAGE_NOT_FOUND',
    'REWIND_REJECTED',
    'INTERNAL',
  ]
  t.assert.deepStrictEqual(addon.errorCodes(), expected)
  // Every code has a row in the README's error-code table.
  const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const table = readme.slice(readme.indexOf('### Error codes'), readme.indexOf('## Next.js'))
  for (const c of expected) t.assert.match(table, new RegExp(`^\\| \`${c}\`|\`${c}\` \\|`, 'm'), `README does not document ${c}`)
})
