// Forwarding through the store (issue #15): an answer to a permission request, or a steering
// message, given to a manager that does not run the task reaches the one that does, through the
// database they share (one SQLite file; one PostgreSQL schema when CSM_TEST_DATABASE_URL is set).
// Two managers stand for two server processes or nodes; the real `claude` CLI against the
// stand-in API.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { makeManager, rejectsWith, startStandInServer, testBackends, backendTag, until, gate } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

/** Managers A and B over one store (same folder, so the same SQLite file or PostgreSQL schema). */
function twoManagers(t, backend, options = {}) {
  // A request nobody forwards is denied after 20 s (the test then fails on the file), not 5 min.
  const a = makeManager({ server, backend, warmIdleMs: 600_000, permissionTimeoutMs: 20_000, ...options })
  const b = makeManager({ server, backend, dir: a.dir, ...a.store, warmIdleMs: 600_000, permissionTimeoutMs: 20_000, ...options })
  t.after(() => Promise.all([a.manager.close(), b.manager.close()]))
  return { a: a.manager, b: b.manager, work: a.work }
}

/** Enqueues a Write of `name` in `work`, then a text reply; returns the file's path. */
function writeCall(work, name, content = 'from the agent\n') {
  const file = path.join(work, name)
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content } } }, { text: 'Done.' })
  return file
}

/**
 * Runs a task in `manager` whose permission callback never answers by itself (it resolves only
 * when its signal aborts): the request stays pending until answered elsewhere.
 */
function pendingTask(manager, prompt) {
  const seen = { request: null, sessionId: null }
  const run = manager.executeTask(
    { projectId: 'p', userId: 'u', prompt, permissionMode: 'default' },
    {
      onEvent: (e) => {
        if (e.type === 'task_started') seen.sessionId = e.sessionId
      },
      canUseTool: (toolName, input, options) => {
        seen.request = { toolName, input, ...options }
        return new Promise((resolve) => options.signal.addEventListener('abort', () => resolve({ behavior: 'deny', message: 'withdrawn' })))
      },
    },
  )
  return { seen, run }
}

for (const backend of testBackends()) {
  const tag = backendTag(backend)

  test(`forward: a request pending in A is answered through B; allow runs the tool; another user's answer is refused and settles nothing; a settled or unknown id is not found${tag}`, async (t) => {
    server.reset()
    const { a, b, work } = twoManagers(t, backend)
    const file = writeCall(work, 'allowed.txt')
    const { seen, run } = pendingTask(a, 'write it')
    const req = await until('the permission request', () => seen.request && seen.sessionId && seen.request)
    t.assert.strictEqual(req.toolName, 'Write')
    t.assert.strictEqual(typeof req.requestId, 'string')
    const answer = { sessionId: seen.sessionId, userId: 'u', requestId: req.requestId, behavior: 'allow' }

    // Refused before anything is looked up: a client may not grant permanent permissions, and
    // updatedInput is the tool's input (an object).
    await rejectsWith(t, b.respondToPermission({ ...answer, updatedPermissions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }] }), 'INVALID_ARGUMENT')
    await rejectsWith(t, b.respondToPermission({ ...answer, updatedInput: 'x' }), 'INVALID_ARGUMENT')
    await rejectsWith(t, b.respondToPermission({ ...answer, updatedInput: null }), 'INVALID_ARGUMENT')
    await rejectsWith(t, b.respondToPermission({ ...answer, behavior: 'maybe' }), 'INVALID_ARGUMENT')
    // Someone else's session answers as a missing one does, and settles nothing.
    await rejectsWith(t, b.respondToPermission({ ...answer, userId: 'mallory' }), 'SESSION_NOT_FOUND')
    await rejectsWith(t, b.respondToPermission({ ...answer, requestId: 'no-such-request' }), 'PERMISSION_REQUEST_NOT_FOUND')
    t.assert.strictEqual(req.signal.aborted, false, 'still pending')
    t.assert.strictEqual(fs.existsSync(file), false, 'nothing ran before the answer')

    await b.respondToPermission(answer)
    const r = await run
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'from the agent\n')
    t.assert.deepStrictEqual(r.permissionDenials, [])
    t.assert.strictEqual(req.signal.aborted, true, "A's callback was told the request is no longer pending")
    // Settled: no manager finds it any more.
    await rejectsWith(t, b.respondToPermission(answer), 'PERMISSION_REQUEST_NOT_FOUND')
    await rejectsWith(t, a.respondToPermission(answer), 'PERMISSION_REQUEST_NOT_FOUND')
  })

  test(`forward: deny through B keeps the tool from running, with its message; updatedInput through B is the input the tool runs with${tag}`, async (t) => {
    server.reset()
    const { a, b, work } = twoManagers(t, backend)
    const denied = writeCall(work, 'denied.txt')
    const first = pendingTask(a, 'write it')
    const req = await until('the permission request', () => first.seen.request && first.seen.sessionId && first.seen.request)
    await b.respondToPermission({ sessionId: first.seen.sessionId, userId: 'u', requestId: req.requestId, behavior: 'deny', message: 'not that file, says B' })
    const r = await first.run
    t.assert.strictEqual(fs.existsSync(denied), false)
    t.assert.strictEqual(r.permissionDenials.length, 1)
    t.assert.match(JSON.stringify(server.requests.filter((x) => x.path === '/v1/messages').at(-1).body.messages.at(-1)), /not that file, says B/)

    const edited = writeCall(work, 'edited.txt')
    const second = pendingTask(a, 'write another')
    const req2 = await until('the second request', () => second.seen.request && second.seen.sessionId && second.seen.request)
    await b.respondToPermission({
      sessionId: second.seen.sessionId,
      userId: 'u',
      requestId: req2.requestId,
      behavior: 'allow',
      updatedInput: { ...req2.input, content: 'REWRITTEN through B\n' },
    })
    const r2 = await second.run
    t.assert.strictEqual(r2.success, true, JSON.stringify(r2.error))
    t.assert.strictEqual(fs.readFileSync(edited, 'utf8'), 'REWRITTEN through B\n')
  })

  test(`forward: a message sent through B while A's task runs is answered in that task; with no task running it is refused${tag}`, async (t) => {
    server.reset()
    const { a, b } = twoManagers(t, backend)
    const first = await a.executeTask({ projectId: 'p', userId: 'u', prompt: 'one' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    // The first answer is held until the message is steered in (a loaded machine may take long).
    const steered = gate()
    server.enqueue({ text: 'a slow first answer', after: steered.promise })
    let sent
    // With a permission callback the task runs in a stream-json CLI on both backends (PostgreSQL
    // keeps no warm CLI between tasks).
    const r = await a.executeTask(
      { projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId },
      {
        canUseTool: async () => ({ behavior: 'allow' }),
        onEvent: (e) => {
          if (e.type === 'system' && e.subtype === 'init' && !sent) {
            sent = b.sendMessage({ sessionId: first.sessionId, userId: 'u', prompt: 'and also this, through B' })
            sent.finally(steered.open).catch(() => {})
          }
        },
      },
    )
    await sent
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    // The model saw the message B forwarded after its answer to the prompt, in the same task.
    t.assert.strictEqual(r.result, 'Echo #3: and also this, through B')
    t.assert.strictEqual(server.requests.filter((x) => x.path === '/v1/messages').length, 3)
    t.assert.deepStrictEqual((await b.listTasks(first.sessionId, 'u')).map((x) => x.status), ['succeeded', 'succeeded'])
    await rejectsWith(t, b.sendMessage({ sessionId: first.sessionId, userId: 'u', prompt: 'nobody listens' }), 'INVALID_ARGUMENT')
    await rejectsWith(t, b.sendMessage({ sessionId: first.sessionId, userId: 'someone-else', prompt: 'x' }), 'SESSION_NOT_FOUND')
  })

  test(`forward: a message sent through B past the task's limit (4 MiB of messages) is CONTEXT_OVERFLOW, as it is in A, and the task runs on${tag}`, async (t) => {
    server.reset()
    const { a, b } = twoManagers(t, backend)
    const first = await a.executeTask({ projectId: 'p', userId: 'u', prompt: 'one' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    const held = gate()
    server.enqueue({ text: 'a slow first answer', after: held.promise })
    let sent
    const run = a.executeTask(
      { projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId },
      {
        canUseTool: async () => ({ behavior: 'allow' }),
        onEvent: (e) => {
          if (e.type === 'system' && e.subtype === 'init' && !sent) {
            const send = (prompt) => b.sendMessage({ sessionId: first.sessionId, userId: 'u', prompt }).then(() => 'ok', (e) => e.code)
            sent = (async () => [await send('x'.repeat(3 * 1024 * 1024)), await send('y'.repeat(2 * 1024 * 1024))])()
            sent.finally(held.open).catch(() => {})
          }
        },
      },
    )
    const r = await run
    t.assert.deepStrictEqual(await sent, ['ok', 'CONTEXT_OVERFLOW'], 'the second message through B passes the 4 MiB a task takes')
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    const asked = JSON.stringify(server.requests.filter((x) => x.path === '/v1/messages').map((x) => x.body.messages))
    t.assert.ok(asked.includes('x'.repeat(1000)) && !asked.includes('y'.repeat(1000)), 'the model saw the first message only')
  })
}
