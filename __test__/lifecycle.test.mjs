// Nothing lost at the edges: close() and signals while tasks run, slot waits, deletion between
// queued tasks, interrupted tasks counted, leftovers of killed CLIs. Real CLI, stand-in API.
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { addon, makeManager, rejectsWith, startStandInServer, processesMentioning, tempDir, until, gate } from './helpers.mjs'

const { SessionManager } = addon

// A tool command whose processes can be found on the host: the shell's command line has the
// marker, and the long-running process is named by it (the CLI refuses a bare long `sleep`).
let nextId = process.pid % 1000
function sleepBash(marker) {
  const name = `${marker}-${nextId++}`
  return { step: { toolUse: { name: 'Bash', input: { command: `(exec -a ${name} tail -f /dev/null)` } } }, needles: [name, `${name}\u0000`] }
}
const alive = (needles) => needles.flatMap((n) => processesMentioning(n))

test('close() while a task runs and another waits for a slot: both settle ABORTED, rows final, session free', async (t) => {
  const server = await startStandInServer()
  const { manager, dir, work } = makeManager({ server, maxConcurrentTasks: 1, sandbox: 'none' })
  const tool = sleepBash(`close-marker-${process.pid}`)
  server.enqueue(tool.step)
  const a = manager.executeTask({ prompt: 'a', projectId: 'p', userId: 'u', allowedTools: ['Bash'] })
  await until('the tool process', () => processesMentioning(tool.needles[1]).length > 0)
  let queuedB
  const bQueued = new Promise((r) => (queuedB = r))
  const b = manager.executeTask({ prompt: 'b', projectId: 'p', userId: 'u' }, { onEvent: (e) => e.type === 'task_queued' && queuedB() })
  await bQueued // B waits for the one slot
  await manager.close()
  const [ra, rb] = await Promise.all([a, b])
  t.assert.strictEqual(ra.error?.code, 'ABORTED')
  t.assert.strictEqual(rb.error?.code, 'ABORTED')
  await until('no tool process', () => alive(tool.needles).length === 0, 5000)
  const m2 = new SessionManager({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, sandbox: 'none' })
  const tasks = await m2.listTasks(ra.sessionId, 'u')
  t.assert.deepStrictEqual(tasks.map((x) => x.status), ['aborted'], 'A has its final row; B never started and has none')
  t.assert.strictEqual((await m2.getSession(ra.sessionId, 'u')).taskCount, 1)
  await m2.deleteSession(ra.sessionId, 'u') // not SESSION_BUSY: the lease was released
  await m2.close()
  await server.close()
})

test('a task waiting for a slot is not running, respects queueTimeoutMs, and deleting its session makes it SESSION_NOT_FOUND', async (t) => {
  const server = await startStandInServer()
  const { manager } = makeManager({ server, maxConcurrentTasks: 1 })
  const slow = gate() // the first task's answer, held until the test is done with the slot
  server.enqueue({ text: 'slow', after: slow.promise })
  const busy = manager.executeTask({ prompt: 'hold the slot', projectId: 'p', userId: 'u' })
  await until('the first task holds the slot (its model call in flight)', () => server.inFlight > 0)
  await rejectsWith(t, manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u', queueTimeoutMs: 0 }), 'SESSION_BUSY', /slot/)
  const { session } = await manager.getOrCreateSession({ projectId: 'q', userId: 'u', preferActive: false })
  const waiting = manager.executeTask({ prompt: 'wait', projectId: 'q', userId: 'u', sessionId: session.id })
  await new Promise((r) => setTimeout(r, 300))
  t.assert.deepStrictEqual(await manager.listTasks(session.id, 'u'), [], 'no running row while it waits')
  await manager.deleteSession(session.id, 'u') // not held against deletion
  await rejectsWith(t, waiting, 'SESSION_NOT_FOUND')
  slow.open()
  t.assert.strictEqual((await busy).success, true)
  await manager.close()
  await server.close()
})

test('an interrupted task counts in taskCount', async (t) => {
  const server = await startStandInServer()
  const { dir, work, configDir, manager } = makeManager({ server })
  await manager.close()
  server.enqueue({ text: 'never seen', delayMs: 60000 })
  const script = `
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
    const m = new SessionManager(${JSON.stringify({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, env: { ...server.env(), CLAUDE_CONFIG_DIR: configDir } })});
    m.executeTask({ prompt: 'hang', projectId: 'p', userId: 'u' }, { onEvent: (e) => { if (e.type === 'task_started') console.log(e.sessionId) } });`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  const sessionId = await new Promise((resolve) => child.stdout.once('data', (d) => resolve(String(d).trim())))
  child.kill('SIGKILL')
  await new Promise((r) => child.on('exit', r))
  // Killed right at task_started, bubblewrap's inner process may be left waiting for its dead
  // outer one (in two of three full runs before the sweep); the next process that makes a
  // sandboxed manager ends it (this process made its first long ago, so a fresh one is started).
  const waiting = await until('the sandbox gone or left waiting', () => sandboxPids(work).every((p) => orphaned(p)), 5000).then(() => sandboxPids(work))
  t.diagnostic(`bubblewrap processes of the killed task left waiting: ${waiting.length}`)
  const next = spawn(process.execPath, ['-e', `new (require(${JSON.stringify(path.resolve('index.js'))}).SessionManager)(${JSON.stringify({ databasePath: path.join(tempDir(), 's.db') })}).close()`], { stdio: 'inherit' })
  t.assert.strictEqual(await new Promise((r) => next.on('exit', r)), 0)
  await until('no bubblewrap process of the killed task', () => sandboxPids(work).length === 0, 5000)
  const m2 = new SessionManager({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, env: { ...server.env(), CLAUDE_CONFIG_DIR: configDir } })
  const tasks = await m2.listTasks(sessionId, 'u')
  t.assert.deepStrictEqual(tasks.map((x) => x.status), ['interrupted'])
  t.assert.strictEqual((await m2.getSession(sessionId, 'u')).taskCount, 1, 'counted like every other row')
  await m2.close()
  await server.close()
})

// The `bwrap` processes whose argv names `needle` (a folder of one test's sandbox), and whether
// one's parent is not a `bwrap` (an inner process whose outer one is gone).
function sandboxPids(needle) {
  const read = (p, f) => { try { return fs.readFileSync(`/proc/${p}/${f}`, 'utf8') } catch { return '' } }
  return fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && read(p, 'comm').trim() === 'bwrap' && read(p, 'cmdline').split('\0').some((a) => a.startsWith(needle)) && !/^\S+ \(.*\) Z/.test(read(p, 'stat')))
}
function orphaned(pid) {
  let stat
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return true // gone meanwhile: not waiting for anything
  }
  const ppid = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]
  try { return fs.readFileSync(`/proc/${ppid}/comm`, 'utf8').trim() !== 'bwrap' } catch { return true }
}

for (const sandbox of ['auto', 'none']) {
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
    if (sandbox === 'auto' && signal !== 'SIGTERM') continue // one signal is enough to show the sandbox half
    test(`${signal} (sandbox ${sandbox}) with closeOnSignals: the task ends aborted, its tool processes are gone, the process exits by the signal`, async (t) => {
      const server = await startStandInServer()
      const dir = tempDir()
      const work = path.join(dir, 'work')
      fs.mkdirSync(work)
      const tool = sleepBash(`signal-marker-${signal}-${sandbox}-${process.pid}`)
      server.enqueue(tool.step)
      const options = { databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, env: server.env(), sandbox }
      const script = `
        const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
        const { closeOnSignals } = require(${JSON.stringify(path.resolve('shutdown/index.js'))});
        const m = new SessionManager(${JSON.stringify(options)});
        closeOnSignals(m);
        m.executeTask({ prompt: 'run it', projectId: 'p', userId: 'u', allowedTools: ['Bash'] },
          { onEvent: (e) => { if (e.type === 'task_started') console.log(e.sessionId) } });`
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
      const sessionId = await new Promise((resolve) => child.stdout.once('data', (d) => resolve(String(d).trim())))
      await until('the tool process', () => processesMentioning(tool.needles[1]).length > 0)
      child.kill(signal)
      const [code, sig] = await new Promise((r) => child.on('exit', (c, s) => r([c, s])))
      t.assert.strictEqual(sig, signal, `exited by ${signal} (code ${code})`)
      await until('no process of the task', () => alive(tool.needles).length === 0, 5000)
      const m2 = new SessionManager({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, sandbox: 'none' })
      const tasks = await m2.listTasks(sessionId, 'u')
      t.assert.deepStrictEqual(tasks.map((x) => [x.status, x.errorCode]), [['aborted', 'ABORTED']], 'recorded by close(), not left running')
      await m2.close()
      await server.close()
    })
  }
}

test('a killed CLI leaves no per-process files behind (unsandboxed)', async (t) => {
  const server = await startStandInServer()
  const { manager, configDir } = makeManager({ server, sandbox: 'none', isolateTenants: 'none' })
  // A failed assertion must not leave the server (and so this file's process) running.
  t.after(async () => {
    await manager.close()
    await server.close()
  })
  server.enqueue({ text: 'slow', delayMs: 30000 })
  const controller = new AbortController()
  let started
  const seen = new Promise((r) => (started = r))
  const run = manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u' }, { signal: controller.signal, onEvent: (e) => e.type === 'system' && started() })
  await seen
  const sessions = path.join(configDir, 'sessions')
  await until('the CLI session file', () => fs.existsSync(sessions) && fs.readdirSync(sessions).some((f) => f.endsWith('.json')))
  controller.abort()
  t.assert.strictEqual((await run).error?.code, 'ABORTED')
  await until('the CLI files removed', () => fs.readdirSync(sessions).filter((f) => /^\d+\.(json|key)$/.test(f)).length === 0, 5000)
})

test('tasks on one session start in the order they reach it (four waiters)', async (t) => {
  const server = await startStandInServer()
  const { manager } = makeManager({ server })
  t.after(async () => {
    await manager.close()
    await server.close()
  })
  const { session } = await manager.getOrCreateSession({ projectId: 'order', userId: 'u' })
  server.enqueue({ text: 'first, slowly', delayMs: 1500 })
  const runs = []
  for (const n of [1, 2, 3, 4, 5]) {
    let queued
    const isQueued = new Promise((r) => (queued = r))
    runs.push(manager.executeTask({ prompt: `order ${n}`, projectId: 'order', userId: 'u', sessionId: session.id }, { onEvent: (e) => e.type === 'task_queued' && queued() }))
    await isQueued // each call reaches the session after the one before
  }
  const results = await Promise.all(runs)
  t.assert.deepStrictEqual(results.map((r) => r.success), [true, true, true, true, true])
  const order = server.requests.filter((q) => q.path === '/v1/messages').map((q) => [...JSON.stringify(q.body).matchAll(/order (\d)/g)].at(-1)?.[1]).filter(Boolean)
  t.assert.deepStrictEqual([...new Set(order)], ['1', '2', '3', '4', '5'], 'the model saw the prompts in arrival order (the newest prompt of each request)')
})

test('close() waits for a running CLI: when it resolves, the task has settled ABORTED and its CLI is gone (fails, not hangs, within a minute)', async (t) => {
  const server = await startStandInServer()
  t.after(() => server.close())
  const { manager } = makeManager({ server, sandbox: 'none' })
  t.after(() => manager.close())
  // The model's answer comes late (30 s, the stand-in's timer keeps the file alive that long):
  // the task is in flight, its CLI running, when close() is called.
  server.enqueue({ text: 'too late', delayMs: 30_000 })
  let settled = null
  let sessionId
  const run = manager.executeTask({ prompt: 'hold', projectId: 'p', userId: 'u' }, { onEvent: (e) => e.type === 'task_started' && (sessionId = e.sessionId) })
  run.then((r) => (settled = r), (e) => (settled = e))
  await until('the model call', () => server.requests.some((r) => r.path === '/v1/messages'), 60_000)
  t.assert.ok(sessionId && processesMentioning(sessionId).length > 0, 'control: the CLI runs')
  // A bound, not a timing assertion: a close() that never aborts would otherwise hang the suite.
  let timer
  const limit = new Promise((resolve) => (timer = setTimeout(() => resolve('no answer within 60 s'), 60_000)))
  const outcome = await Promise.race([manager.close().then(() => 'closed'), limit])
  clearTimeout(timer)
  t.assert.strictEqual(outcome, 'closed', 'close() did not resolve')
  // Read at once: close() must not resolve before the CLI is gone and the task settled.
  const left = processesMentioning(sessionId)
  for (const pid of left) try { process.kill(pid, 'SIGKILL') } catch {}
  t.assert.deepStrictEqual(left, [], 'close() resolved while the CLI still ran')
  await new Promise((r) => setImmediate(r))
  t.assert.ok(settled, 'close() resolved before the task settled')
  t.assert.strictEqual(settled.error?.code, 'ABORTED', JSON.stringify(settled))
})
