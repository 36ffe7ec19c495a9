// The session API over the SQLite store (the first tests, cleanup and close also over PostgreSQL
// when CSM_TEST_DATABASE_URL is set): lifecycle, ownership, validation, store errors,
// and several processes sharing one database file.
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { addon, makeManager, rejectsWith, tempDir, UUID, testBackends, backendTag, PG_URL, skipWithoutPostgres, workDir } from './helpers.mjs'

const { SessionManager } = addon

for (const backend of testBackends()) {
  test(`sessions: create, get, list newest first, getOrCreate, startFresh, archive, delete${backendTag(backend)}`, async (t) => {
    const { manager } = makeManager({ backend })
    const a = await manager.getOrCreateSession({ projectId: 'p1', userId: 'alice' })
    t.assert.ok(a.created)
    t.assert.match(a.session.id, UUID)
    t.assert.strictEqual(a.session.status, 'active')
    t.assert.strictEqual(a.session.model, 'sonnet')
    t.assert.strictEqual(a.session.taskCount, 0)
    const again = await manager.getOrCreateSession({ projectId: 'p1', userId: 'alice' })
    t.assert.strictEqual(again.created, false)
    t.assert.strictEqual(again.session.id, a.session.id)
    const other = await manager.getOrCreateSession({ projectId: 'p1', userId: 'alice', preferActive: false })
    t.assert.ok(other.created)
    t.assert.notStrictEqual(other.session.id, a.session.id)

    const got = await manager.getSession(a.session.id, 'alice')
    t.assert.deepStrictEqual(got, a.session)

    const fresh = await manager.startFresh({ projectId: 'p1', userId: 'alice' })
    t.assert.strictEqual(fresh.archived, 2)
    const list = await manager.listSessions({ userId: 'alice', projectId: 'p1' })
    t.assert.strictEqual(list.length, 3)
    t.assert.strictEqual(list[0].id, fresh.session.id, 'newest first')
    t.assert.deepStrictEqual(list.map((s) => s.status).sort(), ['active', 'archived', 'archived'])
    t.assert.strictEqual((await manager.listSessions({ userId: 'alice', status: 'active' })).length, 1)
    t.assert.strictEqual((await manager.listSessions({ userId: 'alice', limit: 1, offset: 1 })).length, 1)

    // A client never picks a new session's id: `sessionId` names the user's own session to start
    // over from; an id never created answers SESSION_NOT_FOUND and creates nothing.
    const chosen = '6f1c1d3e-8a8b-4c2d-9e0f-123456789abc'
    await rejectsWith(t, manager.startFresh({ projectId: 'p2', userId: 'alice', sessionId: chosen }), 'SESSION_NOT_FOUND')
    t.assert.strictEqual((await manager.listSessions({ userId: 'alice', projectId: 'p2' })).length, 0)
    const fresh2 = await manager.startFresh({ projectId: 'p1', userId: 'alice', sessionId: fresh.session.id })
    t.assert.notStrictEqual(fresh2.session.id, fresh.session.id)
    t.assert.strictEqual(fresh2.archived, 1, 'the session it started over from is archived')
    await rejectsWith(t, manager.startFresh({ projectId: 'p2', userId: 'alice', sessionId: fresh.session.id }), 'SESSION_NOT_FOUND', undefined, 'another project')

    const archived = await manager.archiveSession(fresh.session.id, 'alice')
    t.assert.strictEqual(archived.status, 'archived')
    await manager.deleteSession(fresh.session.id, 'alice')
    await rejectsWith(t, manager.getSession(fresh.session.id, 'alice'), 'SESSION_NOT_FOUND')
    await manager.close()
  })
}

// Ownership (another user's session answers like a missing one) is table-driven in ownership.test.mjs.
// The same, on every backend:
for (const backend of testBackends()) {
  test(`sessions: another user sees exactly what a missing session shows${backendTag(backend)}`, async (t) => {
    const { manager } = makeManager({ backend })
    const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'alice' })
    const missing = '00000000-0000-4000-8000-000000000000'
    const calls = (id) => [
      () => manager.getSession(id, 'mallory'),
      () => manager.archiveSession(id, 'mallory'),
      () => manager.deleteSession(id, 'mallory'),
      () => manager.fork({ sessionId: id, userId: 'mallory' }),
      () => manager.getSessionContext(id, 'mallory'),
      () => manager.listTasks(id, 'mallory'),
      () => manager.compactSession({ sessionId: id, userId: 'mallory' }),
    ]
    const theirs = calls(session.id)
    const none = calls(missing)
    for (let i = 0; i < theirs.length; i++) {
      const e1 = await rejectsWith(t, theirs[i], 'SESSION_NOT_FOUND')
      const e2 = await rejectsWith(t, none[i], 'SESSION_NOT_FOUND')
      t.assert.strictEqual(e1.message.replace(session.id, 'ID'), e2.message.replace(missing, 'ID'))
    }
    t.assert.strictEqual((await manager.listSessions({ userId: 'mallory' })).length, 0)
    // Alice's session is untouched.
    t.assert.strictEqual((await manager.getSession(session.id, 'alice')).status, 'active')
    await manager.close()
  })
}

test('sessions: bad input is INVALID_ARGUMENT before the store is touched', async (t) => {
  const { manager } = makeManager()
  const cases = [
    () => manager.getSession('not-a-uuid', 'u'),
    () => manager.getSession('--dangerously-skip-permissions', 'u'),
    () => manager.getSession(42, 'u'),
    () => manager.getSession('00000000-0000-4000-8000-000000000000', ''),
    () => manager.getSession('00000000-0000-4000-8000-000000000000', 'a\u0000b'),
    () => manager.getOrCreateSession({ projectId: 'x'.repeat(257), userId: 'u' }),
    () => manager.getOrCreateSession({ projectId: 'p\n', userId: 'u' }),
    () => manager.getOrCreateSession({ projectId: 'p' }),
    () => manager.getOrCreateSession({ projectId: 'p', userId: 'u', extra: 1 }),
    () => manager.getOrCreateSession({ projectId: ['p'], userId: 'u' }),
    () => manager.listSessions({ userId: 'u', limit: -1 }),
    () => manager.listSessions({ userId: 'u', limit: 1.5 }),
    () => manager.listSessions({ userId: 'u', limit: '10' }),
    () => manager.listSessions({ userId: 'u', offset: Number.NaN }),
    () => manager.listSessions({ userId: 'u', status: 'deleted' }),
    () => manager.cleanupSessions({ userId: 'u', maxAgeMs: -5 }),
    () => manager.cleanupSessions({ userId: 'u', maxAgeMs: 2 ** 60 }),
    () => manager.getSessionContext('00000000-0000-4000-8000-000000000000', 'u', { threshold: 150 }),
    () => manager.getSessionContext('00000000-0000-4000-8000-000000000000', 'u', { threshold: -1 }),
    () => manager.fork({ sessionId: '00000000-0000-4000-8000-000000000000', userId: 'u', title: 'x'.repeat(2000) }),
  ]
  for (const [i, c] of cases.entries()) await rejectsWith(t, c, "INVALID_ARGUMENT", undefined, `case ${i}`)
  t.assert.throws(() => new SessionManager({ contextWindow: 0 }), (e) => e.code === 'INVALID_ARGUMENT')
  t.assert.throws(() => new SessionManager({ compactThreshold: 101 }), (e) => e.code === 'INVALID_ARGUMENT')
  t.assert.throws(() => new SessionManager({ databasePath: 5 }), (e) => e.code === 'INVALID_ARGUMENT')
  t.assert.throws(() => new SessionManager({ nonsense: true }), (e) => e.code === 'INVALID_ARGUMENT' && /nonsense/.test(e.message))
  t.assert.throws(() => new SessionManager({ workingDirectory: '/no/such/folder' }), (e) => e.code === 'INVALID_ARGUMENT')
  await manager.close()
})

test('store: missing folder, a folder, and a file that is not SQLite give STORE_ERROR and stay untouched', (t) => {
  const dir = tempDir()
  const missing = path.join(dir, 'nope', 'db.sqlite')
  t.assert.throws(() => new SessionManager({ databasePath: missing, workingDirectory: workDir(dir) }), (e) => e.code === 'STORE_ERROR' && e.message.includes(missing))
  t.assert.throws(() => new SessionManager({ databasePath: dir, workingDirectory: workDir(dir) }), (e) => e.code === 'STORE_ERROR')
  const junk = path.join(dir, 'junk.db')
  const bytes = Buffer.from('this is not a database, and must survive '.repeat(200))
  fs.writeFileSync(junk, bytes)
  t.assert.throws(() => new SessionManager({ databasePath: junk, workingDirectory: workDir(dir) }), (e) => e.code === 'STORE_ERROR' && e.message.includes(junk))
  t.assert.deepStrictEqual(fs.readFileSync(junk), bytes)
  t.assert.throws(() => new SessionManager({ databasePath: '/proc/csm/sessions.db', workingDirectory: workDir(dir) }), (e) => e.code === 'STORE_ERROR')
})

test('store: the default database lives in a private state folder outside the working directory; env overrides', async (t) => {
  const dir = tempDir()
  const work = path.join(dir, 'work')
  fs.mkdirSync(work)
  // A database left inside the working directory (an older version's layout, or one an agent
  // planted there) is never adopted: the folder is the agent's.
  const legacy = path.join(work, '.claude-sessions')
  fs.mkdirSync(legacy)
  // (An older version could be given this layout; this one refuses a database inside the working
  // directory, so the old manager here runs elsewhere.)
  const old = new SessionManager({ workingDirectory: workDir(dir, 'elsewhere'), databasePath: path.join(legacy, 'sessions.db') })
  await old.getOrCreateSession({ projectId: 'p', userId: 'u' })
  await old.close()
  const run = (env) => {
    const child = spawn(process.execPath, ['-e', `
      const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
      const m = new SessionManager({ workingDirectory: ${JSON.stringify(work)} });
      m.listSessions({ userId: 'u' }).then((s) => console.log(JSON.stringify({ ...m.info(), sessions: s.length })))`], { env: { ...process.env, ...env } })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    return new Promise((r) => child.on('exit', () => r(out.trim())))
  }
  const state = path.join(dir, 'xdg-state')
  const info = JSON.parse(await run({ XDG_STATE_HOME: state, CLAUDE_SESSIONS_DB: '', CLAUDE_SESSIONS_STATE_DIR: '' }))
  t.assert.ok(info.databasePath.startsWith(path.join(state, 'claude-session-manager') + path.sep), info.databasePath)
  t.assert.ok(!info.databasePath.startsWith(work + path.sep), 'not under the working directory')
  t.assert.strictEqual(info.sessions, 0, 'a database found in the working directory is not adopted')
  t.assert.ok(fs.existsSync(path.join(legacy, 'sessions.db')), 'and is left where it is')
  t.assert.strictEqual(fs.statSync(info.databasePath).mode & 0o777, 0o600)
  t.assert.strictEqual(fs.statSync(info.stateDirectory).mode & 0o777, 0o700)
  t.assert.strictEqual(info.isolateTenants, 'user', 'tenants are apart by default')
  const envDb = path.join(dir, 'from-env.db')
  t.assert.strictEqual(JSON.parse(await run({ CLAUDE_SESSIONS_DB: envDb })).databasePath, envDb)
})

for (const backend of testBackends()) {
  test(`cleanup: deletes idle archived sessions, keeps active ones unless told${backendTag(backend)}`, async (t) => {
    const { manager } = makeManager({ backend })
    await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
    await manager.startFresh({ projectId: 'p', userId: 'u' })
    await manager.startFresh({ projectId: 'p', userId: 'u' })
    await new Promise((r) => setTimeout(r, 20))
    const kept = await manager.cleanupSessions({ userId: 'u', maxAgeMs: 10 })
    t.assert.deepStrictEqual(kept, { deleted: 2, remaining: 1 })
    const all = await manager.cleanupSessions({ userId: 'u', maxAgeMs: 10, keepActive: false })
    t.assert.deepStrictEqual(all, { deleted: 1, remaining: 0 })
    const none = await manager.cleanupSessions({ userId: 'u', maxAgeMs: 3_600_000 })
    t.assert.deepStrictEqual(none, { deleted: 0, remaining: 0 })
    await manager.close()
  })
}

for (const backend of testBackends()) {
  test(`close: later calls reject with CLOSED${backendTag(backend)}`, async (t) => {
    const { manager } = makeManager({ backend })
    await manager.close()
    await rejectsWith(t, manager.listSessions({ userId: 'u' }), 'CLOSED')
  })
}

test('store: two Node processes writing to one database at once lose nothing', async (t) => {
  const dir = tempDir()
  const db = path.join(dir, 'shared.db')
  const perProcess = 150
  const script = `
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
    const m = new SessionManager({ databasePath: ${JSON.stringify(db)}, workingDirectory: ${JSON.stringify(workDir(dir))} });
    (async () => {
      const ids = [];
      await Promise.all(Array.from({ length: ${perProcess} }, async (_, i) => {
        const r = await m.getOrCreateSession({ projectId: 'p' + process.argv[1] + '-' + i, userId: 'shared' });
        ids.push(r.session.id);
        await m.getOrCreateSession({ projectId: 'common', userId: 'shared' });
      }));
      console.log(JSON.stringify(ids));
      await m.close();
    })().catch((e) => { console.error(e.code, e.message); process.exit(1) });`
  const run = (n) =>
    new Promise((resolve, reject) => {
      const c = spawn(process.execPath, ['-e', script, String(n)])
      let out = ''
      let err = ''
      c.stdout.on('data', (d) => (out += d))
      c.stderr.on('data', (d) => (err += d))
      c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child ${n} failed: ${err}`))))
    })
  const [a, b] = await Promise.all([run(1), run(2)])
  t.assert.strictEqual(a.length + b.length, 2 * perProcess)
  const m = new SessionManager({ databasePath: db, workingDirectory: workDir(dir) })
  const all = await m.listSessions({ userId: 'shared', limit: 1000 })
  t.assert.strictEqual(all.length, 2 * perProcess + 1, 'every write landed, and "common" exists once')
  t.assert.deepStrictEqual(new Set(all.map((s) => s.id)), new Set([...a, ...b, ...all.filter((s) => s.projectId === 'common').map((s) => s.id)]))
  await m.close()
})

test('store: an unreachable PostgreSQL URL is STORE_ERROR without the password', (t) => {
  const dir = tempDir()
  const open = (databaseUrl, extra = {}) => new SessionManager({ databaseUrl, workingDirectory: workDir(dir), stateDirectory: path.join(dir, 'state'), ...extra })
  for (const url of ['postgresql://app:Sup3rSecretPw@127.0.0.1:1/db?connect_timeout=2&schema=public', 'postgres://app:Sup3rSecretPw@127.0.0.1:1/db']) {
    let e
    try {
      open(url)
    } catch (err) {
      e = err
    }
    t.assert.strictEqual(e?.code, 'STORE_ERROR', String(e))
    t.assert.doesNotMatch(e.message, /Sup3rSecretPw/)
    t.assert.match(e.message, /postgresql:\/\/app@127\.0\.0\.1:1\/db/)
  }
})

test('store: a refused PostgreSQL login is STORE_ERROR without the password', (t) => {
  if (skipWithoutPostgres(t)) return
  const dir = tempDir()
  // A role that does not exist, with a password: refused whether the server checks passwords or
  // trusts loopback connections, so the refusal is always exercised.
  const u = new URL(PG_URL)
  u.username = `csm_no_such_role_${process.pid}`
  u.password = 'Wr0ngPassw0rd'
  let e
  try {
    new SessionManager({ databaseUrl: u.href, workingDirectory: workDir(dir), stateDirectory: path.join(dir, 'state') }).close()
  } catch (err) {
    e = err
  }
  t.assert.strictEqual(e?.code, 'STORE_ERROR', String(e))
  t.assert.doesNotMatch(e.message, /Wr0ngPassw0rd/)
  t.assert.match(e.message, new RegExp(u.username))
})
