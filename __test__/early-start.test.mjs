// The early start (issue #27): a cold task's CLI is started while the store takes the session's
// lease, and is given its prompt only once the session is held (`src/sessions/run/early.rs`).
// That is sound only because of what the CLI does in `-p` mode before the end of its prompt,
// checked here on the CLI in use: it reads nothing of the session and calls no model. And a CLI
// started early is killed when its start finds the session held elsewhere (it never waits for a
// lease), and taken when the start is slow, however slow.
import { test, before, after } from 'node:test'
import { execFileSync, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { PG_URL, addon, cliProcesses, eventually, findClaude, makeManager, skipWithoutPostgres, startStandInServer, tempDir, testBackends, backendTag, gate } from './helpers.mjs'
import { startPgProxy } from '../benchmark/lib/pg-proxy.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const modelCalls = () => server.requests.filter((r) => r.path.startsWith('/v1/messages'))
const userTexts = (request) =>
  request.body.messages.filter((m) => m.role === 'user').flatMap((m) => (typeof m.content === 'string' ? [m.content] : m.content.map((c) => c.text ?? '')))

/** A `claude -p` process as the manager starts one (prompt on stdin, stream-json out). */
function startCli({ cwd, configDir }, sessionArg) {
  const env = { PATH: '/usr/bin:/bin', HOME: path.dirname(configDir), ...server.env(), CLAUDE_CONFIG_DIR: configDir }
  const args = ['-p', '--output-format=stream-json', '--verbose', sessionArg, '--permission-mode=default', '--disable-slash-commands', '--model=claude-sonnet-4-5']
  const child = spawn(findClaude(), args, { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const exited = new Promise((resolve) => child.on('close', (code) => resolve({ code, out })))
  return { child, exited }
}

test('a -p CLI given the first byte of its prompt waits for the rest, having read nothing of its session and called no model', async (t) => {
  const base = tempDir('csm-early-')
  t.after(() => fs.rmSync(base, { recursive: true, force: true }))
  const dirs = { cwd: path.join(base, 'work'), configDir: path.join(base, 'config') }
  fs.mkdirSync(dirs.cwd)
  fs.mkdirSync(dirs.configDir)
  server.reset()
  const id = randomUUID()
  const first = startCli(dirs, `--session-id=${id}`)
  first.child.stdin.end('first words')
  t.assert.strictEqual((await first.exited).code, 0)
  const [project] = fs.readdirSync(path.join(dirs.configDir, 'projects'))
  const transcript = path.join(dirs.configDir, 'projects', project, `${id}.jsonl`)
  t.assert.match(fs.readFileSync(transcript, 'utf8'), /first words/)

  // The resumed CLI is started with the first byte of its prompt (without one it would go on
  // without a prompt after 3 s) and left waiting for the rest well past its start-up and that.
  const calls = modelCalls().length
  const held = startCli(dirs, `--resume=${id}`)
  held.child.stdin.write('s')
  await sleep(4500)
  t.assert.strictEqual(held.child.exitCode, null, 'it waits for the rest of its prompt')
  t.assert.strictEqual(modelCalls().length, calls, 'no model call before its prompt')
  // Meanwhile the conversation changes on disk (as the store's copy would be written here once
  // the lease is the task's): the CLI must answer from the changed one.
  fs.writeFileSync(transcript, fs.readFileSync(transcript, 'utf8').replaceAll('first words', 'words written while it waited'))
  held.child.stdin.end('econd words')
  const { code, out } = await held.exited
  t.assert.strictEqual(code, 0, out)
  const sent = modelCalls().slice(calls)
  t.assert.strictEqual(sent.length, 1, 'one model call, after the prompt')
  const texts = userTexts(sent[0])
  t.assert.ok(texts.includes('words written while it waited'), `the CLI read its transcript after its prompt: ${JSON.stringify(texts)}`)
  t.assert.ok(!texts.includes('first words'), 'nothing of the transcript as it was at the CLI\'s start')
  t.assert.strictEqual(texts.at(-1), 'second words')
})

const clis = cliProcesses

/** A session whose first task ran on `manager`, now held by its second, whose model answers after
 * `delayMs`: resolves once that answer is awaited, with the session and the holding task. */
async function heldSession(t, manager, delayMs, after) {
  const one = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(one.success, true, JSON.stringify(one.error))
  server.enqueue({ text: 'a slow turn', delayMs, after })
  const held = manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: one.sessionId })
  while (server.inFlight === 0) await sleep(20)
  return { sessionId: one.sessionId, held }
}

for (const backend of testBackends()) {
  test(`a task whose session another process holds starts no CLI while it waits, then runs on the held turn${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager: first, options } = makeManager({ server, backend })
    t.after(() => first.close())
    // Another manager on the same store and configuration folder: another owner, as another
    // process of the same server is.
    const second = new addon.SessionManager(options)
    t.after(() => second.close())
    const { sessionId, held: holder } = await heldSession(t, first, 3000)
    t.assert.strictEqual(clis(sessionId).length, 1, 'the holder\'s CLI runs')
    let queued = false
    const waiter = second.executeTask({ prompt: 'three', projectId: 'p', userId: 'u', sessionId, queueTimeoutMs: 30_000 }, { onEvent: (e) => e.type === 'task_queued' && (queued = true) })
    while (!queued) await sleep(5)
    // Sampled for a second while the holder's turn goes on: one CLI of the session at most.
    const seen = []
    for (let i = 0; i < 20; i++) {
      await sleep(50)
      seen.push(clis(sessionId).length)
    }
    t.assert.ok(server.inFlight > 0, 'the holder still runs: the samples were taken while the waiter waited')
    t.assert.deepStrictEqual([...new Set(seen)], [1], `only the holder's CLI runs while the other task waits (${seen})`)

    t.assert.strictEqual((await holder).result, 'a slow turn')
    const three = await waiter
    t.assert.strictEqual(three.success, true, JSON.stringify(three.error))
    t.assert.strictEqual(three.result, 'Echo #3: three')
    // It answered from the conversation as the holder left it.
    const last = modelCalls().at(-1)
    t.assert.deepStrictEqual(userTexts(last).filter((x) => !x.startsWith('<system-reminder>')), ['one', 'two', 'three'])
    t.assert.ok(await eventually(() => clis(sessionId).length === 0), 'nothing left running once the CLIs exited')
  })
}

/** A PostgreSQL schema of its own reached through the counting proxy (which can hold a kind of
 * statement): `store` is the managers' options for it; `closing(m)` has a manager closed after the
 * test (the last given first), before the proxy closes and the schema is dropped. */
async function behindProxy(t) {
  const proxy = await startPgProxy(PG_URL)
  const schema = `csm_early_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const managers = []
  t.after(async () => {
    await proxy.hold(null)
    for (const m of managers.reverse()) await m.close()
    await proxy.close()
    try {
      execFileSync('psql', [PG_URL, '-qXc', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], { stdio: 'ignore' })
    } catch {}
  })
  return { proxy, store: { backend: 'postgres', databaseUrl: proxy.url, databaseSchema: schema }, closing: (m) => (managers.push(m), m) }
}

test('a CLI started early is the one that runs its task when the start takes longer than the CLI would wait for a first byte [postgres]', async (t) => {
  if (skipWithoutPostgres(t)) return
  server.reset()
  const { proxy, store, closing } = await behindProxy(t)
  const manager = closing(makeManager({ server, ...store }).manager)
  const one = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(one.success, true, JSON.stringify(one.error))
  await eventually(() => clis(one.sessionId).length === 0)
  // The next task's start is held at the proxy for 4.5 s: its CLI starts meanwhile and waits.
  await proxy.hold('start')
  let running = []
  const two = manager.executeTask(
    { prompt: 'two', projectId: 'p', userId: 'u', sessionId: one.sessionId },
    { onEvent: (e) => e.type === 'task_started' && (running = clis(e.sessionId)) },
  )
  t.assert.ok(await eventually(() => clis(one.sessionId).length === 1), 'the CLI started while the start is held')
  const early = clis(one.sessionId)
  const calls = modelCalls().length
  await sleep(4500)
  t.assert.deepStrictEqual(clis(one.sessionId), early, 'the same CLI still waits, past its 3 s')
  t.assert.strictEqual(modelCalls().length, calls, 'and has called no model')
  await proxy.hold(null)
  const done = await two
  t.assert.strictEqual(done.success, true, JSON.stringify(done.error))
  t.assert.strictEqual(done.result, 'Echo #2: two')
  t.assert.deepStrictEqual(running, early, 'the CLI started early ran the task')
})

test('requests refused one after another start no CLI each: after a refused start, none starts early until a start succeeds [postgres]', async (t) => {
  // On PostgreSQL behind a proxy that holds each refused start's trip until its early CLI (if one
  // starts) has noted its start: without the hold a CLI killed at once by a quick refusal may die
  // before it notes anything, and the count would be luck.
  if (skipWithoutPostgres(t)) return
  server.reset()
  const { proxy, store, closing } = await behindProxy(t)
  const { manager: holder, options, dir } = makeManager({ server, ...store })
  closing(holder)
  // The other manager's CLI is a script that notes each task's start, then runs the real CLI
  // (no sandbox: the script runs the CLI itself).
  const log = path.join(dir, 'starts.log')
  const script = path.join(dir, 'claude-noting-starts')
  fs.writeFileSync(script, `#!/bin/sh\ncase " $* " in *" -p "*) echo start >> '${log}';; esac\nexec '${findClaude()}' "$@"\n`, { mode: 0o755 })
  const other = closing(new addon.SessionManager({ ...options, claudePath: script, sandbox: 'none' }))
  const starts = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).length : 0)
  // The holder's turn is held until the refusals are done (however long they take).
  const turn = gate(120_000)
  const { sessionId, held } = await heldSession(t, holder, 0, turn.promise)
  for (let i = 0; i < 10; i++) {
    await proxy.hold('start')
    const refused = t.assert.rejects(other.executeTask({ prompt: `refused ${i}`, projectId: 'p', userId: 'u', sessionId, queueTimeoutMs: 0 }), (e) => e.code === 'SESSION_BUSY')
    // The first request's CLI starts while its start is held; the others' would have as long.
    if (i === 0) t.assert.ok(await eventually(() => starts() === 1), 'the first refused request started its CLI early')
    else await sleep(300)
    await proxy.hold(null)
    await refused
  }
  t.assert.strictEqual(starts(), 1, 'one CLI started early for the first refused request, none for the nine after it')
  turn.open()
  t.assert.strictEqual((await held).success, true)
  // Once the session is free, tasks run as before; the first after the refusals starts its CLI
  // after its start, and the starts are early again after it.
  for (const prompt of ['three', 'four']) {
    const r = await other.executeTask({ prompt, projectId: 'p', userId: 'u', sessionId })
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  }
  t.assert.strictEqual(starts(), 3, 'one CLI for each of the two tasks, none discarded')
})
