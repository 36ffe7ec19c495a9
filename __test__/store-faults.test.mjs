// The store under faults: a briefly locked file, a full disk, a file deleted while open, and a
// Rust panic. Each is a clear error with a code; the Node process never crashes.
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { spawn, spawnSync, execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { addon, rejectsWith, tempDir, makeManager, startStandInServer, PG_URL, skipWithoutPostgres, workDir } from './helpers.mjs'

const { SessionManager } = addon

test('store faults: a file locked by another process for a moment makes writers wait, not fail', async (t) => {
  const dir = tempDir()
  const db = path.join(dir, 's.db')
  const m = new SessionManager({ databasePath: db, workingDirectory: workDir(dir) })
  await m.getOrCreateSession({ projectId: 'p', userId: 'u' })
  const locker = spawn('python3', ['-c', `
import sqlite3, sys, time
c = sqlite3.connect(${JSON.stringify(db)}, isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(1.5)
c.execute("COMMIT")`])
  const exited = new Promise((r) => locker.on('exit', r))
  await new Promise((r) => locker.stdout.on('data', (d) => String(d).includes('locked') && r()))
  const r = await m.getOrCreateSession({ projectId: 'q', userId: 'u' })
  t.assert.strictEqual(r.created, true)
  await exited
  t.assert.strictEqual((await m.listSessions({ userId: 'u' })).length, 2)
  await m.close()
})

test('store faults: a full disk is STORE_ERROR; what was written stays readable', async (t) => {
  const mnt = tempDir('csm-full-')
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', mnt])
  if (mounted.status !== 0) return t.skip(`cannot mount a small tmpfs here: ${String(mounted.stderr).trim()}`)
  try {
    const m = new SessionManager({ databasePath: path.join(mnt, 's.db'), workingDirectory: workDir(mnt) })
    let made = 0
    let error
    for (let i = 0; i < 5000 && !error; i++) {
      try {
        await m.startFresh({ projectId: `project-${i}-${'x'.repeat(200)}`, userId: 'u' })
        made++
      } catch (e) {
        error = e
      }
    }
    t.assert.ok(error, 'the disk filled up')
    t.assert.strictEqual(error.code, 'STORE_ERROR')
    t.assert.match(error.message, /full|disk|space/i)
    t.assert.ok(error.message.includes(path.join(mnt, 's.db')), `STORE_ERROR names the database: ${error.message}`)
    t.assert.ok(made > 0)
    const list = await m.listSessions({ userId: 'u', limit: 1000 })
    t.assert.strictEqual(list.length, made, 'every acknowledged write is there, nothing half-written')
    await m.close()
  } finally {
    spawnSync('umount', [mnt])
  }
})

test('store faults: a read-only database file is STORE_ERROR naming the path', async (t) => {
  // Root writes through file modes, so the file is made read-only by its filesystem instead (a
  // filesystem with a file open for writing cannot be remounted read-only: another process writes it first).
  const mnt = tempDir('csm-ro-')
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt])
  if (mounted.status !== 0) return t.skip(`cannot mount a tmpfs here: ${String(mounted.stderr).trim()}`)
  try {
    const db = path.join(mnt, 's.db')
    const made = spawnSync(process.execPath, ['-e', `
      const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
      const m = new SessionManager({ databasePath: ${JSON.stringify(db)}, workingDirectory: ${JSON.stringify(workDir(mnt))} });
      m.getOrCreateSession({ projectId: 'p', userId: 'u' }).then(() => m.close())`], { encoding: 'utf8' })
    t.assert.strictEqual(made.status, 0, made.stderr)
    const remount = spawnSync('mount', ['-o', 'remount,ro', mnt])
    t.assert.strictEqual(remount.status, 0, String(remount.stderr))
    const bytes = fs.readFileSync(db)
    t.assert.throws(() => new SessionManager({ databasePath: db, workingDirectory: workDir(mnt) }), (e) => e.code === 'STORE_ERROR' && e.message.includes(db), 'STORE_ERROR naming the path')
    t.assert.deepStrictEqual(fs.readFileSync(db), bytes)
  } finally {
    spawnSync('umount', [mnt])
  }
})

test('store faults: the database deleted while running is STORE_ERROR', async (t) => {
  const dir = tempDir()
  const db = path.join(dir, 's.db')
  const m = new SessionManager({ databasePath: db, workingDirectory: workDir(dir) })
  await m.getOrCreateSession({ projectId: 'p', userId: 'u' })
  for (const f of fs.readdirSync(dir).filter((f) => f.startsWith('s.db'))) fs.rmSync(path.join(dir, f))
  await rejectsWith(t, m.getOrCreateSession({ projectId: 'p2', userId: 'u' }), 'STORE_ERROR', /deleted or replaced/)
  await rejectsWith(t, m.listSessions({ userId: 'u' }), 'STORE_ERROR')
  await m.close()
})

// The hook that panics on demand (CSM_DEBUG_PANIC) exists in debug builds only; a release build
// (e.g. the release workflow's downloaded artifact) has no way to panic on purpose, so the test
// skips there, saying so. The variable's name is in the binary exactly when the hook is.
function loadedAddonIsDebugBuild() {
  const require = createRequire(import.meta.url)
  require('../index.js')
  const binaries = Object.keys(require.cache).filter((k) => k.endsWith('.node'))
  if (binaries.length !== 1) throw new Error(`expected one loaded .node binary, found ${JSON.stringify(binaries)}`)
  return { binary: binaries[0], debug: fs.readFileSync(binaries[0]).includes('CSM_DEBUG_PANIC') }
}

test('a Rust panic becomes an INTERNAL rejection and Node keeps running (debug builds)', async (t) => {
  const { binary, debug } = loadedAddonIsDebugBuild()
  if (!debug) return t.skip(`${path.basename(binary)} is a release build: it has no CSM_DEBUG_PANIC hook to panic with`)
  const script = `
    const { SessionManager, countTokens } = require(${JSON.stringify(path.resolve('index.js'))});
    const dir = require('fs').mkdtempSync(require('os').tmpdir() + '/csm-');
    require('fs').mkdirSync(dir + '/work');
    const m = new SessionManager({ databasePath: dir + '/s.db', workingDirectory: dir + '/work' });
    process.env.CSM_DEBUG_PANIC = '1';
    const out = {};
    m.listSessions({ userId: 'u' }).then(() => { out.async = 'resolved' }, (e) => { out.async = e.code })
      .then(() => { try { countTokens('x'); out.sync = 'returned' } catch (e) { out.sync = e.code } })
      .then(() => { delete process.env.CSM_DEBUG_PANIC; return m.listSessions({ userId: 'u' }) })
      .then((l) => { out.after = Array.isArray(l); console.log(JSON.stringify(out)) });`
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
  t.assert.strictEqual(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout.trim().split('\n').at(-1))
  t.assert.deepStrictEqual(out, { async: 'INTERNAL', sync: 'INTERNAL', after: true })
})

test('store faults: PostgreSQL drops every connection while a task runs; the task is still recorded', async (t) => {
  if (skipWithoutPostgres(t)) return
  const server = await startStandInServer({ defaultReply: () => ({ text: 'one two three four five six seven eight', chunkDelayMs: 100 }) })
  t.after(() => server.close())
  const app = `csm_faults_${process.pid}`
  const sep = PG_URL.includes('?') ? '&' : '?'
  const { manager } = makeManager({ server, backend: 'postgres', databaseUrl: `${PG_URL}${sep}application_name=${app}` })
  t.after(() => manager.close())
  const kill = () => execFileSync('psql', [PG_URL, '-qtAc', `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${app}'`], { encoding: 'utf8' }).trim()
  const first = await manager.executeTask({ prompt: 'first', projectId: 'p', userId: 'u' })
  t.assert.ok(first.success)
  const running = manager.executeTask({ prompt: 'second', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  while (!server.requests.some((r) => JSON.stringify(r.body ?? '').includes('second'))) await new Promise((r) => setTimeout(r, 20))
  t.assert.ok(Number(kill()) >= 1, 'the manager had connections to drop')
  const r = await running
  t.assert.ok(r.success, r.error?.message)
  const tasks = await manager.listTasks(first.sessionId, 'u')
  t.assert.deepStrictEqual(tasks.map((x) => x.status), ['succeeded', 'succeeded'])
  t.assert.strictEqual((await manager.getSession(first.sessionId, 'u')).taskCount, 2)
})
