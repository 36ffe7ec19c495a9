// Prewarm (issue #27): a session's CLI started before its first prompt, with the identity the
// task would give it, kept like a warm CLI, never serving another session or option set, and
// costing no model call. The real `claude` CLI against the stand-in API; which process ran a task
// is read from /proc (the processes whose argv names the session), never from timing.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { cliProcesses, eventually, makeManager, tempDir, startStandInServer, processesMentioning, rejectsWith, testBackends, backendTag, PG_URL, PG_SKIP_REASON, filesUnder } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

/** A manager with warm processes on, closed after the test. */
function warmManager(t, options = {}) {
  const m = makeManager({ server, warmIdleMs: 600_000, ...options })
  t.after(() => m.manager.close())
  return m
}

const modelCalls = () => server.requests.filter((r) => r.path.startsWith('/v1/messages')).length
async function cliPids(sessionId) {
  await eventually(() => cliProcesses(sessionId).length > 0)
  return cliProcesses(sessionId)
}
/** Runs a task; resolves with its result and the session's CLI processes while it ran. */
async function taskSeen(manager, request) {
  let running = []
  const result = await manager.executeTask(request, { onEvent: (e) => e.type === 'task_started' && (running = cliProcesses(e.sessionId)) })
  return { result, running }
}
const same = (a, b) => a.length > 0 && JSON.stringify([...a].sort()) === JSON.stringify([...b].sort())
const newSession = async (manager, userId = 'u') => (await manager.getOrCreateSession({ projectId: 'p', userId, preferActive: false })).session.id

for (const backend of testBackends()) {
  test(`prewarm: a new session's first task runs in the CLI started before it, which made no model call${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = warmManager(t, { backend })
    const sessionId = await newSession(manager)
    t.assert.deepStrictEqual(await manager.prewarm({ sessionId, userId: 'u', projectId: 'p' }), { status: 'started' })
    const pids = await cliPids(sessionId)
    t.assert.ok(pids.length > 0, 'a CLI runs for the session before its first prompt')
    // Time for the CLI to do whatever it does at start-up: still no request reaches the API, and
    // the conversation is empty.
    await sleep(1500)
    t.assert.strictEqual(server.requests.length, 0, 'a prewarmed CLI sends the API nothing')
    t.assert.deepStrictEqual((await manager.getMessages(sessionId, 'u')).messages, [], 'nothing in the conversation before the first prompt')
    // Nor could it: the key proxy refuses its token until a task runs on it.
    const env = Object.fromEntries(fs.readFileSync(`/proc/${pids[0]}/environ`, 'utf8').split('\0').filter(Boolean).map((l) => l.split(/=(.*)/s)))
    const early = await fetch(`${env.ANTHROPIC_BASE_URL}/v1/messages/count_tokens`, {
      method: 'POST',
      headers: { 'x-api-key': env.ANTHROPIC_API_KEY, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'hi' }] }),
    })
    t.assert.strictEqual(early.status, 401, 'a prewarmed CLI\'s key answers no model call')
    t.assert.strictEqual(server.requests.length, 0)
    t.assert.deepStrictEqual(await manager.prewarm({ sessionId, userId: 'u' }), { status: 'already_warm' })
    t.assert.ok(same(await cliPids(sessionId), pids), 'already_warm started nothing')

    const first = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'one' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    t.assert.strictEqual(first.result, 'Echo #1: one')
    t.assert.ok(same(await cliPids(sessionId), pids), 'the prewarmed process ran the first task')
    const sent = server.requests.filter((r) => r.path.startsWith('/v1/messages'))
    t.assert.strictEqual(sent.length, 1, 'one model call, the task\'s')
    const userTexts = sent[0].body.messages.filter((m) => m.role === 'user').flatMap((m) => (typeof m.content === 'string' ? [m.content] : m.content.map((c) => c.text ?? '')))
    t.assert.strictEqual(userTexts.at(-1), 'one', 'the model saw the prompt last')
    t.assert.ok(!userTexts.some((x) => /interrupted|context/i.test(x) && !x.startsWith('<system-reminder>')), `nothing of the prewarm reached the model: ${JSON.stringify(userTexts)}`)
    const kinds = (await manager.getMessages(sessionId, 'u')).messages.map((m) => m.kind)
    t.assert.deepStrictEqual(kinds, ['prompt', 'assistant'], 'the conversation holds the task alone')
    const second = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'two' })
    t.assert.strictEqual(second.result, 'Echo #2: two')
    t.assert.ok(same(await cliPids(sessionId), pids), 'and the next one')
    t.assert.strictEqual(modelCalls(), 2)
    t.assert.strictEqual((await manager.getSession(sessionId, 'u')).taskCount, 2)
  })
}

test('prewarm: a task with other options does not use the prewarmed CLI (it is replaced)', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const sessionId = await newSession(manager)
  t.assert.strictEqual((await manager.prewarm({ sessionId, userId: 'u', model: 'haiku' })).status, 'started')
  const a = await cliPids(sessionId)
  const r = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'one' })
  t.assert.strictEqual(r.result, 'Echo #1: one')
  const b = await cliPids(sessionId)
  t.assert.ok(b.length > 0 && !b.some((p) => a.includes(p)), `another process for the other model: ${a} -> ${b}`)
  t.assert.ok(!server.requests.at(-1).body.model.includes('haiku'), 'the task ran with its own model')
})

/** The session's transcript file under the manager's configuration folder, or undefined. */
const transcriptOf = (configDir, sessionId) =>
  filesUnder(configDir).find((f) => f.endsWith(`${sessionId}.jsonl`))
/** A file's bytes, or null when there is none (a new session's cut warm-up removes its file). */
function read(file) {
  try {
    return file ? fs.readFileSync(file) : null
  } catch (e) {
    if (e.code === 'ENOENT') return null
    throw e
  }
}
/** Whether a transcript file holds a message line of a warm-up. */
const warmUpLines = (file) =>
  (read(file) ?? '')
    .toString()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .some((l) => (l.type === 'user' || l.type === 'assistant') && /warm-up|authenticat|401/.test(JSON.stringify(l.message?.content ?? '')))
/** Resolves with the session's transcript file as soon as it holds the warm-up's prompt (looked
 * at every millisecond), or undefined after 20 s. */
async function warmUpWritten(configDir, sessionId) {
  let file
  for (const end = Date.now() + 20_000; Date.now() < end; await sleep(1)) {
    file ??= transcriptOf(configDir, sessionId)
    if (file && /warm-up/.test(read(file) ?? '')) return file
  }
}
/** The texts of a model request's messages. */
const textsOf = (req) => req.body.messages.flatMap((m) => (typeof m.content === 'string' ? [m.content] : m.content.map((c) => c.text ?? ''))).filter(Boolean)

for (const backend of testBackends()) {
  test(`prewarm's warm-up: the CLI's first turn runs before the first prompt, answered by the key proxy, and is taken back from the CLI, its transcript and the store${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager, configDir } = warmManager(t, { backend, warmIdleMs: 3000 })
    // A resumed session (its CLI idled out) and a new one.
    const first = await manager.executeTask({ projectId: 'p', userId: 'u', prompt: 'one' })
    const resumed = first.sessionId
    t.assert.ok(await eventually(() => cliProcesses(resumed).length === 0), 'the CLI idled out')
    const fresh = await newSession(manager)
    for (const [sessionId, n] of [[resumed, 2], [fresh, 1]]) {
      const before = sessionId === resumed ? read(transcriptOf(configDir, resumed)) : null
      const refused = manager.info().proxyRefused
      const calls = modelCalls()
      t.assert.deepStrictEqual(await manager.prewarm({ sessionId, userId: 'u', projectId: 'p' }), { status: 'started' })
      // The warm-up ran: its model call was answered by the key proxy (401), not the API.
      t.assert.ok(manager.info().proxyRefused > refused, `the warm-up's call reached the key proxy (${sessionId === resumed ? 'resumed' : 'new'})`)
      t.assert.strictEqual(modelCalls(), calls, 'and not the API')
      // Taken back from the transcript: the file is as it was (a new session's: none; on
      // PostgreSQL the node's copy is made from the store at the prewarm), and from the store.
      if (sessionId === fresh) t.assert.strictEqual(transcriptOf(configDir, fresh), undefined, 'a new session has no transcript before its first prompt')
      else if (backend === 'sqlite') t.assert.ok(before && read(transcriptOf(configDir, resumed)).equals(before), 'the transcript is byte for byte as before the prewarm')
      else t.assert.ok(!warmUpLines(transcriptOf(configDir, resumed)), "no line of the warm-up in the node's copy")
      const kindsBefore = (await manager.getMessages(sessionId, 'u')).messages.map((m) => m.kind)
      t.assert.deepStrictEqual(kindsBefore, sessionId === resumed ? ['prompt', 'assistant'] : [], 'the conversation is as before the prewarm')
      const pids = await cliPids(sessionId)
      const { result, running } = await taskSeen(manager, { projectId: 'p', userId: 'u', sessionId, prompt: 'two' })
      t.assert.strictEqual(result.result, `Echo #${n}: two`, JSON.stringify(result.error))
      t.assert.ok(same(running, pids), 'the prewarmed CLI ran the task')
      // Taken back from the CLI: the model saw the conversation and the prompt, nothing else.
      const sent = server.requests.filter((r) => r.path.startsWith('/v1/messages')).at(-1)
      const texts = textsOf(sent)
      t.assert.ok(!texts.some((x) => /warm-up|authenticat/.test(x)), 'the model saw nothing of the warm-up')
      t.assert.deepStrictEqual(texts.filter((x) => /^(one|two|Echo #\d: one)$/.test(x)), sessionId === resumed ? ['one', 'Echo #1: one', 'two'] : ['two'])
      const kinds = (await manager.getMessages(sessionId, 'u')).messages.map((m) => m.kind)
      t.assert.deepStrictEqual(kinds, sessionId === resumed ? ['prompt', 'assistant', 'prompt', 'assistant'] : ['prompt', 'assistant'])
      t.assert.ok(!warmUpLines(transcriptOf(configDir, sessionId)), 'no message line of the warm-up in the transcript')
    }
  })
}

test('prewarm: a task that arrives while the prewarmed CLI runs its warm-up waits for it, past queueTimeoutMs, and runs in it', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const sessionId = await newSession(manager)
  const refused = manager.info().proxyRefused
  let settled = false
  const prewarmed = manager.prewarm({ sessionId, userId: 'u', projectId: 'p' }).finally(() => (settled = true))
  const pids = await cliPids(sessionId)
  t.assert.strictEqual(settled, false, 'the task comes while the prewarm runs')
  const { result, running } = await taskSeen(manager, { projectId: 'p', userId: 'u', sessionId, prompt: 'soon', queueTimeoutMs: 0 })
  t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
  t.assert.deepStrictEqual(await prewarmed, { status: 'started' })
  t.assert.ok(manager.info().proxyRefused > refused, 'the warm-up ran before the task')
  t.assert.ok(same(running, pids), 'the prewarmed CLI ran the task')
  t.assert.strictEqual(modelCalls(), 1)
})

test('prewarm: close() during the warm-up stops it, and takes it back: the session runs its first task in another manager', async (t) => {
  server.reset()
  const dir = tempDir()
  const first = makeManager({ server, dir, warmIdleMs: 600_000 })
  const sessionId = await newSession(first.manager)
  const prewarmed = first.manager.prewarm({ sessionId, userId: 'u', projectId: 'p' }).catch((e) => e)
  await cliPids(sessionId)
  await first.manager.close()
  await prewarmed
  t.assert.ok(await eventually(() => cliProcesses(sessionId).length === 0), 'nothing left running')
  t.assert.ok(!warmUpLines(transcriptOf(first.configDir, sessionId)), 'no line of the warm-up in the transcript')
  const second = makeManager({ server, dir, warmIdleMs: 600_000 })
  t.after(() => second.manager.close())
  const r = await second.manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'after' })
  t.assert.strictEqual(r.result, 'Echo #1: after', JSON.stringify(r.error))
  t.assert.deepStrictEqual((await second.manager.getMessages(sessionId, 'u')).messages.map((m) => m.kind), ['prompt', 'assistant'])
})

test('prewarm: deleteSession while the prewarmed CLI starts or runs its warm-up stops it: no CLI and no transcript of the deleted session are left', async (t) => {
  server.reset()
  const { manager, configDir } = warmManager(t)
  for (const when of ['once its CLI runs', 'once the warm-up is in the transcript']) {
    const sessionId = await newSession(manager)
    const prewarmed = manager.prewarm({ sessionId, userId: 'u', projectId: 'p' }).then((r) => r.status, (e) => e.code)
    if (when === 'once its CLI runs') await cliPids(sessionId)
    else t.assert.ok(await warmUpWritten(configDir, sessionId), when)
    await manager.deleteSession(sessionId, 'u')
    // Stopped; or, deleted once it was over, its CLI dropped by deleteSession.
    t.assert.ok(['SESSION_NOT_FOUND', 'started'].includes(await prewarmed), `${when}: ${await prewarmed}`)
    t.assert.deepStrictEqual(processesMentioning(sessionId), [], `no process of the deleted session (${when})`)
    t.assert.strictEqual(transcriptOf(configDir, sessionId), undefined, `no transcript of the deleted session (${when})`)
    await rejectsWith(t, manager.getSession(sessionId, 'u'), 'SESSION_NOT_FOUND')
  }
  t.assert.strictEqual(modelCalls(), 0)
})

test('prewarm: a line another process of the tenant writes into a new session\'s transcript during the warm-up goes with it: the first task runs, and the model never reads the warm-up', async (t) => {
  server.reset()
  const { manager, configDir } = warmManager(t)
  const sessionId = await newSession(manager)
  const foreign = { type: 'user', uuid: '7c1f6a4e-0000-4000-8000-000000000001', parentUuid: null, sessionId: 'another', message: { role: 'user', content: 'planted' } }
  // Appended as soon as the warm-up's prompt is in the file (a window of some tens of ms), to
  // the file as it is (never making one).
  const plant = warmUpWritten(configDir, sessionId).then((file) => {
    if (!file) return false
    const fd = fs.openSync(file, 'r+')
    fs.writeSync(fd, JSON.stringify(foreign) + '\n', fs.fstatSync(fd).size)
    fs.closeSync(fd)
    return true
  })
  const prewarmed = await manager.prewarm({ sessionId, userId: 'u', projectId: 'p' })
  const planted = await plant
  t.assert.ok(planted, 'the line was written during the warm-up')
  t.assert.strictEqual(prewarmed.status, 'started')
  t.assert.ok(!/planted|"type":"user"/.test(read(transcriptOf(configDir, sessionId)) ?? ''), "the new session's file holds no message")
  const r = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'first' })
  t.assert.strictEqual(r.result, 'Echo #1: first', JSON.stringify(r.error))
  const seen = server.requests.filter((q) => q.path.startsWith('/v1/messages')).flatMap(textsOf)
  t.assert.ok(seen.includes('first') && !seen.some((x) => x === 'planted' || /warm-up turn|Failed to authenticate/.test(x)), JSON.stringify(seen))
  t.assert.ok(!warmUpLines(transcriptOf(configDir, sessionId)))
})

test('prewarm: a CLI starts only in a free maxConcurrentTasks place (at_capacity otherwise, never waiting), so a flood of prewarms cannot start more CLIs at once than tasks can', async (t) => {
  server.reset()
  const { manager } = warmManager(t, { maxConcurrentTasks: 1 })
  const busy = await newSession(manager)
  const other = await newSession(manager)
  server.enqueue({ text: 'slow', delayMs: 4000 })
  const task = manager.executeTask({ projectId: 'p', userId: 'u', sessionId: busy, prompt: 'slow' })
  t.assert.ok(await eventually(() => modelCalls() === 1), 'the task runs')
  t.assert.strictEqual((await manager.prewarm({ sessionId: other, userId: 'u' })).status, 'at_capacity')
  t.assert.deepStrictEqual(processesMentioning(other), [], 'no CLI started')
  t.assert.strictEqual((await task).result, 'slow')
  t.assert.strictEqual((await manager.prewarm({ sessionId: other, userId: 'u' })).status, 'started', 'once the place is free')

  // Many at once, as a client could send them: no more CLIs starting at a time than places.
  const { manager: two } = warmManager(t, { maxConcurrentTasks: 2 })
  const ids = []
  for (let i = 0; i < 6; i++) ids.push(await newSession(two))
  // Starting: a CLI of a session whose prewarm has not resolved yet.
  const pending = new Set(ids)
  let peak = 0
  const sampler = setInterval(() => (peak = Math.max(peak, [...pending].filter((id) => cliProcesses(id).length > 0).length)), 10)
  const statuses = await Promise.all(ids.map((sessionId) => two.prewarm({ sessionId, userId: 'u' }).then((r) => (pending.delete(sessionId), r.status))))
  clearInterval(sampler)
  t.assert.ok(statuses.every((s) => s === 'started' || s === 'at_capacity') && statuses.includes('at_capacity'), JSON.stringify(statuses))
  t.assert.ok(peak >= 1 && peak <= 2, `at most 2 CLIs starting at once, saw ${peak}`)
  t.assert.strictEqual(modelCalls(), 1)
})

test('prewarm: a resumed session whose CLI idled out is prewarmed with its history; an unused prewarmed CLI idles out too', async (t) => {
  server.reset()
  const { manager } = warmManager(t, { warmIdleMs: 2500 })
  const first = await manager.executeTask({ projectId: 'p', userId: 'u', prompt: 'one' })
  const sessionId = first.sessionId
  t.assert.ok(await eventually(() => processesMentioning(sessionId).length === 0), 'the CLI idled out')
  t.assert.strictEqual((await manager.prewarm({ sessionId, userId: 'u' })).status, 'started')
  const pids = await cliPids(sessionId)
  t.assert.ok(pids.length > 0)
  const { result: second, running } = await taskSeen(manager, { projectId: 'p', userId: 'u', sessionId, prompt: 'two' })
  t.assert.strictEqual(second.result, 'Echo #2: two', 'the prewarmed CLI resumed the conversation')
  t.assert.ok(same(running, pids), `the prewarmed CLI ran it: ${pids} vs ${running}`)
  t.assert.strictEqual(server.requests.filter((r) => r.path.startsWith('/v1/messages')).length, 2)

  const other = await newSession(manager)
  t.assert.strictEqual((await manager.prewarm({ sessionId: other, userId: 'u' })).status, 'started')
  t.assert.ok(processesMentioning(other).length > 0)
  t.assert.ok(await eventually(() => processesMentioning(other).length === 0), 'an unused prewarmed CLI idles out')
  // Nothing of it is left in the session: its first task starts it as new.
  const r = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId: other, prompt: 'fresh' })
  t.assert.strictEqual(r.result, 'Echo #1: fresh')
})

test('prewarm: counts against maxWarmSessions; another user\'s session and bad options are refused before anything starts; off with warmIdleMs 0', async (t) => {
  server.reset()
  const { manager } = warmManager(t, { maxWarmSessions: 2 })
  const ids = [await newSession(manager), await newSession(manager), await newSession(manager)]
  for (const sessionId of ids) t.assert.strictEqual((await manager.prewarm({ sessionId, userId: 'u' })).status, 'started')
  t.assert.ok(await eventually(() => ids.filter((id) => processesMentioning(id).length > 0).length === 2), 'two CLIs kept, the oldest evicted')
  t.assert.deepStrictEqual(processesMentioning(ids[0]), [])

  const mine = await newSession(manager)
  await rejectsWith(t, manager.prewarm({ sessionId: mine, userId: 'mallory' }), 'SESSION_NOT_FOUND')
  await rejectsWith(t, manager.prewarm({ sessionId: mine, userId: 'u', projectId: 'other' }), 'SESSION_NOT_FOUND')
  await rejectsWith(t, manager.prewarm({ sessionId: mine, userId: 'u', permissionMode: 'bypassPermissions' }), 'INVALID_ARGUMENT', /allowBypassPermissions/)
  await rejectsWith(t, manager.prewarm({ sessionId: mine, userId: 'u', model: 'x; rm -rf /' }), 'INVALID_ARGUMENT')
  await rejectsWith(t, manager.prewarm({ sessionId: mine, userId: 'u', prompt: 'hi' }), 'INVALID_ARGUMENT', /prompt/)
  await rejectsWith(t, manager.prewarm({ sessionId: 'not-a-uuid', userId: 'u' }), 'INVALID_ARGUMENT')
  t.assert.deepStrictEqual(processesMentioning(mine), [], 'nothing started for a refused prewarm')
  t.assert.strictEqual(modelCalls(), 0)

  const cold = makeManager({ server, warmIdleMs: 0 })
  t.after(() => cold.manager.close())
  const id = await newSession(cold.manager)
  t.assert.deepStrictEqual(await cold.manager.prewarm({ sessionId: id, userId: 'u' }), { status: 'warm_disabled' })
  t.assert.deepStrictEqual(processesMentioning(id), [])
})

test('prewarm on PostgreSQL: another node keeping the session\'s CLI is held_elsewhere; once it is gone, a node that never ran the session prewarms it with the history from the store', async (t) => {
  if (!PG_URL) return t.skip(PG_SKIP_REASON)
  server.reset()
  const a = makeManager({ server, backend: 'postgres', warmIdleMs: 600_000 })
  const b = makeManager({ server, backend: 'postgres', warmIdleMs: 600_000, ...a.store })
  t.after(async () => {
    await a.manager.close()
    await b.manager.close()
  })
  const first = await a.manager.executeTask({ projectId: 'p', userId: 'u', prompt: 'one' })
  const sessionId = first.sessionId
  t.assert.deepStrictEqual(await b.manager.prewarm({ sessionId, userId: 'u' }), { status: 'held_elsewhere' })
  await a.manager.close()
  t.assert.deepStrictEqual(await b.manager.prewarm({ sessionId, userId: 'u' }), { status: 'started' })
  const pids = await cliPids(sessionId)
  const { result: second, running } = await taskSeen(b.manager, { projectId: 'p', userId: 'u', sessionId, prompt: 'two' })
  t.assert.strictEqual(second.result, 'Echo #2: two', 'the conversation came from the store')
  t.assert.ok(same(running, pids), `the prewarmed CLI ran it: ${pids} vs ${running}`)
})
