// Rewind with files across nodes (PostgreSQL): the CLI's file backups travel with the transcript,
// so a rewind with files works on a node other than the one whose CLI made them. Two Node
// processes (A, B), each with its own working folder, CLAUDE_CONFIG_DIR folders and state folder,
// share one database schema; the session's working directory is A's folder on A and B's on B (a
// working tree each node has at its own path). The real CLI against the stand-in API. Also: a
// rewind with files while a task runs is refused (SESSION_BUSY), and what the agent leaves in its
// backup folder and file history (a link to a server file, an oversized or hard-linked backup, a
// forged entry naming a path outside the working directory) neither reaches the store nor makes
// the restore on the other node write outside the working directory or read server files.
// Runs when CSM_TEST_DATABASE_URL is set (reported as skipped otherwise).
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { PG_URL, skipWithoutPostgres, startStandInServer, tempDir, until } from './helpers.mjs'
import { startNode } from './node-harness.mjs'

const MAX = 1 << 20

/** Two nodes on a fresh schema; everything is stopped and dropped when `t` ends. */
async function twoNodes(t) {
  const server = await startStandInServer()
  const root = tempDir('csm-nodes-branching-')
  const schema = `csm_nbr_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const sql = (q) => execFileSync('psql', [PG_URL, '-AtXqc', q.replaceAll('{S}', `"${schema}"`)], { encoding: 'utf8' }).trim()
  const nodes = []
  t.after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL')
    await server.close()
    try {
      sql('DROP SCHEMA IF EXISTS {S} CASCADE')
    } catch {}
    fs.rmSync(root, { recursive: true, force: true })
  })
  const ctx = { root, schema, server, ttl: 5000, options: { maxTranscriptBytes: MAX } }
  const A = await startNode('A', ctx)
  nodes.push(A)
  const B = await startNode('B', ctx)
  nodes.push(B)
  return { server, root, sql, A, B }
}

/** A folder's files (not dot files), name → content. */
const files = (dir) =>
  Object.fromEntries(
    fs
      .readdirSync(dir)
      .filter((f) => !f.startsWith('.'))
      .sort()
      .map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]),
  )

/** On node A: b.txt exists; turn one writes a.txt and edits b.txt, turn two edits a.txt and writes c.txt. */
async function twoTurnsOfEdits(t, server, A) {
  fs.writeFileSync(path.join(A.work, 'b.txt'), 'b original\n')
  const before = files(A.work)
  const base = { permissionMode: 'acceptEdits' }
  server.enqueue(
    { toolUse: { name: 'Write', input: { file_path: `${A.work}/a.txt`, content: 'a v1\n' } } },
    { toolUse: { name: 'Edit', input: { file_path: `${A.work}/b.txt`, old_string: 'b original', new_string: 'b edited' } } },
    { text: 'turn one done' },
  )
  const one = await A.task('write a, edit b', base)
  t.assert.ok(one.success, JSON.stringify(one.error))
  server.enqueue(
    { toolUse: { name: 'Read', input: { file_path: `${A.work}/a.txt` } } },
    { toolUse: { name: 'Edit', input: { file_path: `${A.work}/a.txt`, old_string: 'a v1', new_string: 'a v2' } } },
    { toolUse: { name: 'Write', input: { file_path: `${A.work}/c.txt`, content: 'c new\n' } } },
    { text: 'turn two done' },
  )
  const two = await A.task('edit a, write c', { ...base, sessionId: one.sessionId })
  t.assert.ok(two.success, JSON.stringify(two.error))
  const edited = files(A.work)
  t.assert.deepStrictEqual(edited, { 'a.txt': 'a v2\n', 'b.txt': 'b edited\n', 'c.txt': 'c new\n' }, 'control: the agent changed the folder')
  return { sessionId: one.sessionId, before, edited }
}

/** Every file below `dir` (recursively), for "is it anywhere" checks. */
function walk(dir) {
  const out = []
  for (const e of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) out.push(...walk(p))
    else out.push(p)
  }
  return out
}

test('PostgreSQL: a rewind with files on another node restores that node\'s working directory from the stored backups; a dry run changes nothing and lists the same changes', async (t) => {
  if (skipWithoutPostgres(t)) return
  const { server, sql, A, B } = await twoNodes(t)
  const { sessionId, before, edited } = await twoTurnsOfEdits(t, server, A)
  // The backups are in the store (stored once each task's CLI exited), and nowhere on B.
  const backups = () => sql(`SELECT name FROM {S}.file_backups WHERE session_id = '${sessionId}' ORDER BY name`).split('\n').filter(Boolean)
  await until('the backups of both turns in the store', () => backups().length >= 3)
  t.assert.deepStrictEqual(walk(B.configRoot).filter((f) => f.includes('file-history')), [], 'control: B has no backup of its own')
  // B has the same working tree at its own path (what the session's folder is on B).
  fs.cpSync(A.work, B.work, { recursive: true })
  t.assert.deepStrictEqual(files(B.work), edited)

  const h = await B.call('getMessages', [sessionId, 'u'])
  const first = h.messages[0]
  t.assert.strictEqual(first.text, 'write a, edit b')
  const dry = await B.call('rewind', [{ sessionId, userId: 'u', toMessageId: first.uuid, files: 'dryRun' }])
  t.assert.deepStrictEqual([...dry.files.changed].sort(), ['a.txt', 'b.txt', 'c.txt'])
  t.assert.strictEqual(dry.files.restored, false)
  t.assert.deepStrictEqual(files(B.work), edited, 'a dry run changes no file')
  t.assert.strictEqual((await B.call('getMessages', [sessionId, 'u'])).total, h.total, 'nor the conversation')

  const done = await B.call('rewind', [{ sessionId, userId: 'u', toMessageId: first.uuid, files: true }])
  t.assert.strictEqual(done.files.restored, true)
  t.assert.deepStrictEqual([...done.files.changed].sort(), [...dry.files.changed].sort(), 'the dry run listed the same changes')
  t.assert.deepStrictEqual(files(B.work), before, 'B\'s folder is as it was: b restored, the files the agent created gone')
  t.assert.deepStrictEqual(files(A.work), edited, 'A\'s folder is A\'s: B restored its own')
  t.assert.deepStrictEqual((await A.call('getMessages', [sessionId, 'u'])).messages.map((m) => m.uuid), [first.uuid], 'every node sees the rewind')
  // The rewinds are recorded as tasks of kind rewind (no model call, no cost).
  const tasks = await A.call('listTasks', [sessionId, 'u'])
  t.assert.deepStrictEqual(tasks.map((x) => `${x.kind}:${x.status}`), ['task:succeeded', 'task:succeeded', 'rewind:succeeded', 'rewind:succeeded'])
  t.assert.strictEqual((await A.call('getSession', [sessionId, 'u'])).taskCount, 2, 'a rewind is not counted as a model task')
  // The session goes on from the point, on either node.
  const next = await A.task('after the rewind', { sessionId })
  t.assert.ok(next.success, JSON.stringify(next.error))
  t.assert.deepStrictEqual((await B.call('getMessages', [sessionId, 'u'])).messages.map((m) => m.text).slice(1), ['after the rewind', 'Echo #1: after the rewind'])
})

test('PostgreSQL: a rewind with files while a task runs on the session answers SESSION_BUSY, on its node and on another', async (t) => {
  if (skipWithoutPostgres(t)) return
  const { server, A, B } = await twoNodes(t)
  const first = await A.task('hello')
  t.assert.ok(first.success, JSON.stringify(first.error))
  const sessionId = first.sessionId
  const h = await A.call('getMessages', [sessionId, 'u'])
  server.enqueue({ toolUse: { name: 'Bash', input: { command: 'sleep 4; echo slept', description: 'wait' } } }, { text: 'waited' })
  let started
  const isStarted = new Promise((resolve) => (started = resolve))
  const running = A.task('wait', { sessionId, allowedTools: ['Bash'], permissionMode: 'acceptEdits' }, started)
  await isStarted
  for (const [node, files] of [
    [B, true],
    [B, 'dryRun'],
    [A, true],
  ]) {
    const r = node.call('rewind', [{ sessionId, userId: 'u', toMessageId: h.messages[0].uuid, files }])
    await t.assert.rejects(r, (e) => e.code === 'SESSION_BUSY', `${node.name} ${files}`)
  }
  const r = await running
  t.assert.ok(r.success, `the running task was not disturbed: ${JSON.stringify(r.error)}`)
  t.assert.strictEqual(r.result, 'waited')
  const tasks = await B.call('listTasks', [sessionId, 'u'])
  t.assert.deepStrictEqual(tasks.map((x) => x.kind), ['task', 'task'], 'a refused rewind leaves no row')
  // Once the task is over, the same rewind goes through.
  const ok = await B.call('rewind', [{ sessionId, userId: 'u', toMessageId: h.messages[0].uuid, files: 'dryRun' }])
  t.assert.deepStrictEqual(ok.files.changed, [])
})

test('PostgreSQL: backups and file history the agent forges (a link to a server file, a hard link, an oversized backup, a path outside the working directory) are not stored, and the restore on another node writes nothing outside and reads no server file', async (t) => {
  if (skipWithoutPostgres(t)) return
  const { server, root, sql, A, B } = await twoNodes(t)
  const secret = path.join(root, 'server-secret.txt')
  fs.writeFileSync(secret, 'SERVER SECRET\n')
  const { sessionId } = await twoTurnsOfEdits(t, server, A)
  await until('the backups of both turns in the store', () => sql(`SELECT count(*) FROM {S}.file_backups WHERE session_id = '${sessionId}'`) === '3')
  const storedBefore = sql(`SELECT name FROM {S}.file_backups WHERE session_id = '${sessionId}' ORDER BY name`).split('\n').filter(Boolean)
  // The agent, in a third task on A: backup files that are a link to a server file, a hard link
  // to it and one larger than maxTranscriptBytes, and history lines naming files outside the
  // working directory restored from those backups.
  const py = `
import json, glob, os
cfg = os.environ['CLAUDE_CONFIG_DIR']
t = [p for p in glob.glob(cfg + '/projects/*/*.jsonl') if ${JSON.stringify(sessionId)} in p][0]
lines = [json.loads(l) for l in open(t) if l.strip()]
snap = [l for l in lines if l.get('type') == 'file-history-snapshot'][-1]['messageId']
am = [l for l in lines if l.get('type') == 'assistant'][-1]['uuid']
fh = cfg + '/file-history/' + ${JSON.stringify(sessionId)}
os.symlink(${JSON.stringify(secret)}, fh + '/dddddddddddddddd@v1')
os.link(${JSON.stringify(secret)}, fh + '/eeeeeeeeeeeeeeee@v1')
open(fh + '/ffffffffffffffff@v1', 'w').write('x' * ${2 * MAX})
with open(t, 'a') as f:
  for tp, name in [('../escape.txt', 'dddddddddddddddd@v1'), ('inside.txt', 'eeeeeeeeeeeeeeee@v1'), ('big.txt', 'ffffffffffffffff@v1'), ('name.txt', '../../../../server-secret.txt')]:
    f.write(json.dumps({"type": "file-history-delta", "messageId": am, "snapshotMessageId": snap, "trackingPath": tp,
      "backup": {"backupFileName": name, "version": 1, "backupTime": "2026-12-06T11:49:40.291Z", "realParentDir": ${JSON.stringify(A.work)}},
      "timestamp": "2026-12-06T11:49:40.292Z"}) + "\\n")
print("FORGED")
`
  server.enqueue({ toolUse: { name: 'Bash', input: { command: `python3 - <<'CSM_EOF'\n${py}\nCSM_EOF`, description: 'forge' } } }, { text: 'forged' })
  const forge = await A.task('forge', { sessionId, allowedTools: ['Bash'], permissionMode: 'acceptEdits' })
  t.assert.ok(forge.success, JSON.stringify(forge.error))
  const toolOutput = JSON.stringify(server.requests.at(-1)?.body?.messages?.at(-1))
  t.assert.match(toolOutput, /FORGED/, `control: the agent forged its backups and history: ${toolOutput}`)
  const stored = sql(`SELECT name FROM {S}.file_backups WHERE session_id = '${sessionId}' ORDER BY name`).split('\n').filter(Boolean)
  t.assert.ok(storedBefore.every((n) => stored.includes(n)), 'control: the CLI\'s own backups are stored')
  t.assert.deepStrictEqual(stored.filter((n) => /^(d+|e+|f+)@v1$/.test(n)), [], 'no linked, hard-linked or oversized backup was stored')
  t.assert.strictEqual(sql(`SELECT count(*) FROM {S}.file_backups WHERE position('SERVER SECRET' in convert_from(content, 'UTF8')) > 0`), '0')
  t.assert.ok(sql(`SELECT count(*) FROM {S}.transcript_entries WHERE session_id = '${sessionId}' AND line LIKE '%escape.txt%'`) !== '0', 'control: the forged history reached the store')

  fs.cpSync(A.work, B.work, { recursive: true })
  const workBefore = files(B.work)
  const page = await B.call('getMessages', [sessionId, 'u'])
  const first = page.messages[0]
  for (const mode of ['dryRun', true]) {
    const r = B.call('rewind', [{ sessionId, userId: 'u', toMessageId: first.uuid, files: mode }])
    await t.assert.rejects(r, (e) => {
      t.diagnostic(`rewind ${mode}: ${e.code} ${e.message}`)
      return e.code === 'TRANSCRIPT_UNSAFE' && /file history/.test(e.message)
    }, `rewind ${mode}`)
  }
  t.assert.ok(!fs.existsSync(path.join(path.dirname(B.work), 'escape.txt')), 'nothing was written outside B\'s working directory')
  t.assert.deepStrictEqual(files(B.work), workBefore, 'nor inside it')
  for (const f of [...walk(B.configRoot), ...walk(B.work)]) {
    t.assert.ok(!fs.readFileSync(f, 'utf8').includes('SERVER SECRET'), `the server's file reached ${f}`)
  }
  t.assert.strictEqual(fs.readFileSync(secret, 'utf8'), 'SERVER SECRET\n', 'the server file is untouched')
  // The session is intact: no rewind was recorded, the conversation goes on.
  t.assert.strictEqual((await B.call('getMessages', [sessionId, 'u'])).total, page.total)
  const tasks = await B.call('listTasks', [sessionId, 'u'])
  t.assert.deepStrictEqual(tasks.map((x) => `${x.kind}:${x.status}`).slice(3), ['rewind:failed', 'rewind:failed'])
})
