// Hostile input, isolation and permissions. Every hostile input gets its exact error code and
// nothing reaches the CLI: the stand-in server sees no request and no process is started.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { addon, makeManager, rejectsWith, startStandInServer, tempDir, workDir, filesUnder } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

test('hostile input: each case gets its exact code, none spawning', async (t) => {
  server.reset()
  const root = tempDir('csm-root-')
  const outside = tempDir('csm-outside-')
  fs.mkdirSync(path.join(root, 'proj'))
  fs.symlinkSync(outside, path.join(root, 'link-out'))
  // A sibling whose name starts with the root's: inside by spelling, outside by path components.
  fs.mkdirSync(`${root}-secrets`)
  const { manager, dir } = makeManager({ server, workingDirectory: root, allowedRoots: [root] })
  const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  const base = { prompt: 'hi', projectId: 'p', userId: 'u' }
  const flag = '--dangerously-skip-permissions'
  const I = 'INVALID_ARGUMENT'
  const cases = [
    // argument injection through every field that reaches argv
    [{ ...base, sessionId: flag }, I],
    [{ ...base, sessionId: `${session.id} ${flag}` }, I],
    [{ ...base, permissionMode: 'bypassPermissions' }, I],
    [{ ...base, permissionMode: flag }, I],
    [{ ...base, dangerouslySkipPermissions: true }, I],
    [{ ...base, model: '' }, I],
    [{ ...base, model: 'x'.repeat(200) }, I],
    [{ ...base, model: 'sonnet\u0000--verbose' }, I],
    [{ ...base, fallbackModel: '' }, I],
    [{ ...base, allowedTools: flag }, I],
    [{ ...base, allowedTools: [''] }, I],
    [{ ...base, allowedTools: ['Bash\n--dangerously-skip-permissions'] }, I],
    [{ ...base, disallowedTools: ['Read\u0000'] }, I],
    [{ ...base, disallowedTools: Array(300).fill('Read') }, I],
    [{ ...base, appendSystemPrompt: '' }, I],
    [{ ...base, appendSystemPrompt: 'a\u0000b' }, I],
    // NUL and control characters in ids and prompt
    [{ ...base, prompt: 'a\u0000b' }, I],
    [{ ...base, prompt: '   ' }, I],
    [{ ...base, userId: 'u\u0000' }, I],
    [{ ...base, userId: 'u\r\nX-Injected: 1' }, I],
    [{ ...base, projectId: '\u001b[31mred' }, I],
    [{ ...base, projectId: '' }, I],
    [{ ...base, title: 'x'.repeat(5000) }, I],
    // over-long
    [{ ...base, userId: 'u'.repeat(257) }, I],
    [{ ...base, projectId: '\u00e9'.repeat(200) }, I], // 400 bytes of UTF-8
    // JSON in the wrong shapes
    [{ ...base, maxTurns: '3' }, I],
    [{ ...base, maxTurns: Number.NaN }, I],
    [{ ...base, maxTurns: 2 ** 60 }, I],
    [{ ...base, maxTurns: 1.5 }, I],
    [{ ...base, maxTurns: -1 }, I],
    [{ ...base, maxBudgetUsd: 0 }, I],
    [{ ...base, timeoutMs: Number.POSITIVE_INFINITY }, I],
    [{ ...base, timeoutMs: 10n }, I],
    [{ ...base, compactThreshold: 0 }, I],
    [{ ...base, compactThreshold: 250 }, I],
    [{ ...base, allowedTools: { 0: 'Bash' } }, I],
    [{ ...base, prompt: ['hi'] }, I],
    [{ ...base, prompt: { toString: () => 'hi' } }, I],
    [{ ...base, forkSession: 'yes' }, I],
    [{ ...base, autoCompact: 1 }, I],
    [{ ...base, userId: 42 }, I],
    [{ ...base, forkSession: true }, I],
    // path traversal outside allowedRoots
    [{ ...base, workingDirectory: path.join(root, 'proj', '..', '..') }, I],
    [{ ...base, workingDirectory: path.join(root, 'link-out') }, I],
    [{ ...base, workingDirectory: outside }, I],
    [{ ...base, workingDirectory: 'proj' }, I],
    [{ ...base, workingDirectory: path.join(root, 'missing') }, I],
    [{ ...base, workingDirectory: `${root}-secrets` }, I],
    [{ ...base, workingDirectory: path.join(root, 'proj', '..', '..', `${path.basename(root)}-secrets`) }, I],
    [{ ...base, sessionId: session.id, workingDirectory: path.join(root, 'proj') }, I],
    // ownership
    [{ ...base, sessionId: session.id, userId: 'mallory' }, 'SESSION_NOT_FOUND'],
    [{ ...base, sessionId: session.id, projectId: 'other-project' }, 'SESSION_NOT_FOUND'],
    // far over any context window
    [{ ...base, prompt: 'word '.repeat(1_000_000) }, 'CONTEXT_OVERFLOW'],
  ]
  for (const [i, [req, code]] of cases.entries()) await rejectsWith(t, manager.executeTask(req), code, undefined, `case ${i}`)
  for (const bad of [null, 'prompt', 42, [base]]) await rejectsWith(t, manager.executeTask(bad), I)
  t.assert.strictEqual(server.requests.length, 0, 'nothing reached the API')
  t.assert.strictEqual((await manager.listSessions({ userId: 'u' })).length, 1, 'nothing was stored')
  // An allowed folder works.
  const ok = await manager.executeTask({ ...base, workingDirectory: path.join(root, 'proj') })
  t.assert.strictEqual(ok.success, true, JSON.stringify(ok.error))
  t.assert.strictEqual((await manager.getSession(ok.sessionId, 'u')).workingDirectory, path.join(root, 'proj'))
  await manager.close()
  t.assert.throws(() => new addon.SessionManager({ databasePath: path.join(dir, 'x.db'), workingDirectory: outside, allowedRoots: [root] }), (e) => e.code === I)
  for (const cliNiceness of [-1, 20, 2.5, '5', Number.NaN]) {
    t.assert.throws(() => new addon.SessionManager({ databasePath: path.join(dir, 'x.db'), workingDirectory: root, cliNiceness }), (e) => e.code === I && /cliNiceness/.test(e.message), `cliNiceness ${String(cliNiceness)}`)
  }
})

test('permissions: bypassPermissions needs the opt-in; tools reach the CLI exactly as given', async (t) => {
  server.reset()
  const dir = tempDir()
  // As root the CLI refuses to bypass permissions unless it is told it runs in a sandbox.
  const { manager } = makeManager({ server, dir, allowBypassPermissions: true, env: { ...server.env(), CLAUDE_CONFIG_DIR: path.join(dir, 'claude-config'), IS_SANDBOX: '1' } })
  const events = []
  const r = await manager.executeTask(
    {
      prompt: 'hi',
      projectId: 'p',
      userId: 'u',
      permissionMode: 'bypassPermissions',
      allowedTools: ['Bash(git log:*)', 'Read'],
      disallowedTools: ['WebFetch'],
    },
    { onEvent: (e) => events.push(e) },
  )
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  // The CLI says in its init line which permission mode it runs in.
  const init = events.find((e) => e.type === 'system' && e.subtype === 'init')
  t.assert.strictEqual(init.permissionMode, 'bypassPermissions')
  const tools = server.requests.find((x) => x.path === '/v1/messages').body.tools.map((x) => x.name)
  t.assert.ok(!tools.includes('WebFetch'), 'a disallowed tool is not offered to the model')
  t.assert.ok(init.tools.includes('Read') && !init.tools.includes('WebFetch'), JSON.stringify(init.tools))
  // (allowedTools reaching the CLI is proved by a Bash call that runs: tasks.test.mjs, "the CLI gets the API settings".)
  await manager.close()
})

test('tenancy: isolateTenants gives each user a configuration folder of their own', async (t) => {
  server.reset()
  const dir = tempDir()
  const { manager } = makeManager({ server, dir, isolateTenants: 'user' })
  const a = await manager.executeTask({ prompt: 'alice here', projectId: 'p', userId: 'alice' })
  const b = await manager.executeTask({ prompt: 'bob here', projectId: 'p', userId: 'bob' })
  t.assert.ok(a.success && b.success, JSON.stringify([a.error, b.error]))
  const root = path.join(dir, 'claude-config')
  const tenants = fs.readdirSync(root).sort()
  t.assert.strictEqual(tenants.length, 2, tenants.join())
  const transcripts = (tenant) =>
    filesUnder(path.join(root, tenant, 'projects')).filter((f) => f.endsWith('.jsonl')).map((f) => path.basename(f, '.jsonl'))
  const owners = Object.fromEntries(tenants.map((x) => [x, transcripts(x)]))
  t.assert.deepStrictEqual(Object.values(owners).flat().sort(), [a.sessionId, b.sessionId].sort())
  t.assert.ok(Object.values(owners).every((ids) => ids.length === 1), 'one tenant per folder')
  // Resume finds the transcript in the tenant's folder.
  const a2 = await manager.executeTask({ prompt: 'again', projectId: 'p', userId: 'alice', sessionId: a.sessionId })
  t.assert.strictEqual(a2.result, 'Echo #2: again')
  await manager.close()
})

test("tenancy: isolateTenants 'project' gives each user's project a configuration folder of its own", async (t) => {
  server.reset()
  const dir = tempDir()
  const { manager } = makeManager({ server, dir, isolateTenants: 'project' })
  t.after(() => manager.close())
  const runs = []
  for (const [userId, projectId] of [['alice', 'p'], ['alice', 'q'], ['bob', 'p']]) {
    const r = await manager.executeTask({ prompt: `${userId} in ${projectId}`, projectId, userId })
    t.assert.ok(r.success, JSON.stringify(r.error))
    runs.push(r.sessionId)
  }
  const root = path.join(dir, 'claude-config')
  const tenants = fs.readdirSync(root).sort()
  t.assert.strictEqual(tenants.length, 3, `one folder per (user, project): ${tenants.join()}`)
  t.assert.ok(tenants.every((x) => x.startsWith('project-')), tenants.join())
  const held = tenants.map((x) => filesUnder(path.join(root, x, 'projects')).filter((f) => f.endsWith('.jsonl')).map((f) => path.basename(f, '.jsonl')))
  t.assert.deepStrictEqual(held.flat().sort(), [...runs].sort())
  t.assert.ok(held.every((ids) => ids.length === 1), "a user's two projects do not share a folder")
  const again = await manager.executeTask({ prompt: 'again', projectId: 'q', userId: 'alice', sessionId: runs[1] })
  t.assert.strictEqual(again.result, 'Echo #2: again')
})

test('sandbox: where bubblewrap cannot run, "bubblewrap" throws SANDBOX_UNAVAILABLE and "auto" runs the agent unsandboxed, saying so', async (t) => {
  // A `bwrap` that fails as it does on a kernel without unprivileged user namespaces, first on
  // PATH of a child Node (the addon checks bubblewrap once per process). A fake, because the
  // real one cannot be made to fail on this machine without changing the machine.
  const dir = tempDir()
  const bin = path.join(dir, 'bin')
  fs.mkdirSync(bin)
  fs.writeFileSync(path.join(bin, 'bwrap'), '#!/bin/sh\necho "bwrap: No permissions to creating new namespace" >&2\nexit 1\n', { mode: 0o755 })
  const script = `
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))})
    const out = {}
    try { new SessionManager({ databasePath: ${JSON.stringify(path.join(dir, 'a.db'))}, workingDirectory: ${JSON.stringify(workDir(dir))}, sandbox: 'bubblewrap' }); out.bubblewrap = 'constructed' }
    catch (e) { out.bubblewrap = { code: e.code, message: e.message } }
    const m = new SessionManager({ databasePath: ${JSON.stringify(path.join(dir, 'b.db'))}, workingDirectory: ${JSON.stringify(workDir(dir))} })
    out.auto = m.info().sandbox
    m.close().then(() => console.log(JSON.stringify(out)))`
  const { execFileSync } = await import('node:child_process')
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { env: { ...process.env, PATH: `${bin}:${process.env.PATH}` }, encoding: 'utf8' }))
  t.assert.strictEqual(out.bubblewrap.code, 'SANDBOX_UNAVAILABLE', JSON.stringify(out))
  t.assert.match(out.bubblewrap.message, /No permissions to creat/, 'says why')
  t.assert.strictEqual(out.auto, 'none', 'auto falls back to no sandbox and info() says so')
  // The same child without the fake: where the real bubblewrap works, both sandbox.
  const real = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }))
  if (real.auto === 'none') return t.diagnostic(`bubblewrap does not work on this machine: ${real.bubblewrap.message}`)
  t.assert.strictEqual(real.bubblewrap, 'constructed')
  t.assert.strictEqual(real.auto, 'bubblewrap')
})
