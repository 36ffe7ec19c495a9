// One "node" of streams.mjs: a manager in a process of its own over a shared store, driven over
// IPC. `run` executes a task and reports each event's time as its `onEvent` saw it (the CLI's line
// reaching the manager: `performance.timeOrigin + performance.now()`, ms); with `waitForAnswers`
// its permission callback never answers by itself and reports when an answer given elsewhere
// settled the request.
import { addon } from './harness.mjs'

let manager
process.on('message', async (m) => {
  if (m.open) {
    manager = new addon.SessionManager(m.open)
    return process.send({ id: m.id, ok: true })
  }
  if (m.close) {
    await manager.close()
    return process.send({ id: m.id, ok: true }, () => process.exit(0))
  }
  const now = () => performance.timeOrigin + performance.now()
  try {
    if (m.run) {
      const events = []
      const r = await manager.executeTask(m.run, {
        onEvent: (e) => {
          events.push({ at: now(), e })
          if (e.type === 'task_started') process.send({ started: e.sessionId })
        },
        ...(m.waitForAnswers && {
          canUseTool: (_name, _input, options) =>
            new Promise((resolve) =>
              options.signal.addEventListener('abort', () => {
                process.send({ settled: options.requestId, at: now() })
                resolve({ behavior: 'deny', message: 'withdrawn' })
              }),
            ),
        }),
      })
      return process.send({ id: m.id, ok: true, value: { success: r.success, error: r.error, sessionId: r.sessionId, events } })
    }
    const value = await manager[m.call](...m.args)
    process.send({ id: m.id, ok: true, value })
  } catch (e) {
    process.send({ id: m.id, ok: false, error: { code: e.code, message: e.message } })
  }
})
