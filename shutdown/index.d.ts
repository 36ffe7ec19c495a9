import type { SessionManager } from '../index'

/** The signals `closeOnSignals` listens to by default: SIGTERM, SIGINT, SIGHUP. */
export declare const DEFAULT_SIGNALS: readonly string[]

export interface CloseOnSignalsOptions {
  /** Default `['SIGTERM', 'SIGINT', 'SIGHUP']`. */
  signals?: string[]
  /** How long to wait for `close()` before the process goes on stopping (ms). Default 30000. */
  timeoutMs?: number
}

/**
 * Graceful shutdown: on the first of `signals`, closes the manager(s) — every task is aborted
 * and recorded as `aborted`, every CLI and its tools stopped — then, unless another listener for
 * that signal remains (which then decides), raises the signal again so the process ends with the
 * usual code. A second signal while closing exits at once. Returns a function removing the
 * handlers. Nothing is installed unless you call it.
 *
 * ```ts
 * const manager = new SessionManager()
 * closeOnSignals(manager)
 * ```
 */
export declare function closeOnSignals(manager: SessionManager | SessionManager[], options?: CloseOnSignalsOptions): () => void
