// Load: 4 Node processes share one database (3 on PostgreSQL) and run 500 tasks over 50 sessions (150 over 15 on PostgreSQL) through the real
// CLI, with API errors injected and some tasks aborted. Afterwards every task has exactly one row
// with a final status, every session's totals are the sum of its tasks, no two tasks of one
// session overlapped, and no CLI process is left.
import { test } from 'node:test'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { addon, makeManager, processesMentioning, startStandInServer, testBackends, backendTag } from './helpers.mjs'

// SQLite: 4 processes on one file. PostgreSQL: 3 processes (as 3 nodes would) on one schema, a
// smaller run, since everything but the store is the same code.
const RUNS = { sqlite: { PROCESSES: 4, TASKS: 500, SESSIONS: 50 }, postgres: { PROCESSES: 3, TASKS: 150, SESSIONS: 15 } }

for (const backend of testBackends()) {
  const { PROCESSES, TASKS, SESSIONS } = RUNS[backend]
  test(`load: ${PROCESSES} processes, ${TASKS} tasks, ${SESSIONS} sessions, injected errors and aborts${backendTag(backend)}`, { timeout: 15 * 60_000 }, async (t) => {
    let n = 0
    const server = await startStandInServer({
      defaultReply: () => {
        n++
        if (n % 11 === 5) return { error: { status: [429, 500, 529][n % 3] } }
        return { text: `ok ${n}`, chunkDelayMs: n % 4 === 0 ? 40 : 0 }
      },
    })
    // A failed assertion must not leave the server (and so this file's process) running.
    t.after(() => server.close())
    const { manager, work, configDir, store } = makeManager({ server, backend })
    const sessions = []
    for (let i = 0; i < SESSIONS; i++) sessions.push((await manager.getOrCreateSession({ projectId: 'load', userId: 'load', preferActive: false })).session.id)
    await manager.close()
    // Warm CLIs on (the default), at most 4 per worker: tasks of the processes interleave on the
    // same sessions, so warm CLIs go stale and are replaced all the time (and 16 per worker would
    // be ~8 GB of idle CLIs on the test machine).
    const options = { ...store, workingDirectory: work, env: { ...server.env(), CLAUDE_CONFIG_DIR: configDir }, maxConcurrentTasks: 6, queueTimeoutMs: 600_000, maxWarmSessions: 4 }
    const run = (w) =>
      new Promise((resolve, reject) => {
        const c = spawn(process.execPath, [path.resolve('__test__/fixtures/load-worker.mjs'), JSON.stringify(options), String(w), String(TASKS / PROCESSES), JSON.stringify(sessions)], { stdio: ['ignore', 'pipe', 'inherit'] })
        let out = ''
        c.stdout.on('data', (d) => (out += d))
        c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`worker ${w} exited ${code}`))))
      })
    const summaries = await Promise.all(Array.from({ length: PROCESSES }, (_, w) => run(w)))
    const sum = (k) => summaries.reduce((a, s) => a + s[k], 0)
    t.diagnostic(`outcomes: ${JSON.stringify(summaries.map((s) => s.codes))}; ok ${sum('ok')}, failed ${sum('failed')}, aborted ${sum('aborted')}`)
    t.diagnostic(`samples: ${JSON.stringify(Object.assign({}, ...summaries.map((s) => s.samples)))}`)
    t.assert.deepStrictEqual(summaries.flatMap((s) => s.rejected), [], 'no task was rejected')
    t.assert.strictEqual(sum('ok') + sum('failed') + sum('aborted'), TASKS)
    t.assert.ok(sum('failed') > 0 && sum('aborted') > 0 && sum('ok') > 0, 'errors and aborts were exercised')
    const codes = new Set(summaries.flatMap((s) => Object.keys(s.codes)))
    t.assert.deepStrictEqual([...codes].filter((c) => c !== 'API_ERROR' && c !== 'ABORTED'), [], 'every failure is an injected one')

    const check = new addon.SessionManager(options)
    t.after(() => check.close())
    let rows = 0
    const unstarted = new Set(summaries.flatMap((s) => s.unstarted))
    for (const id of sessions) {
      const s = await check.getSession(id, 'load')
      const tasks = await check.listTasks(id, 'load')
      rows += tasks.length
      for (const task of tasks) t.assert.ok(!unstarted.has(task.id), 'a task aborted while it waited has no row')
      for (const task of tasks) t.assert.ok(['succeeded', 'failed', 'aborted', 'timed_out'].includes(task.status), task.status)
      t.assert.strictEqual(s.taskCount, tasks.length)
      const cost = tasks.reduce((a, x) => a + x.costUsd, 0)
      t.assert.ok(Math.abs(s.totalCostUsd - cost) < 1e-9, `${s.totalCostUsd} vs ${cost}`)
      for (const k of ['inputTokens', 'outputTokens', 'cacheReadInputTokens', 'cacheCreationInputTokens']) {
        t.assert.strictEqual(s.usage[k], tasks.reduce((a, x) => a + x.usage[k], 0), k)
      }
    }
    t.assert.strictEqual(rows, TASKS - unstarted.size, 'exactly one row per task that started (none for those aborted while waiting)')
    // No two API calls of one session were in flight at once (the CLI sends the session id).
    const bySession = new Map()
    for (const r of server.requests.filter((x) => x.sessionId)) bySession.set(r.sessionId, [...(bySession.get(r.sessionId) ?? []), r])
    for (const [id, reqs] of bySession) {
      reqs.sort((a, b) => a.receivedAt - b.receivedAt)
      for (let i = 1; i < reqs.length; i++) t.assert.ok(reqs[i].receivedAt >= reqs[i - 1].endedAt, `overlap in session ${id}`)
    }
    t.assert.deepStrictEqual(sessions.flatMap((id) => processesMentioning(id)), [], 'no CLI process left')
  })
}
