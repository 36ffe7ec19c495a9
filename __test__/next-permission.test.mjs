// claude-session-manager/next: permission prompts. The stream route (with `permissionPrompts`)
// emits `permission_request`; POST /permission answers it; the real CLI against the stand-in.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { makeManager, sseReader, startStandInServer } from './helpers.mjs'

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

function post(route, body, user = 'alice') {
  return new Request(`${BASE}/${route}`, { method: 'POST', headers: { 'x-user': user, 'content-type': 'application/json' }, body: JSON.stringify(body) })
}

function setup(t, extra = {}) {
  const made = makeManager({ server, warmIdleMs: 600_000, ...extra })
  t.after(() => made.manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager: made.manager, permissionPrompts: true, onError: null })
  return { ...made, routes }
}

test('next permission: the stream emits permission_request; only its user can answer it; allow runs the tool', async (t) => {
  server.reset()
  const { routes, work } = setup(t)
  const file = path.join(work, 'approved.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: 'approved\n' } } }, { text: 'Wrote it.' })
  const res = await routes.stream.POST(post('stream', { prompt: 'write it', projectId: 'p' }))
  t.assert.strictEqual(res.status, 200)
  const sse = sseReader(res)
  const asked = (await sse.next((e) => e.event === 'permission_request')).data
  t.assert.strictEqual(asked.toolName, 'Write')
  t.assert.strictEqual(asked.input.file_path, file)
  t.assert.strictEqual(typeof asked.requestId, 'string')
  const started = sse.seen.find((e) => e.data.type === 'task_started').data
  t.assert.strictEqual(asked.sessionId, started.sessionId)
  // Another user, or the wrong session, cannot see or answer it.
  const other = await routes.permission.POST(post('permission', { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'allow' }, 'mallory'))
  t.assert.strictEqual(other.status, 404)
  const wrong = await routes.permission.POST(post('permission', { sessionId: 'not-it', requestId: asked.requestId, behavior: 'allow' }))
  t.assert.strictEqual(wrong.status, 404)
  // A client may not grant itself permanent permissions.
  const escalate = await routes.permission.POST(
    post('permission', { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'allow', updatedPermissions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }] }),
  )
  t.assert.strictEqual(escalate.status, 400)
  t.assert.strictEqual(fs.existsSync(file), false, 'nothing ran before the answer')
  const ok = await routes.permission.POST(post('permission', { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'allow' }))
  t.assert.strictEqual(ok.status, 200, await ok.clone().text())
  const result = (await sse.next((e) => e.event === 'result')).data
  t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'approved\n')
  // Answered once: a second answer finds nothing.
  const again = await routes.permission.POST(post('permission', { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'deny' }))
  t.assert.strictEqual(again.status, 404)
})

test('next permission: deny keeps the tool from running; an abandoned request is withdrawn after permissionTimeoutMs', async (t) => {
  server.reset()
  const { routes, work } = setup(t, { permissionTimeoutMs: 800 })
  const denied = path.join(work, 'denied.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: denied, content: 'no\n' } } }, { text: 'Could not.' })
  const sse = sseReader(await routes.stream.POST(post('stream', { prompt: 'write it', projectId: 'p' })))
  const asked = (await sse.next((e) => e.event === 'permission_request')).data
  const res = await routes.permission.POST(post('permission', { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'deny', message: 'not that file' }))
  t.assert.strictEqual(res.status, 200)
  const result = (await sse.next((e) => e.event === 'result')).data
  t.assert.strictEqual(fs.existsSync(denied), false)
  t.assert.strictEqual(result.permissionDenials.length, 1)

  const late = path.join(work, 'late.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: late, content: 'late\n' } } }, { text: 'Gave up.' })
  const sse2 = sseReader(await routes.stream.POST(post('stream', { prompt: 'write another', projectId: 'p', sessionId: asked.sessionId })))
  const asked2 = (await sse2.next((e) => e.event === 'permission_request')).data
  const withdrawn = (await sse2.next((e) => e.event === 'permission_cancelled')).data
  t.assert.strictEqual(withdrawn.requestId, asked2.requestId)
  const result2 = (await sse2.next((e) => e.event === 'result')).data
  t.assert.strictEqual(fs.existsSync(late), false)
  t.assert.strictEqual(result2.permissionDenials.length, 1)
  const tooLate = await routes.permission.POST(post('permission', { sessionId: asked2.sessionId, requestId: asked2.requestId, behavior: 'allow' }))
  t.assert.strictEqual(tooLate.status, 404)
})
