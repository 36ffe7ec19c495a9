// One "node" of the postgres section's scale-out run: a Node process with its own manager over a
// shared store, running `tasks` new-session tasks `concurrency` at a time, then reporting back
// over IPC (completed, failure codes, the sessions it made) and exiting.
import { addon, BENCH_SANDBOX } from './harness.mjs'

process.once('message', async ({ store, workingDirectory, env, tasks, concurrency, node }) => {
  const m = new addon.SessionManager({ warmIdleMs: 0, sandbox: BENCH_SANDBOX, ...store, workingDirectory, env, maxConcurrentTasks: concurrency })
  const results = await Promise.all(
    Array.from({ length: tasks }, (_, i) =>
      m.executeTask({ prompt: `Node ${node} task ${i}: reply with one short sentence.`, projectId: `n${node}`, userId: 'u' }).then(
        (r) => ({ ok: r.success, code: r.error?.code ?? null, sessionId: r.sessionId }),
        (e) => ({ ok: false, code: e.code ?? String(e) }),
      ),
    ),
  )
  await m.close()
  process.send(
    { completed: results.filter((r) => r.ok).length, failures: results.filter((r) => !r.ok).map((r) => r.code), sessionIds: results.map((r) => r.sessionId).filter(Boolean) },
    () => process.exit(0),
  )
})
