// Branching at a message with the real CLI against the stand-in: fork at the first, a middle and
// the last message (the model sees exactly the history up to it), rewind then a task (the live
// branch, the meter, every task kept), and bad input (another session's message, an unknown id, a
// message inside a tool call, the CLI's --resume-drops-turn refusal). Every backend.
import { test, after } from 'node:test'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { addon, makeManager, rejectsWith, startStandInServer, testBackends, backendTag, filesUnder } from './helpers.mjs'

const require = createRequire(import.meta.url)
const server = await startStandInServer()
after(() => server.close())

/** The user texts of the last model call, as the model saw them (system reminders left out). */
function userTexts() {
  const calls = server.requests.filter((r) => r.path === '/v1/messages' && Array.isArray(r.body?.messages))
  const body = calls.at(-1).body
  const texts = []
  for (const m of body.messages.filter((m) => m.role === 'user')) {
    const blocks = typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content
    for (const b of blocks) if (b.type === 'text' && !b.text.startsWith('<system-reminder>')) texts.push(b.text.trim())
  }
  return texts
}

async function threeTurns(manager, projectId = 'p') {
  const base = { projectId, userId: 'u' }
  const first = await manager.executeTask({ ...base, prompt: 'one' })
  const sessionId = first.sessionId
  const results = [first]
  for (const prompt of ['two', 'three']) results.push(await manager.executeTask({ ...base, sessionId, prompt }))
  for (const r of results) if (!r.success) throw new Error(`task failed: ${JSON.stringify(r.error)}`)
  const h = await manager.getMessages(sessionId, 'u')
  return { sessionId, results, h }
}

for (const backend of testBackends()) {
  test(`fork at the first, a middle and the last message: the model sees exactly the history up to it${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ server, backend })
    const { sessionId, h } = await threeTurns(manager)
    t.assert.deepStrictEqual(
      h.messages.map((m) => `${m.kind}:${m.text}`),
      ['prompt:one', 'assistant:Echo #1: one', 'prompt:two', 'assistant:Echo #2: two', 'prompt:three', 'assistant:Echo #3: three'],
    )
    const [u1, , , a2, , a3] = h.messages.map((m) => m.uuid)

    // At the first message (a prompt): the next prompt follows it.
    const f1 = await manager.fork({ sessionId, userId: 'u', atMessageId: u1, title: 'from the start' })
    t.assert.strictEqual(f1.parentId, sessionId)
    t.assert.strictEqual(f1.title, 'from the start')
    const r1 = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId: f1.id, prompt: 'after first' })
    t.assert.ok(r1.success, JSON.stringify(r1.error))
    t.assert.deepStrictEqual(userTexts(), ['one', 'after first'])

    // In the middle, in one step.
    const r2 = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, atMessageId: a2, prompt: 'after middle' })
    t.assert.ok(r2.success, JSON.stringify(r2.error))
    t.assert.notStrictEqual(r2.sessionId, sessionId)
    t.assert.strictEqual(r2.parentSessionId, sessionId)
    t.assert.deepStrictEqual(userTexts(), ['one', 'two', 'after middle'])
    t.assert.strictEqual(r2.result, 'Echo #3: after middle')

    // At the last message: as a fork at the end.
    const f3 = await manager.fork({ sessionId, userId: 'u', atMessageId: a3 })
    const r3 = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId: f3.id, prompt: 'after last' })
    t.assert.ok(r3.success, JSON.stringify(r3.error))
    t.assert.deepStrictEqual(userTexts(), ['one', 'two', 'three', 'after last'])

    // The parent is unchanged and lists its branches; each fork names its point.
    const ph = await manager.getMessages(sessionId, 'u')
    t.assert.deepStrictEqual(ph.messages.map((m) => m.uuid), h.messages.map((m) => m.uuid))
    t.assert.deepStrictEqual(
      ph.branches.map((b) => b.atMessageId).sort(),
      [u1, a2, a3].sort(),
    )
    t.assert.deepStrictEqual(ph.branches.map((b) => b.sessionId).sort(), [f1.id, r2.sessionId, f3.id].sort())
    const mh = await manager.getMessages(r2.sessionId, 'u')
    t.assert.strictEqual(mh.forkedAt, a2)
    t.assert.deepStrictEqual(mh.messages.map((m) => m.text), ['one', 'Echo #1: one', 'two', 'Echo #2: two', 'after middle', 'Echo #3: after middle'])
    // A fork's history keeps the parent's message ids up to the point.
    t.assert.deepStrictEqual(mh.messages.slice(0, 4).map((m) => m.uuid), h.messages.slice(0, 4).map((m) => m.uuid))
    await manager.close()
  })

  test(`rewind, then a task: the live branch only, the meter of the new branch, every task kept${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ server, backend })
    const { sessionId, results, h } = await threeTurns(manager)
    const a1 = h.messages[1].uuid
    const rw = await manager.rewind({ sessionId, userId: 'u', toMessageId: a1 })
    t.assert.strictEqual(rw.toMessageId, a1)
    t.assert.strictEqual(rw.droppedMessages, 4)
    // The meter re-derived at the point: what the API reported for the first turn's call.
    t.assert.strictEqual(rw.contextInfo.estimatedTokens, results[0].contextInfo.estimatedTokens)
    t.assert.strictEqual((await manager.getSessionContext(sessionId, 'u')).estimatedTokens, results[0].contextInfo.estimatedTokens)
    const pending = await manager.getMessages(sessionId, 'u')
    t.assert.deepStrictEqual(pending.messages.map((m) => m.uuid), h.messages.slice(0, 2).map((m) => m.uuid), 'cut at the point before the next task')

    const r4 = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'four' })
    t.assert.ok(r4.success, JSON.stringify(r4.error))
    t.assert.strictEqual(r4.sessionId, sessionId)
    t.assert.deepStrictEqual(userTexts(), ['one', 'four'])
    const live = await manager.getMessages(sessionId, 'u')
    t.assert.deepStrictEqual(live.messages.map((m) => m.text), ['one', 'Echo #1: one', 'four', 'Echo #2: four'])
    t.assert.strictEqual(live.messages[2].parentUuid !== undefined, true)
    const ctx = await manager.getSessionContext(sessionId, 'u')
    t.assert.strictEqual(ctx.estimatedTokens, r4.contextInfo.estimatedTokens, 'the meter is what the API reported for the new branch')
    t.assert.strictEqual(ctx.source, 'api')
    // The model's context on the new branch is smaller than at the end of the old one.
    t.assert.ok(r4.contextInfo.estimatedTokens < results[2].contextInfo.estimatedTokens)

    const tasks = await manager.listTasks(sessionId, 'u')
    t.assert.strictEqual(tasks.length, 4, 'every task is kept')
    const session = await manager.getSession(sessionId, 'u')
    const spent = [...results, r4].reduce((s, r) => s + r.cost, 0)
    t.assert.ok(Math.abs(session.totalCostUsd - spent) < 1e-9, `costs stay spent: ${session.totalCostUsd} vs ${spent}`)
    t.assert.ok(r4.cost > 0 && r4.cost < results[2].cost * 2, `the rewound task is charged its own cost only: ${r4.cost}`)

    // The next task continues the new branch; a rewind of exactly one turn (regenerate) runs with
    // the CLI's guard and succeeds.
    const r5 = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'five' })
    t.assert.strictEqual(r5.result, 'Echo #3: five')
    const h5 = await manager.getMessages(sessionId, 'u')
    await manager.rewind({ sessionId, userId: 'u', toMessageId: h5.messages[3].uuid })
    const r6 = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'five again' })
    t.assert.ok(r6.success, JSON.stringify(r6.error))
    t.assert.deepStrictEqual(userTexts(), ['one', 'four', 'five again'])
    t.assert.strictEqual((await manager.listTasks(sessionId, 'u')).length, 6)
    await manager.close()
  })

  test(`branching: bad input${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ server, backend })
    const { sessionId, h } = await threeTurns(manager)
    const other = await threeTurns(manager, 'p2')
    const foreign = other.h.messages[1].uuid
    const unknown = '0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b'
    // A message of another session answers as an unknown one (no oracle); another user's session
    // as a missing one.
    for (const [label, id] of [['another session', foreign], ['unknown', unknown]]) {
      await rejectsWith(t, manager.rewind({ sessionId, userId: 'u', toMessageId: id }), 'MESSAGE_NOT_FOUND', undefined, `rewind ${label}`)
      await rejectsWith(t, manager.fork({ sessionId, userId: 'u', atMessageId: id }), 'MESSAGE_NOT_FOUND', undefined, `fork ${label}`)
      await rejectsWith(t, manager.executeTask({ projectId: 'p', userId: 'u', sessionId, atMessageId: id, prompt: 'x' }), 'MESSAGE_NOT_FOUND', undefined, `executeTask ${label}`)
    }
    await rejectsWith(t, manager.rewind({ sessionId, userId: 'mallory', toMessageId: h.messages[1].uuid }), 'SESSION_NOT_FOUND')
    await rejectsWith(t, manager.fork({ sessionId, userId: 'mallory', atMessageId: h.messages[1].uuid }), 'SESSION_NOT_FOUND')
    await rejectsWith(t, manager.rewind({ sessionId, userId: 'u', toMessageId: 'not-a-uuid' }), 'INVALID_ARGUMENT')
    await rejectsWith(t, manager.executeTask({ projectId: 'p', userId: 'u', atMessageId: h.messages[1].uuid, prompt: 'x' }), 'INVALID_ARGUMENT', /atMessageId/)
    t.assert.strictEqual((await manager.listSessions({ userId: 'u' })).length, 2, 'nothing was created')

    // A message inside a tool call: INVALID_ARGUMENT naming the nearest point before it.
    server.enqueue({ toolUse: { name: 'Bash', input: { command: 'echo hi' } } }, { text: 'ran it' })
    const tool = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'run a tool', permissionMode: 'acceptEdits', allowedTools: ['Bash(echo:*)'] })
    t.assert.ok(tool.success, JSON.stringify(tool.error))
    const th = await manager.getMessages(sessionId, 'u')
    const call = th.messages.find((m) => m.blocks.some((b) => b.type === 'toolUse'))
    const results = th.messages.find((m) => m.kind === 'toolResults')
    const prompt = th.messages.find((m) => m.text === 'run a tool')
    for (const m of [call, results]) {
      await rejectsWith(t, manager.rewind({ sessionId, userId: 'u', toMessageId: m.uuid }), 'INVALID_ARGUMENT', new RegExp(`nearest before it is ${prompt.uuid}`))
    }
    t.assert.strictEqual((await manager.getMessages(sessionId, 'u')).total, th.total, 'nothing changed')
    await manager.close()
  })
}

test('the CLI refuses a rewind the conversation outgrew (--resume-drops-turn): REWIND_REJECTED, the session intact', async (t) => {
  server.reset()
  const { manager, configDir } = makeManager({ server })
  const { sessionId, h } = await threeTurns(manager)
  // Rewind one turn (the CLI is told that exactly that turn is dropped)...
  await manager.rewind({ sessionId, userId: 'u', toMessageId: h.messages[3].uuid })
  // ...then the transcript grows behind the store's back (another writer): the rewind would drop more.
  const file = filesUnder(configDir).find((f) => f.endsWith(`${sessionId}.jsonl`))
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const last = lines.findLast((l) => l.type === 'assistant')
  const sneak = { ...lines.findLast((l) => l.type === 'user'), uuid: crypto.randomUUID(), parentUuid: last.uuid, message: { role: 'user', content: 'sneaky' }, promptId: undefined }
  const reply = { ...last, uuid: crypto.randomUUID(), parentUuid: sneak.uuid, message: { ...last.message, id: 'msg_sneaky', content: [{ type: 'text', text: 'sneaky answer' }] } }
  fs.appendFileSync(file, `${JSON.stringify(sneak)}\n${JSON.stringify(reply)}\n`)
  const calls = server.requests.length
  const r = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'after the rewind' })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'REWIND_REJECTED', JSON.stringify(r.error))
  t.assert.match(r.error.message, /Resume rejected by --resume-drops-turn/)
  t.assert.strictEqual(server.requests.filter((q, i) => i >= calls && q.path === '/v1/messages').length, 0, 'no model call')
  // Intact: the rewind was withdrawn, the conversation is the transcript's, the next task runs on it.
  const after = await manager.getMessages(sessionId, 'u')
  t.assert.deepStrictEqual(after.messages.map((m) => m.text).slice(-2), ['sneaky', 'sneaky answer'])
  const next = await manager.executeTask({ projectId: 'p', userId: 'u', sessionId, prompt: 'next' })
  t.assert.ok(next.success, JSON.stringify(next.error))
  t.assert.deepStrictEqual(userTexts(), ['one', 'two', 'three', 'sneaky', 'next'])
  await manager.close()
})

test('next routes: fork at a message, rewind, a task with atMessageId; MESSAGE_NOT_FOUND is a 404', async (t) => {
  server.reset()
  const { createClaudeRoutes } = require('../next/index.js')
  const { manager } = makeManager({ server })
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  const post = (route, body, user = 'u') =>
    routes[route].POST(new Request(`http://localhost/api/claude/${route}`, { method: 'POST', headers: { 'x-user': user, 'content-type': 'application/json' }, body: JSON.stringify(body) }))
  const json = async (res, status) => {
    const body = await res.json()
    t.assert.strictEqual(res.status, status, JSON.stringify(body))
    return body
  }
  const { sessionId, h } = await threeTurns(manager)
  const a1 = h.messages[1].uuid
  const { session: fork } = await json(await post('session', { action: 'fork', sessionId, atMessageId: a1, title: 'B' }), 200)
  t.assert.strictEqual(fork.parentId, sessionId)
  const ran = await json(await post('task', { projectId: 'p', sessionId, atMessageId: a1, prompt: 'via route' }), 200)
  t.assert.strictEqual(ran.result, 'Echo #2: via route')
  const page = await json(await post('session', { action: 'messages', sessionId }), 200)
  t.assert.deepStrictEqual(page.branches.map((b) => b.atMessageId), [a1, a1])
  const rw = await json(await post('session', { action: 'rewind', sessionId, toMessageId: a1 }), 200)
  t.assert.strictEqual(rw.droppedMessages, 4)
  t.assert.strictEqual(rw.session.id, sessionId)
  t.assert.strictEqual(rw.session.workingDirectory, undefined, 'the session is the public view')
  const err = await json(await post('session', { action: 'rewind', sessionId, toMessageId: '0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b' }), 404)
  t.assert.strictEqual(err.error.code, 'MESSAGE_NOT_FOUND')
  t.assert.strictEqual((await json(await post('session', { action: 'rewind', sessionId, toMessageId: a1 }, 'mallory'), 404)).error.code, 'SESSION_NOT_FOUND')
  t.assert.strictEqual((await json(await post('session', { action: 'rewind', sessionId, toMessageId: a1, extra: 1 }), 400)).error.code, 'INVALID_ARGUMENT')
  await manager.close()
})

test('rewind with files: the working directory as it was before the first turn, a file the agent deleted with Bash included; a dry run changes nothing and lists the same changes', async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server })
  fs.writeFileSync(path.join(work, 'b.txt'), 'b original\n')
  const dir = () => Object.fromEntries(fs.readdirSync(work).filter((f) => !f.startsWith('.')).sort().map((f) => [f, fs.readFileSync(path.join(work, f), 'utf8')]))
  const before = dir()
  const base = { projectId: 'p', userId: 'u', permissionMode: 'acceptEdits', allowedTools: ['Bash(rm:*)'] }
  server.enqueue(
    { toolUse: { name: 'Write', input: { file_path: `${work}/a.txt`, content: 'a v1\n' } } },
    { toolUse: { name: 'Edit', input: { file_path: `${work}/b.txt`, old_string: 'b original', new_string: 'b edited' } } },
    { text: 'turn one done' },
  )
  const one = await manager.executeTask({ ...base, prompt: 'write a, edit b' })
  t.assert.ok(one.success, JSON.stringify(one.error))
  const sessionId = one.sessionId
  server.enqueue(
    { toolUse: { name: 'Read', input: { file_path: `${work}/a.txt` } } },
    { toolUse: { name: 'Edit', input: { file_path: `${work}/a.txt`, old_string: 'a v1', new_string: 'a v2' } } },
    { toolUse: { name: 'Write', input: { file_path: `${work}/c.txt`, content: 'c new\n' } } },
    // b.txt, edited (so backed up) in the first turn, deleted with Bash in the second.
    { toolUse: { name: 'Bash', input: { command: `rm ${work}/b.txt` } } },
    { text: 'turn two done' },
  )
  const two = await manager.executeTask({ ...base, sessionId, prompt: 'edit a, write c, delete b' })
  t.assert.ok(two.success, JSON.stringify(two.error))
  const edited = dir()
  t.assert.deepStrictEqual(edited, { 'a.txt': 'a v2\n', 'c.txt': 'c new\n' }, 'control: the agent changed the folder and deleted b')
  const h = await manager.getMessages(sessionId, 'u')
  const first = h.messages[0]
  t.assert.strictEqual(first.text, 'write a, edit b')

  const dry = await manager.rewind({ sessionId, userId: 'u', toMessageId: first.uuid, files: 'dryRun' })
  t.assert.deepStrictEqual([...dry.files.changed].sort(), ['a.txt', 'b.txt', 'c.txt'])
  t.assert.strictEqual(dry.files.restored, false)
  t.assert.deepStrictEqual(dir(), edited, 'a dry run changes no file')
  t.assert.strictEqual((await manager.getMessages(sessionId, 'u')).total, h.total, 'nor the conversation')

  const done = await manager.rewind({ sessionId, userId: 'u', toMessageId: first.uuid, files: true })
  t.assert.strictEqual(done.files.restored, true)
  t.assert.deepStrictEqual([...done.files.changed].sort(), [...dry.files.changed].sort(), 'the dry run listed the same changes')
  t.assert.deepStrictEqual(dir(), before, 'the folder is as it was: b restored (deleted, then brought back), the files the agent created gone')
  t.assert.deepStrictEqual((await manager.getMessages(sessionId, 'u')).messages.map((m) => m.uuid), [first.uuid])
  await rejectsWith(t, manager.rewind({ sessionId, userId: 'u', toMessageId: first.uuid, files: 'yes' }), 'INVALID_ARGUMENT', /files/)
  await manager.close()
})

test('a CLI too old to branch answers CLI_UNSUPPORTED before anything is recorded or spawned', async (t) => {
  server.reset()
  const real = path.resolve('node_modules/@anthropic-ai/claude-code/bin/claude.exe')
  if (!fs.existsSync(real)) return t.skip(`no CLI at ${real}`)
  const { manager, dir, options } = makeManager({ server })
  const { sessionId, h } = await threeTurns(manager)
  const old = path.join(dir, 'old-claude')
  fs.writeFileSync(old, `#!/bin/sh\nif [ "$1" = --version ]; then echo '2.1.300 (Claude Code)'; exit 0; fi\nexec '${real}' "$@"\n`, { mode: 0o755 })
  const aged = new addon.SessionManager({ ...options, claudePath: old, sandbox: 'none' })
  const calls = server.requests.length
  const at = h.messages[1].uuid
  await rejectsWith(t, aged.rewind({ sessionId, userId: 'u', toMessageId: at }), 'CLI_UNSUPPORTED')
  await rejectsWith(t, aged.rewind({ sessionId, userId: 'u', toMessageId: at, files: true }), 'CLI_UNSUPPORTED')
  await rejectsWith(t, aged.fork({ sessionId, userId: 'u', atMessageId: at }), 'CLI_UNSUPPORTED')
  await rejectsWith(t, aged.executeTask({ projectId: 'p', userId: 'u', sessionId, atMessageId: at, prompt: 'x' }), 'CLI_UNSUPPORTED')
  t.assert.strictEqual(server.requests.length, calls, 'nothing reached the API')
  t.assert.strictEqual((await manager.listSessions({ userId: 'u' })).length, 1, 'no fork was recorded')
  t.assert.strictEqual((await manager.getMessages(sessionId, 'u')).total, 6, 'no rewind was recorded')
  await aged.close()
  await manager.close()
})
