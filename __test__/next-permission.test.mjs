// claude-session-manager/next: permission prompts. The stream route (with `permissionPrompts`)
// emits `permission_request`; POST /permission answers it; the real CLI against the stand-in.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { execFile } from 'node:child_process'
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
  // (a well-formed id of no session of hers; a malformed one is a 400, as everywhere in the API)
  const wrong = await routes.permission.POST(post('permission', { sessionId: crypto.randomUUID(), requestId: asked.requestId, behavior: 'allow' }))
  t.assert.strictEqual(wrong.status, 404)
  const malformed = await routes.permission.POST(post('permission', { sessionId: 'not-it', requestId: asked.requestId, behavior: 'allow' }))
  t.assert.strictEqual(malformed.status, 400)
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

/**
 * POSTs `requests` (`[{ body, user }]`, in order) to `routes.permission` of another server: a
 * separate Node process with its own routes over its own manager on the same database (`options`),
 * so that nothing is shared in memory. Resolves with each `{ status, body }`.
 */
function permissionPostsElsewhere(options, requests) {
  const script = `
    const { createClaudeRoutes } = require(${JSON.stringify(path.resolve('next/index.js'))});
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
    const manager = new SessionManager(${JSON.stringify(options)});
    const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, permissionPrompts: true, onError: null });
    (async () => {
      const out = [];
      for (const { body, user } of ${JSON.stringify(requests)}) {
        const res = await routes.permission.POST(new Request('http://localhost/api/claude/permission', {
          method: 'POST', headers: { 'x-user': user, 'content-type': 'application/json' }, body: JSON.stringify(body) }));
        out.push({ status: res.status, body: await res.json() });
      }
      await manager.close();
      process.stdout.write(JSON.stringify(out));
    })();`
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', script], { timeout: 60_000 }, (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(JSON.parse(stdout))))
  })
}

test('next permission: an answer POSTed to another server reaches the one running the stream, through the store (no sticky sessions)', async (t) => {
  server.reset()
  const a = setup(t)
  const file = path.join(a.work, 'through-b.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: 'via B\n' } } }, { text: 'Wrote it.' })
  const sse = sseReader(await a.routes.stream.POST(post('stream', { prompt: 'write it', projectId: 'p' })))
  const asked = (await sse.next((e) => e.event === 'permission_request')).data
  const answer = { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'allow' }
  const [other, unknown, ok, again] = await permissionPostsElsewhere(a.options, [
    // Another user's answer is the same 404 as on this server, and settles nothing.
    { body: answer, user: 'mallory' },
    { body: { ...answer, requestId: 'no-such-request' }, user: 'alice' },
    { body: answer, user: 'alice' },
    // Answered once: a second answer finds nothing.
    { body: { ...answer, behavior: 'deny' }, user: 'alice' },
  ])
  t.assert.deepStrictEqual([other.status, other.body.error.code], [404, 'PERMISSION_REQUEST_NOT_FOUND'])
  t.assert.deepStrictEqual([unknown.status, unknown.body.error.code], [404, 'PERMISSION_REQUEST_NOT_FOUND'])
  t.assert.deepStrictEqual([ok.status, ok.body], [200, { ok: true, requestId: asked.requestId, behavior: 'allow' }])
  t.assert.strictEqual(again.status, 404)
  // This server's stream (from the event log): the request was settled, allowed, and the tool ran.
  const settled = (await sse.next((e) => e.event === 'permission_resolved')).data
  t.assert.deepStrictEqual(settled, { requestId: asked.requestId, sessionId: asked.sessionId, behavior: 'allow' })
  const result = (await sse.next((e) => e.event === 'result')).data
  t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
  t.assert.deepStrictEqual(result.permissionDenials, [])
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'via B\n')
})

test('next permission: remember "session" allows the same tool in the same folder of the same session without asking, and nothing more', async (t) => {
  server.reset()
  const { routes, work } = setup(t)
  const dirA = path.join(work, 'a')
  const dirB = path.join(work, 'b')
  fs.mkdirSync(dirA)
  fs.mkdirSync(dirB)
  const write = (file, prompt, sessionId, user = 'alice') => {
    server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: `${path.basename(file)}\n` } } }, { text: 'Wrote it.' })
    return routes.stream.POST(post('stream', { prompt, projectId: 'p', ...(sessionId ? { sessionId } : {}) }, user)).then(sseReader)
  }
  const finish = async (sse) => {
    const result = (await sse.next((e) => e.event === 'result')).data
    t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
    return { result, asked: sse.seen.filter((e) => e.event === 'permission_request').map((e) => e.data) }
  }

  // The first Write to A asks; another user's "always" is refused like a missing session.
  const first = await write(path.join(dirA, 'one.txt'), 'write one')
  const asked = (await first.next((e) => e.event === 'permission_request')).data
  const answer = { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'allow', remember: 'session' }
  const mallory = await routes.permission.POST(post('permission', answer, 'mallory'))
  t.assert.strictEqual(mallory.status, 404)
  t.assert.strictEqual((await mallory.json()).error.code, 'PERMISSION_REQUEST_NOT_FOUND')
  // "always" goes with allow only, and is "session" or nothing.
  for (const bad of [{ ...answer, behavior: 'deny' }, { ...answer, remember: 'forever' }, { ...answer, remember: true }]) {
    const r = await routes.permission.POST(post('permission', bad))
    t.assert.strictEqual(r.status, 400, JSON.stringify(bad))
  }
  const ok = await routes.permission.POST(post('permission', answer))
  t.assert.strictEqual(ok.status, 200, await ok.clone().text())
  await finish(first)
  const sessionId = asked.sessionId

  // Another Write to A in the same session, in a later task: no prompt, the file is written.
  const again = await finish(await write(path.join(dirA, 'two.txt'), 'write two', sessionId))
  t.assert.deepStrictEqual(again.asked, [], 'no second prompt for the same folder')
  t.assert.deepStrictEqual(again.result.permissionDenials, [])
  t.assert.strictEqual(fs.readFileSync(path.join(dirA, 'two.txt'), 'utf8'), 'two.txt\n')

  // A Write to another folder still asks (denied here: not written).
  const other = await write(path.join(dirB, 'three.txt'), 'write three', sessionId)
  const askedB = (await other.next((e) => e.event === 'permission_request')).data
  t.assert.strictEqual(askedB.input.file_path, path.join(dirB, 'three.txt'))
  t.assert.strictEqual((await routes.permission.POST(post('permission', { sessionId, requestId: askedB.requestId, behavior: 'deny' }))).status, 200)
  await other.next((e) => e.event === 'result')
  t.assert.strictEqual(fs.existsSync(path.join(dirB, 'three.txt')), false)

  // Another session of the same user, writing to A: asks.
  const fresh = await write(path.join(dirA, 'four.txt'), 'write four')
  const askedFresh = (await fresh.next((e) => e.event === 'permission_request')).data
  t.assert.notStrictEqual(askedFresh.sessionId, sessionId)
  t.assert.strictEqual((await routes.permission.POST(post('permission', { sessionId: askedFresh.sessionId, requestId: askedFresh.requestId, behavior: 'deny' }))).status, 200)
  await fresh.next((e) => e.event === 'result')
  t.assert.strictEqual(fs.existsSync(path.join(dirA, 'four.txt')), false)
})

test('next permission: remember "session" given through another server holds on the server running the session', async (t) => {
  server.reset()
  const a = setup(t)
  const dir = path.join(a.work, 'via-b')
  fs.mkdirSync(dir)
  const write = async (name, sessionId) => {
    server.enqueue({ toolUse: { name: 'Write', input: { file_path: path.join(dir, name), content: `${name}\n` } } }, { text: 'Wrote it.' })
    return sseReader(await a.routes.stream.POST(post('stream', { prompt: `write ${name}`, projectId: 'p', ...(sessionId ? { sessionId } : {}) })))
  }
  const first = await write('one.txt')
  const asked = (await first.next((e) => e.event === 'permission_request')).data
  const [ok] = await permissionPostsElsewhere(a.options, [{ body: { sessionId: asked.sessionId, requestId: asked.requestId, behavior: 'allow', remember: 'session' }, user: 'alice' }])
  t.assert.strictEqual(ok.status, 200, JSON.stringify(ok.body))
  t.assert.strictEqual((await first.next((e) => e.event === 'result')).data.success, true)
  const second = await write('two.txt', asked.sessionId)
  const result = (await second.next((e) => e.event === 'result')).data
  t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
  t.assert.deepStrictEqual(second.seen.filter((e) => e.event === 'permission_request'), [], 'no second prompt')
  t.assert.strictEqual(fs.readFileSync(path.join(dir, 'two.txt'), 'utf8'), 'two.txt\n')
})
