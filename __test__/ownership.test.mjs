// Ownership, table-driven: for every method that takes a userId, another user's session answers
// exactly like a missing one (same code, same message once the id is replaced), through the addon
// and through the Next.js routes, and nothing of the owner's session changes.
import { test, before, after } from 'node:test'
import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { makeManager, processesMentioning, startStandInServer, until } from './helpers.mjs'

const require = createRequire(import.meta.url)
const { createClaudeRoutes } = require('../next/index.js')

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

/** What a call answered: `{ ok, value }` or `{ code, message }` with `id` replaced by ID. */
async function outcome(fn, id) {
  try {
    return { ok: true, value: await fn() }
  } catch (e) {
    return { code: e.code, message: String(e.message).split(id).join('ID') }
  }
}

/** What a route answered: the HTTP status and the error body with `id` replaced by ID. */
async function routeOutcome(resPromise, id) {
  const res = await resPromise
  const text = (await res.text()).split(id).join('ID')
  let body
  try {
    body = JSON.parse(text)
  } catch {
    body = text
  }
  return { status: res.status, body }
}

// Each row: a name and a call made by `user` on session `id`.
const addonRows = (m) => [
  ['getSession', (id, user) => m.getSession(id, user)],
  ['archiveSession', (id, user) => m.archiveSession(id, user)],
  ['deleteSession', (id, user) => m.deleteSession(id, user)],
  ['deleteSession keepTranscript', (id, user) => m.deleteSession(id, user, { keepTranscript: true })],
  ['fork', (id, user) => m.fork({ sessionId: id, userId: user })],
  ['fork with a title', (id, user) => m.fork({ sessionId: id, userId: user, title: 'mine now' })],
  ['getSessionContext', (id, user) => m.getSessionContext(id, user)],
  ['getSessionContext threshold', (id, user) => m.getSessionContext(id, user, { threshold: 50 })],
  ['estimatePromptTokens', (id, user) => m.estimatePromptTokens(id, user, 'how big is this?')],
  ['getMessages', (id, user) => m.getMessages(id, user)],
  ['getMessages page', (id, user) => m.getMessages(id, user, { limit: 1, offset: 0 })],
  ['listTasks', (id, user) => m.listTasks(id, user)],
  ['listCompactions', (id, user) => m.listCompactions(id, user)],
  ['compactSession', (id, user) => m.compactSession({ sessionId: id, userId: user })],
  ['executeTask sessionId', (id, user) => m.executeTask({ prompt: 'steal', projectId: 'p', userId: user, sessionId: id })],
  ['executeTask forkSession', (id, user) => m.executeTask({ prompt: 'steal', projectId: 'p', userId: user, sessionId: id, forkSession: true })],
  ['executeTask autoCompact', (id, user) => m.executeTask({ prompt: 'steal', projectId: 'p', userId: user, sessionId: id, autoCompact: true })],
  ['sendMessage', (id, user) => m.sendMessage({ sessionId: id, userId: user, prompt: 'steal' })],
  ['getContextUsage', (id, user) => m.getContextUsage(id, user)],
  ['startFresh sessionId', (id, user) => m.startFresh({ projectId: 'p', userId: user, sessionId: id })],
  ['startFresh sessionId other project', (id, user) => m.startFresh({ projectId: 'q', userId: user, sessionId: id })],
  ['executeTask sessionId other project', (id, user) => m.executeTask({ prompt: 'steal', projectId: 'q', userId: user, sessionId: id })],
]

const BASE = 'http://localhost/api/claude'
const post = (path, body, user) =>
  new Request(`${BASE}/${path}`, { method: 'POST', headers: { 'x-user': user, 'content-type': 'application/json' }, body: JSON.stringify(body) })
const get = (pathAndQuery, user) => new Request(`${BASE}/${pathAndQuery}`, { headers: { 'x-user': user } })

const routeRows = (r) => [
  ['GET session', (id, user) => r.session.GET(get(`session?sessionId=${id}`, user))],
  ['POST task', (id, user) => r.task.POST(post('task', { prompt: 'steal', projectId: 'p', sessionId: id }, user))],
  ['POST task forkSession', (id, user) => r.task.POST(post('task', { prompt: 'steal', projectId: 'p', sessionId: id, forkSession: true }, user))],
  ['POST stream', (id, user) => r.stream.POST(post('stream', { prompt: 'steal', projectId: 'p', sessionId: id }, user))],
  ['session fork', (id, user) => r.session.POST(post('session', { action: 'fork', sessionId: id }, user))],
  ['session archive', (id, user) => r.session.POST(post('session', { action: 'archive', sessionId: id }, user))],
  ['session delete', (id, user) => r.session.POST(post('session', { action: 'delete', sessionId: id }, user))],
  ['session messages', (id, user) => r.session.POST(post('session', { action: 'messages', sessionId: id, limit: 5 }, user))],
  ['session tasks', (id, user) => r.session.POST(post('session', { action: 'tasks', sessionId: id }, user))],
  ['GET compact', (id, user) => r.compact.GET(get(`compact?sessionId=${id}`, user))],
  ['POST compact', (id, user) => r.compact.POST(post('compact', { sessionId: id }, user))],
  ['POST message', (id, user) => r.message.POST(post('message', { sessionId: id, prompt: 'steal' }, user))],
  ['GET context', (id, user) => r.context.GET(get(`context?sessionId=${id}`, user))],
]

test('ownership: every method and route answers for another user\'s session exactly as for a missing one', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  // Alice's session has everything a method could reveal: a task, a transcript, a compaction, a fork.
  const ran = await manager.executeTask({ prompt: 'alice private', projectId: 'p', userId: 'alice' })
  t.assert.strictEqual(ran.success, true, JSON.stringify(ran.error))
  const id = ran.sessionId
  const compacted = await manager.compactSession({ sessionId: id, userId: 'alice' })
  t.assert.strictEqual(compacted.success, true, JSON.stringify(compacted.error))
  const aliceFork = await manager.fork({ sessionId: id, userId: 'alice' })
  await manager.archiveSession(id, 'alice')
  const snapshot = async () => ({
    session: await manager.getSession(id, 'alice'),
    fork: await manager.getSession(aliceFork.id, 'alice'),
    tasks: await manager.listTasks(id, 'alice'),
    compactions: await manager.listCompactions(id, 'alice'),
    messages: await manager.getMessages(id, 'alice'),
    context: await manager.getSessionContext(id, 'alice'),
  })
  const before = await snapshot()
  t.assert.strictEqual(before.compactions.length, 1, 'there is a compaction to leak')
  t.assert.ok(before.messages.messages.length > 0, 'and messages')
  const requestsBefore = server.requests.length

  // Mallory has a session of her own, so "missing" is not "this user has nothing".
  await manager.getOrCreateSession({ projectId: 'p', userId: 'mallory' })

  // The addon.
  for (const [name, call] of addonRows(manager)) {
    const missing = randomUUID()
    const theirs = await outcome(() => call(id, 'mallory'), id)
    const none = await outcome(() => call(missing, 'mallory'), missing)
    t.assert.deepStrictEqual(theirs, none, `${name}: alice's session answered differently from a missing one`)
    t.assert.strictEqual(theirs.code, 'SESSION_NOT_FOUND', `${name}: ${JSON.stringify(theirs)}`)
    t.assert.strictEqual(theirs.message, 'session ID was not found for this user', name)
  }

  // A client never picks a new session's id: startFresh and executeTask with an id never
  // created, one mallory used herself and deleted, and alice's answer alike, creating nothing.
  const usedByMallory = (await manager.startFresh({ projectId: 'q', userId: 'mallory' })).session.id
  await manager.deleteSession(usedByMallory, 'mallory')
  const mallorysBefore = await manager.listSessions({ userId: 'mallory' })
  for (const [name, call] of [
    ['startFresh', (sid) => manager.startFresh({ projectId: 'q', userId: 'mallory', sessionId: sid })],
    ['executeTask', (sid) => manager.executeTask({ prompt: 'mine', projectId: 'q', userId: 'mallory', sessionId: sid })],
    ['deleteSession', (sid) => manager.deleteSession(sid, 'mallory')],
  ]) {
    const never = randomUUID()
    const theirs = await outcome(() => call(id), id)
    t.assert.deepStrictEqual(await outcome(() => call(never), never), theirs, `${name} with a never-created id`)
    t.assert.deepStrictEqual(await outcome(() => call(usedByMallory), usedByMallory), theirs, `${name} with a deleted id`)
    t.assert.deepStrictEqual(theirs, { code: 'SESSION_NOT_FOUND', message: 'session ID was not found for this user' }, name)
  }
  t.assert.deepStrictEqual(await manager.listSessions({ userId: 'mallory' }), mallorysBefore, 'no session was created under a chosen id')

  // cleanupSessions: mallory's cleanup of everything idle answers as it would without alice, and
  // leaves alice's (idle, archived) session and its fork alone.
  await new Promise((r) => setTimeout(r, 5))
  const cleaned = await manager.cleanupSessions({ userId: 'mallory', maxAgeMs: 0, keepActive: false })
  t.assert.deepStrictEqual(cleaned, { deleted: 1, remaining: 0 }, 'her own session, nothing else')
  t.assert.deepStrictEqual(await manager.cleanupSessions({ userId: 'mallory', projectId: 'p', maxAgeMs: 0, keepActive: false }), { deleted: 0, remaining: 0 })

  // The Next.js routes: the same 404 body for both.
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  for (const [name, call] of routeRows(routes)) {
    const missing = randomUUID()
    const theirs = await routeOutcome(call(id, 'mallory'), id)
    const none = await routeOutcome(call(missing, 'mallory'), missing)
    t.assert.deepStrictEqual(theirs, none, `route ${name}`)
    t.assert.strictEqual(theirs.status, 404, `route ${name}: ${JSON.stringify(theirs)}`)
    t.assert.deepStrictEqual(theirs.body, { error: { code: 'SESSION_NOT_FOUND', message: 'session ID was not found for this user' } }, `route ${name}`)
  }
  const freshRoute = (sid) => routeOutcome(routes.session.POST(post('session', { action: 'startFresh', projectId: 'q', sessionId: sid }, 'mallory')), sid)
  const freshRouteTheirs = await freshRoute(id)
  t.assert.deepStrictEqual(freshRouteTheirs, await freshRoute(usedByMallory), 'route startFresh with alice\'s id')
  t.assert.deepStrictEqual(freshRouteTheirs, await freshRoute(randomUUID()), 'route startFresh with a never-created id')
  t.assert.strictEqual(freshRouteTheirs.status, 404)
  const cleanRoute = await routeOutcome(routes.session.POST(post('session', { action: 'cleanup', maxAgeMs: 0, keepActive: false }, 'mallory')), id)
  t.assert.deepStrictEqual(cleanRoute, { status: 200, body: { deleted: 0, remaining: 0 } })

  // Nothing of alice's changed and nothing reached the model.
  t.assert.deepStrictEqual(await snapshot(), before)
  t.assert.strictEqual(server.requests.length, requestsBefore, 'no call of mallory reached the API')
  await manager.close()
})

/** Every addon row and route row, called by mallory on alice's `id` and on a missing id: asserts
 *  both answer alike, with SESSION_NOT_FOUND / 404. */
async function assertLikeMissing(t, manager, routes, id, phase) {
  for (const [name, call] of addonRows(manager)) {
    const missing = randomUUID()
    const theirs = await outcome(() => call(id, 'mallory'), id)
    t.assert.deepStrictEqual(theirs, await outcome(() => call(missing, 'mallory'), missing), `${phase}: ${name}`)
    t.assert.strictEqual(theirs.code, 'SESSION_NOT_FOUND', `${phase}: ${name}: ${JSON.stringify(theirs)}`)
  }
  for (const [name, call] of routeRows(routes)) {
    const missing = randomUUID()
    const theirs = await routeOutcome(call(id, 'mallory'), id)
    t.assert.deepStrictEqual(theirs, await routeOutcome(call(missing, 'mallory'), missing), `${phase}: route ${name}`)
    t.assert.strictEqual(theirs.status, 404, `${phase}: route ${name}: ${JSON.stringify(theirs)}`)
  }
}

test("ownership while alice's session is live: a kept warm CLI and a pending permission request answer another user as a missing session, and stay alice's", async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server, warmIdleMs: 600_000, permissionTimeoutMs: 60_000 })
  t.after(() => manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  await manager.getOrCreateSession({ projectId: 'p', userId: 'mallory' })

  // 1. A kept warm CLI: alice's first task ended, its process waits for her next one.
  const first = await manager.executeTask({ prompt: 'alice one', projectId: 'p', userId: 'alice' })
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  const id = first.sessionId
  const warm = processesMentioning(id)
  t.assert.ok(warm.length > 0, 'a warm CLI is kept for alice')
  const requestsBefore = server.requests.length
  await assertLikeMissing(t, manager, routes, id, 'kept warm CLI')
  t.assert.strictEqual(server.requests.length, requestsBefore, "no call of mallory's reached the API through alice's CLI")
  t.assert.deepStrictEqual(processesMentioning(id).sort(), [...warm].sort(), "alice's warm CLI is untouched")
  const second = await manager.executeTask({ prompt: 'alice two', projectId: 'p', userId: 'alice', sessionId: id })
  t.assert.strictEqual(second.result, 'Echo #2: alice two', 'her next task continues her conversation alone')
  t.assert.deepStrictEqual(processesMentioning(id).sort(), [...warm].sort(), 'in the same warm CLI')

  // 2. A pending permission request: alice's task waits for her answer to a Write.
  const file = path.join(work, 'alice-approves.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: 'alice\n' } } }, { text: 'Written.' })
  let pending = null
  const run = manager.executeTask(
    { prompt: 'write it', projectId: 'p', userId: 'alice', sessionId: id, permissionMode: 'default' },
    {
      canUseTool: (toolName, input, options) => {
        pending = options
        return new Promise((resolve) => options.signal.addEventListener('abort', () => resolve({ behavior: 'deny', message: 'withdrawn' })))
      },
    },
  )
  await until('the permission request', () => pending)
  const steal = { sessionId: id, userId: 'mallory', requestId: pending.requestId, behavior: 'allow' }
  const missingId = randomUUID()
  const theirs = await outcome(() => manager.respondToPermission(steal), id)
  t.assert.deepStrictEqual(theirs, await outcome(() => manager.respondToPermission({ ...steal, sessionId: missingId }), missingId), 'respondToPermission')
  t.assert.strictEqual(theirs.code, 'SESSION_NOT_FOUND', JSON.stringify(theirs))
  const permRoute = (sid) => routes.permission.POST(post('permission', { sessionId: sid, requestId: pending.requestId, behavior: 'allow' }, 'mallory'))
  const routeTheirs = await routeOutcome(permRoute(id), id)
  t.assert.deepStrictEqual(routeTheirs, await routeOutcome(permRoute(missingId), missingId), 'route POST permission')
  t.assert.strictEqual(routeTheirs.status, 404, JSON.stringify(routeTheirs))
  await assertLikeMissing(t, manager, routes, id, 'pending permission request')
  t.assert.strictEqual(pending.signal.aborted, false, "alice's request is still pending")
  t.assert.strictEqual(fs.existsSync(file), false, 'nothing ran on a stranger\'s answer')
  // Alice's own answer still settles it.
  await manager.respondToPermission({ sessionId: id, userId: 'alice', requestId: pending.requestId, behavior: 'allow' })
  const r = await run
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'alice\n')
  t.assert.strictEqual((await manager.listTasks(id, 'alice')).length, 3, 'three tasks of hers, none of mallory\'s')
})
