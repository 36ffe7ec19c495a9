// claude-session-manager/next: steering (POST /message) and the context breakdown (GET /context),
// with the real CLI against the stand-in. A task waiting for the user's permission is what keeps it
// running while the message is sent, so nothing here depends on timing.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { makeManager, sseReader, startStandInServer, testBackends, backendTag } from './helpers.mjs'

const require = createRequire(import.meta.url)
const { createClaudeRoutes } = require('../next/index.js')

const BASE = 'http://localhost/api/claude'
let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const headers = (user) => ({ ...(user ? { 'x-user': user } : {}), 'content-type': 'application/json' })
const post = (route, body, user = 'alice') => new Request(`${BASE}/${route}`, { method: 'POST', headers: headers(user), body: typeof body === 'string' ? body : JSON.stringify(body) })
const get = (route, user = 'alice') => new Request(`${BASE}/${route}`, { headers: headers(user) })

function setup(t, { routeOptions = {}, ...extra } = {}) {
  const made = makeManager({ server, warmIdleMs: 600_000, ...extra })
  t.after(() => made.manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager: made.manager, permissionPrompts: true, onError: null, ...routeOptions })
  return { ...made, routes }
}

async function fails(t, res, status, code) {
  const body = await res.json()
  t.assert.strictEqual(res.status, status, JSON.stringify(body))
  t.assert.strictEqual(body.error.code, code, JSON.stringify(body))
  return body.error
}

/** What the CLI puts in the next model request for a message the user sent mid-turn. */
const MID_TURN = /The user sent a new message while you were working:\n([\s\S]*?)\n\n/

/** The stand-in's answer after the Write's result: names every message sent mid-turn it was given. */
function afterTool(req) {
  const noted = req.body.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [{ type: 'text', text: m.content }])).map((b) => b && b.type === 'text' && MID_TURN.exec(b.text)?.[1]).filter(Boolean)
  return { text: noted.length ? `Done. You also said: ${noted.join(' / ')}` : 'Done.' }
}

for (const backend of testBackends()) {
  test(`next message: a message sent while a streamed task runs reaches the model in that task; bad bodies, other users and no running task are refused${backendTag(backend)}`, async (t) => {
    server.reset()
    const { routes, work } = setup(t, { backend, routeOptions: { maxBodyBytes: 4096 } })
    const file = path.join(work, 'steered.txt')
    server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: 'x\n' } } }, afterTool)
    const sse = sseReader(await routes.stream.POST(post('stream', { prompt: 'write it', projectId: 'p' })))
    // The task now waits for the user's decision: it is running until the answer.
    const asked = (await sse.next((e) => e.event === 'permission_request')).data
    const sessionId = asked.sessionId

    await fails(t, await routes.message.POST(post('message', { sessionId, prompt: 'x' }, null)), 401, 'UNAUTHORIZED')
    // Someone else's session looks missing.
    await fails(t, await routes.message.POST(post('message', { sessionId, prompt: 'from mallory' }, 'mallory')), 404, 'SESSION_NOT_FOUND')
    // Bad bodies: 400 with the code, before the manager is asked.
    for (const body of [
      '{"sessionId": ',
      [sessionId, 'x'],
      { sessionId, prompt: 'x', userId: 'alice' },
      { sessionId, prompt: 'x', model: 'opus' },
      { sessionId },
      { sessionId, prompt: '   ' },
      { sessionId, prompt: 42 },
      { prompt: 'x' },
      { sessionId: 7, prompt: 'x' },
    ]) {
      await fails(t, await routes.message.POST(post('message', body)), 400, 'INVALID_ARGUMENT')
    }
    const form = new Request(`${BASE}/message`, { method: 'POST', headers: { 'x-user': 'alice', 'content-type': 'application/x-www-form-urlencoded' }, body: 'sessionId=x&prompt=y' })
    await fails(t, await routes.message.POST(form), 400, 'INVALID_ARGUMENT')
    await fails(t, await routes.message.POST(post('message', { sessionId, prompt: 'y'.repeat(5000) })), 413, 'PAYLOAD_TOO_LARGE')
    // The manager's own rule: a slash command is not a message.
    await fails(t, await routes.message.POST(post('message', { sessionId, prompt: '/compact' })), 400, 'INVALID_ARGUMENT')

    const sent = await routes.message.POST(post('message', { sessionId, prompt: 'and call it steered' }))
    t.assert.strictEqual(sent.status, 200)
    t.assert.deepStrictEqual(await sent.json(), { ok: true, sessionId })
    // While the task runs its CLI answers for the context breakdown, on either store.
    const live = await routes.context.GET(get(`context?sessionId=${sessionId}`))
    t.assert.strictEqual(live.status, 200)
    t.assert.strictEqual((await live.json()).contextUsage.source, 'cli')

    const ok = await routes.permission.POST(post('permission', { sessionId, requestId: asked.requestId, behavior: 'allow' }))
    t.assert.strictEqual(ok.status, 200)
    const result = (await sse.next((e) => e.event === 'result')).data
    t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
    // The model saw the message in this task (the stand-in names what it was sent mid-turn).
    t.assert.strictEqual(result.result, 'Done. You also said: and call it steered')
    t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'x\n')
    t.assert.ok(!JSON.stringify(server.requests).includes('from mallory'), "another user's message never reached the model")

    // No task runs any more: a clear 400 that says so.
    const late = await fails(t, await routes.message.POST(post('message', { sessionId, prompt: 'too late' })), 400, 'INVALID_ARGUMENT')
    t.assert.match(late.message, /no task is running/)
    // After the task the session's CLI is kept warm (on both stores) and answers.
    const afterTask = (await (await routes.context.GET(get(`context?sessionId=${sessionId}`))).json()).contextUsage
    t.assert.strictEqual(afterTask.source, 'cli', JSON.stringify(afterTask))
    t.assert.ok(afterTask.total > 0 && afterTask.window > 0, JSON.stringify(afterTask))
  })
}

test("next context: the CLI's own categories without the server's paths (which the manager's answer has); exposeServerDetails adds them", async (t) => {
  server.reset()
  // Project settings on, so the CLI reads a memory file and an agent, which it names by path.
  const { routes, work, dir, configDir, manager } = setup(t, { settingSources: ['user', 'project'] })
  fs.writeFileSync(path.join(work, 'CLAUDE.md'), 'Project rule: answer briefly.\n')
  fs.mkdirSync(path.join(work, '.claude', 'agents'), { recursive: true })
  fs.writeFileSync(path.join(work, '.claude', 'agents', 'helper.md'), '---\nname: helper\ndescription: helps\n---\nHelp.\n')
  const r = await (await routes.task.POST(post('task', { prompt: 'hello', projectId: 'p' }))).json()
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))

  const raw = await manager.getContextUsage(r.sessionId, 'alice')
  t.assert.strictEqual(raw.source, 'cli')
  t.assert.ok(JSON.stringify(raw).includes(work), "the manager's answer names the working directory (else this test proves nothing)")

  const res = await routes.context.GET(get(`context?sessionId=${r.sessionId}`))
  t.assert.strictEqual(res.status, 200)
  const text = await res.text()
  for (const secret of [work, configDir, dir, manager.info().stateDirectory]) t.assert.ok(!text.includes(secret), `the route's answer names ${secret}`)
  const { contextUsage } = JSON.parse(text)
  t.assert.deepStrictEqual(Object.keys(contextUsage).sort(), ['categories', 'percentage', 'source', 'total', 'window'])
  t.assert.strictEqual(contextUsage.source, 'cli')
  // The CLI's categories, in its order and with its numbers.
  t.assert.deepStrictEqual(
    contextUsage.categories.map((c) => [c.id, c.name, c.tokens, c.kind]),
    raw.usage.categories.map((c) => [c.id, c.name, c.tokens, c.kind]),
  )
  const byId = Object.fromEntries(contextUsage.categories.map((c) => [c.id, c]))
  for (const id of ['system_prompt', 'system_tools', 'memory_files', 'free_space']) t.assert.ok(byId[id]?.tokens > 0, `${id}: ${JSON.stringify(byId[id])}`)
  t.assert.strictEqual(byId.memory_files.name, 'Memory files')
  t.assert.strictEqual(byId.free_space.kind, 'free')
  t.assert.deepStrictEqual([contextUsage.total, contextUsage.window, contextUsage.percentage], [raw.usage.totalTokens, raw.usage.maxTokens, raw.usage.percentage])
  t.assert.ok(contextUsage.total > 0 && contextUsage.window >= contextUsage.total)

  // Other users and bad queries.
  await fails(t, await routes.context.GET(get(`context?sessionId=${r.sessionId}`, 'mallory')), 404, 'SESSION_NOT_FOUND')
  await fails(t, await routes.context.GET(get('context')), 400, 'INVALID_ARGUMENT')
  await fails(t, await routes.context.GET(get(`context?sessionId=${r.sessionId}`, null)), 401, 'UNAUTHORIZED')

  // The server may choose to show its details.
  const exposed = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null, exposeServerDetails: true })
  const full = (await (await exposed.context.GET(get(`context?sessionId=${r.sessionId}`))).json()).contextUsage
  t.assert.ok(JSON.stringify(full.raw).includes(work))
  t.assert.deepStrictEqual(full.categories, contextUsage.categories)
})

test('next context: without a running CLI the stored meter answers, with no categories', async (t) => {
  server.reset()
  const { routes } = setup(t, { warmIdleMs: 0, routeOptions: { permissionPrompts: false } })
  const r = await (await routes.task.POST(post('task', { prompt: 'hello', projectId: 'p' }))).json()
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const { contextUsage } = await (await routes.context.GET(get(`context?sessionId=${r.sessionId}`))).json()
  t.assert.deepStrictEqual(contextUsage, {
    source: 'store',
    categories: [],
    total: r.contextInfo.estimatedTokens,
    window: r.contextInfo.maxTokens,
    percentage: r.contextInfo.usagePercentage,
  })
  t.assert.ok(contextUsage.total > 0)
})
