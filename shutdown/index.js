'use strict'
// claude-session-manager/shutdown — graceful shutdown on SIGTERM, SIGINT and SIGHUP.
//
// A library must not swallow signals silently, so nothing is installed unless you call
// `closeOnSignals` (the shared manager of `claude-session-manager/next` calls it for you; see
// there). What it does on the first of those signals:
//   1. `manager.close()`: no new task starts; every task (queued, waiting for a slot or running)
//      is aborted and recorded as `aborted`; every CLI and every process of its task is stopped;
//   2. then, if no other listener for that signal is left (yours would decide), the signal is
//      raised again with Node's default action, so the process ends as it would have (exit code
//      128 + the signal number).
// A second signal while closing exits at once.

const DEFAULT_SIGNALS = Object.freeze(['SIGTERM', 'SIGINT', 'SIGHUP'])

/**
 * Closes `manager` (or each of several managers) when the process is asked to stop.
 * Returns a function that removes the handlers again.
 */
function closeOnSignals(manager, options = {}) {
  const managers = Array.isArray(manager) ? manager : [manager]
  for (const m of managers) {
    if (!m || typeof m.close !== 'function') throw new TypeError('closeOnSignals: expected a SessionManager (or an array of them)')
  }
  const { signals = DEFAULT_SIGNALS, timeoutMs = 30000 } = options
  if (!Array.isArray(signals) || signals.some((s) => typeof s !== 'string')) throw new TypeError('closeOnSignals: signals must be an array of signal names')
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new TypeError('closeOnSignals: timeoutMs must be a non-negative number')
  let closing = false
  const handler = (signal) => {
    if (closing) {
      remove()
      process.kill(process.pid, signal)
      return
    }
    closing = true
    let timer
    const timeout = new Promise((resolve) => {
      timer = setTimeout(resolve, timeoutMs)
      timer.unref()
    })
    Promise.race([Promise.allSettled(managers.map((m) => m.close())), timeout]).then(() => {
      clearTimeout(timer)
      remove()
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
    })
  }
  const remove = () => {
    for (const s of signals) process.removeListener(s, handler)
  }
  for (const s of signals) process.on(s, handler)
  return remove
}

module.exports = { closeOnSignals, DEFAULT_SIGNALS }
