// Fourth attack round: the surfaces added with the durable event log (streamEvents,
// getRunningTask, abortTask), branching (fork / rewind / executeTask at a message) and the spend
// caps (paused sessions, error.scope), attacked as a hostile user would, with the real CLI against
// the stand-in API. R-tests are attacks that GOT THROUGH when written: R4-3 is fixed (a stream cut
// off before its final usage is charged what it streamed), R4-1 and R4-1b are fixed (a session cap
// covers the session's lineage: its forks and theirs), R4-2 is fixed (streamEvents yields events as
// a browser may see them unless asked for the server's details). H-tests are attacks that held
// (regression tests). Each test has a control showing the attack ran.
import { test, before, after } from 'node:test'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { eventually, makeManager, rejectsWith, startStandInServer } from './helpers.mjs'
import { requireSandbox, runBash } from './attack-helpers.mjs'

const { createClaudeRoutes } = createRequire(import.meta.url)('../next/index.js')

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const BIG = { input_tokens: 200_000, output_tokens: 10 } // $0.60 a call at Sonnet's list price
const collect = async (stream) => {
  const out = []
  for await (const e of stream) out.push(e)
  return out
}

// ---------------------------------------------------------------------------------------------
// Attacks that got through when written
// ---------------------------------------------------------------------------------------------

test('R4-1. a session paused by its session cap does not go on spending through fork or executeTask atMessageId', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  const sid = first.sessionId
  // The server caps this conversation at $1; the next call (reserve about $2) is refused.
  await manager.setBudget({ scope: 'session', userId: 'u', sessionId: sid, usd: 1 })
  server.reset()
  for (let i = 0; i < 4; i++) server.enqueue({ text: `paid answer ${i}`, usage: BIG })
  const capped = await manager.executeTask({ prompt: 'go', sessionId: sid, projectId: 'p', userId: 'u' })
  t.assert.strictEqual(capped.error?.code, 'BUDGET_EXCEEDED', 'control: the cap stopped the session')
  t.assert.strictEqual(capped.error?.scope, 'session')
  t.assert.strictEqual((await manager.getSession(sid, 'u')).status, 'paused')
  const { messages } = await manager.getMessages(sid, 'u')
  const answer = messages.findLast((m) => m.kind === 'assistant')
  // The user continues the same conversation in a fork (the hook's editMessage/regenerate do this).
  const fork = await manager.fork({ sessionId: sid, userId: 'u' })
  const viaFork = await manager.executeTask({ prompt: 'go on', sessionId: fork.id, projectId: 'p', userId: 'u' })
  const viaAt = await manager.executeTask({ prompt: 'go on', sessionId: sid, atMessageId: answer.uuid, projectId: 'p', userId: 'u' })
  const spentInBranches = (await manager.getUsage({ userId: 'u', groupBy: 'session' }))
    .filter((row) => row.key !== sid)
    .reduce((s, row) => s + row.usd, 0)
  t.diagnostic(`fork: ${viaFork.success} ${viaFork.error?.code ?? ''}; atMessageId: ${viaAt.success} ${viaAt.error?.code ?? ''}; spent in branches $${spentInBranches.toFixed(2)}`)
  t.assert.strictEqual(viaFork.success, false, `the fork of a capped session spent on: "${viaFork.result}"`)
  t.assert.strictEqual(viaAt.success, false, `executeTask atMessageId on a capped session spent on: "${viaAt.result}"`)
})

test('R4-2. the event log (streamEvents) carries no server path outside the working directory', async (t) => {
  server.reset()
  const { manager, dir, work, configDir } = makeManager({ server })
  t.after(() => manager.close())
  const r = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const events = await collect(await manager.streamEvents({ sessionId: r.sessionId, userId: 'u', follow: false }))
  t.assert.ok(events.some((e) => e.event?.type === 'task_end'), 'control: the log has the task')
  // What an app relaying streamEvents to a reconnecting browser (Last-Event-ID) sends it.
  const text = JSON.stringify(events).split(work).join('<work>')
  const leaks = [...new Set([...text.matchAll(/"[^"]*(?:claude-config|csm-)[^"]*"/g)].map((m) => m[0]))]
  t.diagnostic(`state ${manager.info().stateDirectory}, leaked: ${leaks.join(', ')}`)
  t.assert.ok(!text.includes(configDir), `the tenant configuration folder is in the event log: ${leaks.join(', ')}`)
  t.assert.ok(!text.includes(dir), `a server folder is in the event log: ${leaks.join(', ')}`)
  // Control: the log has them, for server code that asks by name.
  const raw = await collect(await manager.streamEvents({ sessionId: r.sessionId, userId: 'u', follow: false, exposeServerDetails: true }))
  t.assert.ok(JSON.stringify(raw).includes(configDir), 'control: exposeServerDetails yields the events as logged')
})

// Found by an attack on R4-2's fix: the CLI writes the tenant's folder into message text and
// tool results on its own. A public event names no server folder anywhere in it (the working
// directory stays).
const serverFolders = (manager, work, events) => {
  const text = JSON.stringify(events).split(work).join('<work>')
  const state = manager.info().stateDirectory
  return { text, state, hits: [...new Set([...text.matchAll(/[^"\\ ]*claude-config[^"\\ ]*/g)].map((m) => m[0]))] }
}

test('R4-2b. a large tool output the CLI saves under the tenant folder is not named by its path in streamEvents', async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server })
  t.after(() => manager.close())
  server.enqueue({ toolUse: { name: 'Bash', input: { command: 'seq 1 40000', description: 'count' } } }, { text: 'done' })
  const r = await manager.executeTask({ prompt: 'count', projectId: 'p', userId: 'u', allowedTools: ['Bash'] })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const read = async (extra) => collect(await manager.streamEvents({ sessionId: r.sessionId, userId: 'u', follow: false, ...extra }))
  const raw = serverFolders(manager, work, await read({ exposeServerDetails: true }))
  t.assert.ok(raw.text.includes(raw.state), 'control: the CLI saved the output under the tenant folder and said where')
  const shown = serverFolders(manager, work, await read({}))
  t.assert.ok(!shown.text.includes(shown.state), `a server folder in streamEvents: ${shown.hits.join(', ')}`)
  t.assert.ok(shown.text.includes('<tenant config>'), 'the path is there with its placeholder')
})

test('R4-2c. a compaction summary does not name the transcript by its path in streamEvents', async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server })
  t.after(() => manager.close())
  const r = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  await manager.executeTask({ prompt: 'more', sessionId: r.sessionId, projectId: 'p', userId: 'u' })
  await manager.compactSession({ sessionId: r.sessionId, userId: 'u' })
  const read = async (extra) => collect(await manager.streamEvents({ sessionId: r.sessionId, userId: 'u', follow: false, ...extra }))
  const events = await read({})
  t.assert.ok(events.some((e) => e.event?.subtype === 'compact_boundary'), 'control: the compaction is in the log')
  const raw = serverFolders(manager, work, await read({ exposeServerDetails: true }))
  t.assert.ok(raw.text.includes(raw.state), 'control: the summary names the transcript by its path')
  const shown = serverFolders(manager, work, events)
  t.assert.ok(!shown.text.includes(shown.state), `a server folder in streamEvents: ${shown.hits.join(', ')}`)
})

test('R4-2d. an API error does not name the key proxy\'s address in streamEvents', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  for (let i = 0; i < 12; i++) server.enqueue({ error: { status: 500 } })
  const r = await manager.executeTask({ prompt: 'go', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(r.success, false, 'control: the task failed on the API error')
  const read = async (extra) => JSON.stringify(await collect(await manager.streamEvents({ sessionId: r.sessionId, userId: 'u', follow: false, ...extra })))
  t.assert.match(await read({ exposeServerDetails: true }), /127\.0\.0\.1:\d+/, 'control: the CLI named the address it calls')
  const shown = await read({})
  t.assert.doesNotMatch(shown, /127\.0\.0\.1:\d+/, 'the key proxy\'s address in streamEvents')
  t.assert.ok(shown.includes('<key proxy>'), 'named by its placeholder')
})

test('R4-3. a task aborted mid-answer is charged the output it already streamed to the user', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  const sid = first.sessionId
  server.reset()
  // A long answer (its final usage: 100,000 output tokens, $1.50) streamed word by word; the user
  // reads it as it comes and aborts just before the end (the message_delta with the usage).
  const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ')
  server.enqueue({ text: words, chunkDelayMs: 40, usage: { output_tokens: 100_000 } })
  let deltas = 0
  let streamed = ''
  const since = Date.now() - 1
  const r = await manager.executeTask(
    { prompt: 'write a lot', sessionId: sid, projectId: 'p', userId: 'u', includePartialMessages: true },
    {
      onEvent: (e) => {
        if (e.type !== 'stream_event' || e.event?.delta?.type !== 'text_delta') return
        deltas++
        streamed += e.event.delta.text
        if (deltas === 50) manager.abortTask({ sessionId: sid, userId: 'u' }).catch(() => {})
      },
    },
  )
  t.assert.strictEqual(r.error?.code, 'ABORTED', 'control: the abort stopped the task')
  t.assert.ok(deltas >= 50, `control: the answer streamed (${deltas} deltas)`)
  // The ledger settles the cut call beside the task's end: waited for (up to 15 s) until it holds
  // at least what was streamed.
  const usage = async () => (await manager.getUsage({ sessionId: sid, since, groupBy: 'session' }))[0]
  await eventually(async () => (await usage())?.outputTokens >= deltas)
  const row = await usage()
  t.diagnostic(`streamed ${streamed.length} characters in ${deltas} deltas; ledger: ${JSON.stringify(row)}`)
  t.assert.ok(row, 'control: the call is in the ledger')
  // At the very least what was streamed (a token per word here) must count against the caps.
  t.assert.ok(row.outputTokens >= deltas, `charged ${row.outputTokens} output tokens for ${deltas} words streamed: a user aborting before the end gets answers whose output never counts against any cap`)
})

test('R4-1b. through the Next.js routes: a browser user whose session is paused by its cap keeps talking via editMessage/regenerate (POST /task atMessageId)', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  const post = (route, body) =>
    routes[route].POST(new Request(`http://localhost/api/claude/${route}`, { method: 'POST', headers: { 'x-user': 'u', 'content-type': 'application/json' }, body: JSON.stringify(body) }))
  const first = await (await post('task', { prompt: 'hello', projectId: 'p' })).json()
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  const sid = first.sessionId
  // The server caps this session (e.g. from an admin page); the cap stops the next task.
  await manager.setBudget({ scope: 'session', userId: 'u', sessionId: sid, usd: 1 })
  for (let i = 0; i < 4; i++) server.enqueue({ text: `paid answer ${i}`, usage: BIG })
  const capped = await (await post('task', { prompt: 'go', projectId: 'p', sessionId: sid })).json()
  t.assert.strictEqual(capped.error?.scope, 'session', `control: the cap stopped it: ${JSON.stringify(capped)}`)
  const page = await (await post('session', { action: 'messages', sessionId: sid })).json()
  const prompt = page.messages.findLast((m) => m.kind === 'prompt')
  const before = page.messages[page.messages.indexOf(prompt) - 1]
  // What the hook's editMessage(prompt.uuid, text) sends.
  const edited = await (await post('task', { prompt: 'go, edited', projectId: 'p', sessionId: sid, atMessageId: before.uuid })).json()
  t.diagnostic(`edited: ${edited.success} ${edited.error?.code ?? ''} "${edited.result ?? ''}" in ${edited.sessionId}`)
  t.assert.notStrictEqual(edited.success, true, `the paused conversation went on in a fork: "${edited.result}"`)
})

// ---------------------------------------------------------------------------------------------
// Attacks that held (regression tests)
// ---------------------------------------------------------------------------------------------

test('H4-1. another user cannot stream, inspect or abort a running task of a session, and learns nothing about it', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'alice' })
  const sid = first.sessionId
  server.reset()
  server.enqueue({ toolUse: { name: 'Bash', input: { command: 'sleep 3; echo slept', description: 'wait' } } }, { text: 'alice done' })
  const running = manager.executeTask({ prompt: 'wait', sessionId: sid, projectId: 'p', userId: 'alice', allowedTools: ['Bash'], permissionMode: 'acceptEdits' })
  let seen = null
  for (let i = 0; i < 200 && !seen; i++) {
    seen = await manager.getRunningTask({ sessionId: sid, userId: 'alice' })
    if (!seen) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.assert.ok(seen, 'control: alice sees her task running')
  for (const [what, call] of [
    ['streamEvents', () => manager.streamEvents({ sessionId: sid, userId: 'mallory' })],
    ['streamEvents after', () => manager.streamEvents({ sessionId: sid, userId: 'mallory', after: 1 })],
    ['getRunningTask', () => manager.getRunningTask({ sessionId: sid, userId: 'mallory' })],
    ['abortTask', () => manager.abortTask({ sessionId: sid, userId: 'mallory' })],
    ['fork', () => manager.fork({ sessionId: sid, userId: 'mallory' })],
  ]) {
    await rejectsWith(t, call, 'SESSION_NOT_FOUND', undefined, what)
  }
  const r = await running
  t.assert.strictEqual(r.success, true, `alice's task was not aborted: ${JSON.stringify(r.error)}`)
  t.assert.strictEqual(r.result, 'alice done')
})

test('H4-2. streamEvents refuses an after that is not one of the session\'s event numbers', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const r = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  const sid = r.sessionId
  const all = await collect(await manager.streamEvents({ sessionId: sid, userId: 'u', follow: false }))
  const last = all.at(-1).seq
  for (const after of [-1, 1.5, Number.NaN, Infinity, -Infinity, last + 1, 2 ** 53, 1e300, '3', {}, [1]]) {
    await rejectsWith(t, () => manager.streamEvents({ sessionId: sid, userId: 'u', after, follow: false }), 'INVALID_ARGUMENT', undefined, `after ${String(after)}`)
  }
  // Another session's numbers are this session's own: no event of the other session comes back.
  const other = await manager.executeTask({ prompt: 'other', projectId: 'p', userId: 'u' })
  const mine = await collect(await manager.streamEvents({ sessionId: other.sessionId, userId: 'u', after: 0, follow: false }))
  t.assert.ok(mine.length > 0 && mine.every((e) => e.event?.sessionId === undefined || e.event.sessionId === other.sessionId || e.event.session_id === other.sessionId), 'only its own events')
  t.assert.ok(!JSON.stringify(mine).includes(sid), 'no event of the first session in the second one\'s stream')
})

test('H4-3. fork, rewind and executeTask refuse a message id of another session or another user', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const a = await manager.executeTask({ prompt: 'alice secret', projectId: 'p', userId: 'alice' })
  const m = await manager.executeTask({ prompt: 'mallory', projectId: 'p', userId: 'mallory' })
  const m2 = await manager.executeTask({ prompt: 'mallory two', projectId: 'p', userId: 'mallory' })
  const alices = (await manager.getMessages(a.sessionId, 'alice')).messages
  const aliceAnswer = alices.findLast((x) => x.kind === 'assistant').uuid
  const otherOwn = (await manager.getMessages(m2.sessionId, 'mallory')).messages.findLast((x) => x.kind === 'assistant').uuid
  for (const id of [aliceAnswer, otherOwn]) {
    await rejectsWith(t, () => manager.fork({ sessionId: m.sessionId, userId: 'mallory', atMessageId: id }), 'MESSAGE_NOT_FOUND', undefined, 'fork')
    await rejectsWith(t, () => manager.rewind({ sessionId: m.sessionId, userId: 'mallory', toMessageId: id }), 'MESSAGE_NOT_FOUND', undefined, 'rewind')
    await rejectsWith(t, () => manager.rewind({ sessionId: m.sessionId, userId: 'mallory', toMessageId: id, files: 'dryRun' }), 'MESSAGE_NOT_FOUND', undefined, 'rewind files')
    await rejectsWith(t, () => manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'mallory', sessionId: m.sessionId, atMessageId: id }), 'MESSAGE_NOT_FOUND', undefined, 'executeTask')
  }
  // Alice's session itself, with her own message id: as a missing session.
  await rejectsWith(t, () => manager.fork({ sessionId: a.sessionId, userId: 'mallory', atMessageId: aliceAnswer }), 'SESSION_NOT_FOUND', undefined, 'fork of alice')
  await rejectsWith(t, () => manager.rewind({ sessionId: a.sessionId, userId: 'mallory', toMessageId: aliceAnswer }), 'SESSION_NOT_FOUND', undefined, 'rewind of alice')
  await rejectsWith(t, () => manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'mallory', sessionId: a.sessionId, atMessageId: aliceAnswer }), 'SESSION_NOT_FOUND', undefined, 'executeTask of alice')
  for (const bad of ['../../etc/passwd', 'a'.repeat(5000), 'x\u0000y', '']) {
    await rejectsWith(t, () => manager.rewind({ sessionId: m.sessionId, userId: 'mallory', toMessageId: bad }), 'INVALID_ARGUMENT', undefined, `toMessageId ${bad.slice(0, 20)}`)
  }
})

test('H4-4. file history the agent forges in its transcript makes a rewind with files write nothing outside the working directory', async (t) => {
  server.reset()
  const { manager, dir, work } = makeManager({ server })
  t.after(() => manager.close())
  if (!(await requireSandbox(t, manager))) return
  const outside = fs.mkdtempSync(path.join(path.dirname(dir), 'csm-outside-'))
  fs.chmodSync(outside, 0o755)
  t.after(() => fs.rmSync(outside, { recursive: true, force: true }))
  fs.symlinkSync(outside, path.join(work, 'lnk'))
  const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'mallory' })
  const sid = first.sessionId
  // The agent appends file-history-delta lines to its own transcript (backup named as the CLI
  // names them: sha256 of the absolute path, 16 hex digits) and writes the backups.
  const forge = async (targets) => {
    const py = `
import json, glob, os, hashlib
cfg = os.environ['CLAUDE_CONFIG_DIR']
t = [p for p in glob.glob(cfg + '/projects/*/*.jsonl') if ${JSON.stringify(sid)} in p][0]
lines = [json.loads(l) for l in open(t) if l.strip()]
snap = [l for l in lines if l.get('type') == 'file-history-snapshot'][-1]['messageId']
am = [l for l in lines if l.get('type') == 'assistant'][-1]['uuid']
fh = cfg + '/file-history/' + ${JSON.stringify(sid)}
os.makedirs(fh, exist_ok=True)
with open(t, 'a') as f:
  for tp, rp in ${JSON.stringify(targets)}:
    ab = tp if tp.startswith('/') else os.path.normpath(os.path.join(rp, tp))
    name = hashlib.sha256(ab.encode()).hexdigest()[:16] + '@v1'
    open(fh + '/' + name, 'w').write('PWNED ' + tp + '\\n')
    f.write(json.dumps({"type": "file-history-delta", "messageId": am, "snapshotMessageId": snap, "trackingPath": tp,
      "backup": {"backupFileName": name, "version": 1, "backupTime": "2026-12-06T11:49:40.291Z", "realParentDir": rp},
      "timestamp": "2026-12-06T11:49:40.292Z"}) + "\\n")
print("FORGED=" + snap)
`
    const { r, output } = await runBash(manager, server, `python3 - <<'CSM_EOF'\n${py}\nCSM_EOF`, { sessionId: sid })
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    t.assert.match(output, /FORGED=/, `control: the agent forged its history:\n${output}`)
  }
  const { messages } = await manager.getMessages(sid, 'mallory')
  // Control: a forged entry inside the working directory is restored (the agent can write there anyway).
  await forge([['inside-new.txt', work]])
  await manager.rewind({ sessionId: sid, userId: 'mallory', toMessageId: messages[1].uuid, files: true })
  t.assert.ok(fs.existsSync(path.join(work, 'inside-new.txt')), 'control: the CLI restored the forged file inside the working directory')
  fs.rmSync(path.join(work, 'inside-new.txt'))
  // Entries naming files outside it (a relative escape, an absolute path, a folder elsewhere, a
  // link in the working directory): the whole restore is refused before any CLI acts on them.
  await forge([
    ['inside-new.txt', work],
    ['../escape-rel.txt', work],
    [path.join(outside, 'escape-abs.txt'), work],
    ['escape-rpd.txt', outside],
    ['lnk/via-link.txt', work],
  ])
  const now = (await manager.getMessages(sid, 'mallory')).messages
  for (const files of ['dryRun', true]) {
    await rejectsWith(t, manager.rewind({ sessionId: sid, userId: 'mallory', toMessageId: now[1].uuid, files }), 'TRANSCRIPT_UNSAFE', /file history/, `rewind ${files}`)
  }
  for (const p of [path.join(dir, 'escape-rel.txt'), path.join(outside, 'escape-abs.txt'), path.join(outside, 'escape-rpd.txt'), path.join(outside, 'via-link.txt'), path.join(work, 'inside-new.txt')]) {
    t.assert.ok(!fs.existsSync(p), `the rewind wrote ${p}`)
  }
})

test('H4-5. executeTask on a session of another project (plain, atMessageId, forkSession) is refused: a project cap is not escaped', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  const sid = first.sessionId
  await manager.setBudget({ scope: 'project', projectId: 'p', usd: 1 })
  for (let i = 0; i < 6; i++) server.enqueue({ text: `x${i}`, usage: BIG })
  const capped = await manager.executeTask({ prompt: 'go', sessionId: sid, projectId: 'p', userId: 'u' })
  t.assert.strictEqual(capped.error?.scope, 'project', 'control: the project cap stopped it')
  const answer = (await manager.getMessages(sid, 'u')).messages.findLast((m) => m.kind === 'assistant').uuid
  for (const extra of [{}, { atMessageId: answer }, { forkSession: true }]) {
    await rejectsWith(t, () => manager.executeTask({ prompt: 'more', userId: 'u', sessionId: sid, projectId: 'q', ...extra }), 'SESSION_NOT_FOUND', undefined, JSON.stringify(extra))
  }
  // And a fork of the capped session stays in the capped project.
  const viaAt = await manager.executeTask({ prompt: 'more', userId: 'u', sessionId: sid, projectId: 'p', atMessageId: answer })
  t.assert.strictEqual(viaAt.error?.code, 'BUDGET_EXCEEDED', JSON.stringify(viaAt.error ?? viaAt.result))
})

test('H4-6. a task run with forkSession logs its events in the fork, never in the parent\'s stream', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  const f = await manager.executeTask({ prompt: 'forked FORKMARK', projectId: 'p', userId: 'u', sessionId: first.sessionId, forkSession: true })
  t.assert.strictEqual(f.success, true, JSON.stringify(f.error))
  t.assert.notStrictEqual(f.sessionId, first.sessionId, 'control: a fork ran')
  const parent = JSON.stringify(await collect(await manager.streamEvents({ sessionId: first.sessionId, userId: 'u', follow: false })))
  const child = JSON.stringify(await collect(await manager.streamEvents({ sessionId: f.sessionId, userId: 'u', follow: false })))
  t.assert.ok(child.includes('FORKMARK'), 'control: the fork\'s log has its task')
  t.assert.ok(!parent.includes('FORKMARK'), 'the fork\'s task is in the parent\'s event log')
})
