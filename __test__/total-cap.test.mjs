// maxConcurrentTasksTotal: a cap on running tasks that holds across every process sharing one
// database (SQLite file or PostgreSQL schema), enforced through the store's leases. Real CLI,
// stand-in API; each backend of testBackends().
import { test } from 'node:test'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { addon, backendTag, makeManager, rejectsWith, startStandInServer, testBackends } from './helpers.mjs'

const { SessionManager } = addon
const PROCESSES = 3
const TASKS_EACH = 3
const CAP = 2

for (const backend of testBackends()) {
  test(`maxConcurrentTasksTotal: ${PROCESSES} processes starting ${TASKS_EACH} tasks each never have more than ${CAP} running${backendTag(backend)}`, { timeout: 240_000 }, async (t) => {
    // Every answer is slow, so that a CLI holds its place for a while and a start that ignored
    // the cap would be seen as a third call to the "model" open at once.
    const server = await startStandInServer({ defaultReply: { text: 'slow answer', delayMs: 1500 } })
    t.after(() => server.close())
    const { manager, options } = makeManager({ server, backend })
    await manager.close() // the schema or file exists; the workers open it
    const shared = { ...options, maxConcurrentTasksTotal: CAP, queueTimeoutMs: 200_000 }
    const children = []
    t.after(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    })
    const run = (w) =>
      new Promise((resolve, reject) => {
        const c = spawn(process.execPath, [path.resolve('__test__/fixtures/cap-worker.mjs'), JSON.stringify(shared), String(w), String(TASKS_EACH)], { stdio: ['ignore', 'pipe', 'inherit'] })
        children.push(c)
        let out = ''
        c.stdout.on('data', (d) => (out += d))
        c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`worker ${w} exited ${code}`))))
      })
    const outcomes = await Promise.all(Array.from({ length: PROCESSES }, (_, w) => run(w)))
    t.assert.deepStrictEqual(outcomes.flat(), Array(PROCESSES * TASKS_EACH).fill('ok'), 'every task ran, none timed out in the queue')
    const calls = server.requests.filter((r) => r.path === '/v1/messages')
    t.assert.strictEqual(calls.length, PROCESSES * TASKS_EACH, 'one model call per task')
    // At most CAP at once, and CAP was reached: the workers did compete for the places.
    t.assert.strictEqual(server.maxInFlight, CAP, `the most calls open at once`)
  })

  test(`maxConcurrentTasksTotal: a task finding every place taken by another process waits, and fails SESSION_BUSY after queueTimeoutMs with no row${backendTag(backend)}`, async (t) => {
    const server = await startStandInServer()
    t.after(() => server.close())
    const { manager: first, options } = makeManager({ server, backend, maxConcurrentTasksTotal: 1 })
    t.after(() => first.close())
    // Another manager on the same store: another owner, as another process is.
    const second = new SessionManager(options)
    t.after(() => second.close())
    t.assert.throws(() => new SessionManager({ ...options, maxConcurrentTasksTotal: 0 }), (e) => e.code === 'INVALID_ARGUMENT' && /maxConcurrentTasksTotal/.test(e.message))
    server.enqueue({ text: 'holding the one place', delayMs: 2500 })
    const holder = first.executeTask({ prompt: 'hold', projectId: 'p', userId: 'u' })
    while (server.inFlight === 0) await new Promise((r) => setTimeout(r, 20))
    let sessionId
    const e = await rejectsWith(
      t,
      second.executeTask({ prompt: 'refused', projectId: 'q', userId: 'u', queueTimeoutMs: 100 }, { onEvent: (ev) => (sessionId ??= ev.sessionId) }),
      'SESSION_BUSY',
      /maxConcurrentTasksTotal 1/,
    )
    t.assert.ok(sessionId, `the task was queued on its new session (${e.message})`)
    t.assert.deepStrictEqual(await second.listTasks(sessionId, 'u'), [], 'no row: it never started')
    // Without a short timeout it waits for the place and then runs.
    const waiter = second.executeTask({ prompt: 'waits', projectId: 'q', userId: 'u', sessionId })
    t.assert.strictEqual((await holder).success, true)
    const waited = await waiter
    t.assert.strictEqual(waited.success, true, JSON.stringify(waited.error))
    t.assert.strictEqual(server.maxInFlight, 1)
  })
}
