// Safe defaults: where an agent works when the host configures nothing, which folders can never be
// an agent's working directory, and ids a client cannot choose. Each test asserts what an attack
// would reach (a file of the server's folder, the database inside an agent's folder), so it fails
// if the protection goes.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { addon, makeManager, PG_URL, skipWithoutPostgres, rejectsWith, startStandInServer, tempDir } from './helpers.mjs'
import { runBash } from './attack-helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const I = 'INVALID_ARGUMENT'
const mode = (p) => fs.statSync(p).mode & 0o777

test('defaults: without a working directory each session works in a folder of its own under workspaceRoot, never the server folder', async (t) => {
  if (process.env.CLAUDE_WORKING_DIR) return t.skip('CLAUDE_WORKING_DIR is set in this environment')
  server.reset()
  const dir = tempDir()
  const root = path.join(tempDir(), 'workspaces') // outside the state folder (dir)
  const { manager } = makeManager({ server, dir, workingDirectory: undefined, workspaceRoot: root })
  t.after(() => manager.close())
  t.assert.strictEqual(mode(root), 0o700, 'the root is made private')
  const a = (await manager.getOrCreateSession({ projectId: 'p', userId: 'alice' })).session
  const b = (await manager.getOrCreateSession({ projectId: 'p', userId: 'bob' })).session
  t.assert.strictEqual(a.workingDirectory, path.join(root, a.id))
  t.assert.strictEqual(b.workingDirectory, path.join(root, b.id))
  t.assert.notStrictEqual(a.workingDirectory, process.cwd())
  // The agent's `pwd` and a file it writes land in its own folder: 0711 inside the 0700 root
  // (searchable, so that bubblewrap run as root can enter it once idmapped to the agent).
  const { r, output } = await runBash(manager, server, 'pwd; echo hi > made-here.txt', { sessionId: a.id, userId: 'alice' })
  t.assert.ok(r.success, JSON.stringify(r.error))
  t.assert.match(output, new RegExp(a.id))
  t.assert.ok(fs.existsSync(path.join(a.workingDirectory, 'made-here.txt')))
  t.assert.ok(!fs.existsSync(path.join(process.cwd(), 'made-here.txt')), 'nothing written in the server folder')
  t.assert.strictEqual(mode(a.workingDirectory), 0o711)
  // A new session from executeTask gets its own folder as well.
  server.enqueue({ text: 'ok' })
  const n = await manager.executeTask({ prompt: 'hi', projectId: 'p', userId: 'alice' })
  t.assert.ok(n.success, JSON.stringify(n.error))
  const s = await manager.getSession(n.sessionId, 'alice')
  t.assert.strictEqual(s.workingDirectory, path.join(root, n.sessionId))
})

test('defaults: the server folder and its ancestors are refused unless allowServerFolderAsWorkspace; a planted .env file is no reason', async (t) => {
  const dir = tempDir()
  const { manager } = makeManager({ server, dir })
  t.after(() => manager.close())
  const withEnv = path.join(dir, 'app')
  fs.mkdirSync(withEnv)
  fs.writeFileSync(path.join(withEnv, '.env.local'), 'SECRET=1\n')
  const cwd = process.cwd()
  for (const [wd, why] of [
    [cwd, /server's own folder/],
    // (an ancestor that also holds the test's database, as /tmp does for a clone in /tmp, is refused for that)
    [path.dirname(cwd), /server's own folder|contains/],
  ]) {
    t.assert.throws(
      () => new addon.SessionManager({ databasePath: path.join(dir, 'x.db'), workingDirectory: wd }),
      (e) => e.code === I && why.test(e.message),
      `constructor, ${wd}`,
    )
    await rejectsWith(t, manager.getOrCreateSession({ projectId: 'p', userId: 'u', workingDirectory: wd }), I, why, `getOrCreateSession ${wd}`)
    await rejectsWith(t, manager.startFresh({ projectId: 'p', userId: 'u', workingDirectory: wd }), I, why, `startFresh ${wd}`)
    await rejectsWith(t, manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u', workingDirectory: wd }), I, why, `executeTask ${wd}`)
  }
  // A .env file at the top of a folder is not a reason to refuse it: an agent could plant one
  // to keep the server from starting (attack round 3, R2).
  const m1 = new addon.SessionManager({ databasePath: path.join(dir, 'z.db'), workingDirectory: withEnv })
  t.assert.strictEqual((await m1.getOrCreateSession({ projectId: 'p', userId: 'u' })).session.workingDirectory, withEnv)
  await m1.close()
  // The host may opt in (unsafe).
  const m2 = new addon.SessionManager({ databasePath: path.join(dir, 'y.db'), workingDirectory: withEnv, allowServerFolderAsWorkspace: true })
  t.assert.strictEqual((await m2.getOrCreateSession({ projectId: 'p', userId: 'u' })).session.workingDirectory, withEnv)
  await m2.close()
})

test('defaults: the state folder, the database and tenant folders are never inside a working directory or an allowed root (H1)', async (t) => {
  const dir = tempDir()
  const work = path.join(dir, 'work')
  fs.mkdirSync(work)
  // The example app's old layout: the database inside the working directory.
  fs.mkdirSync(path.join(work, '.claude-sessions'))
  const cases = [
    [{ databasePath: path.join(work, '.claude-sessions', 'sessions.db'), workingDirectory: work }, /session database|state folder/],
    [{ stateDirectory: path.join(work, 'state'), workingDirectory: work }, /state folder/],
    [{ databasePath: path.join(dir, 'a.db'), workingDirectory: dir }, /session database|state folder/],
    [{ databasePath: path.join(dir, 'b.db'), workingDirectory: work, tenantConfigRoot: work }, /tenant configuration/],
    [{ databasePath: path.join(work, 'c.db'), workingDirectory: path.join(dir, 'other'), allowedRoots: [dir] }, /allowedRoots entry/],
    [{ databasePath: path.join(dir, 'd.db'), workspaceRoot: dir }, /workspaceRoot/],
    [{ stateDirectory: path.join(dir, 'st'), workspaceRoot: path.join(dir, 'st', 'ws') }, /workspaceRoot .* inside/],
  ]
  fs.mkdirSync(path.join(dir, 'other'))
  for (const [options, why] of cases) {
    t.assert.throws(() => new addon.SessionManager(options), (e) => e.code === I && why.test(e.message), JSON.stringify(options))
  }
  t.assert.ok(!fs.existsSync(path.join(work, '.claude-sessions', 'sessions.db')), 'no database was made inside the working directory')
  // Per request: a folder that holds the store is refused too.
  const { manager } = makeManager({ server, dir: path.join(dir, 'other'), workingDirectory: work })
  t.after(() => manager.close())
  await rejectsWith(t, manager.getOrCreateSession({ projectId: 'p', userId: 'u', workingDirectory: dir }), I, /state folder|session database/)
  await rejectsWith(t, manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u', workingDirectory: dir }), I, /state folder|session database/)
})

test('defaults [postgres]: a per-session folder is stored relative to the workspace root and resolved under each node\'s own', async (t) => {
  if (skipWithoutPostgres(t)) return
  const dir = tempDir()
  const ws = tempDir()
  const one = makeManager({ server, dir, backend: 'postgres', workingDirectory: undefined, workspaceRoot: path.join(ws, 'ws1') })
  t.after(() => one.manager.close())
  const { session } = await one.manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  t.assert.strictEqual(session.workingDirectory, path.join(ws, 'ws1', session.id))
  const schema = one.options.databaseSchema
  const stored = execFileSync('psql', [PG_URL, '-qtAc', `SELECT working_directory FROM "${schema}".sessions WHERE id = '${session.id}'`], { encoding: 'utf8' }).trim()
  t.assert.strictEqual(stored, session.id)
  const two = new addon.SessionManager({ ...one.options, workspaceRoot: path.join(ws, 'ws2') })
  t.after(() => two.close())
  t.assert.strictEqual((await two.getSession(session.id, 'u')).workingDirectory, path.join(ws, 'ws2', session.id))
})
