// Shared set-up for the JS tests: a temp folder, a stand-in API server, and a manager whose CLI
// runs offline against it with its own CLAUDE_CONFIG_DIR.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import { execFileSync, spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
export const addon = require('../index.js')
export const { startStandInServer } = require('../testing/index.js')

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/** The `claude` CLI this package's dependencies installed, checked to run. */
export function findClaude() {
  const candidates = [
    path.join(root, 'node_modules', '.bin', 'claude'),
    path.join(root, 'node_modules', '@anthropic-ai', 'claude-code-linux-x64', 'claude'),
  ]
  for (const bin of candidates) {
    if (!fs.existsSync(bin)) continue
    const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 15_000 })
    if (r.status === 0) return bin
  }
  throw new Error(`no runnable claude CLI among: ${candidates.join(', ')}`)
}

export function tempDir(prefix = 'csm-') {
  return fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), prefix)))
}

/** Every file under a folder (absolute paths). A folder that goes while it is read is skipped: a
 * live or exiting CLI's lock and temporary folders come and go under its configuration folder. */
export function filesUnder(root) {
  const found = []
  const walk = (dir) => {
    let entries
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true })
    } catch (e) {
      if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return
      throw e
    }
    for (const e of entries) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else found.push(p)
    }
  }
  walk(root)
  return found
}

/** A gate for the stand-in's `Reply.after`: `{ promise, open }`; the promise settles when `open()`
 * is called, or after `ms` at the latest (so that a product that never gets there fails the test
 * instead of hanging it; the timer does not keep the process alive). */
export function gate(ms = 30_000) {
  let open
  const promise = new Promise((resolve) => {
    open = resolve
    setTimeout(resolve, ms).unref()
  })
  return { promise, open }
}

/**
 * A working directory beside a test's database: `<dir>/<name>`, made if missing. (A working
 * directory may not contain the database or the state folder, so `dir` itself cannot be one.)
 */
export function workDir(dir, name = 'work') {
  const w = path.join(dir, name)
  fs.mkdirSync(w, { recursive: true })
  return w
}

/** The PostgreSQL database the tests may use (`CSM_TEST_DATABASE_URL`), or ''. */
export const PG_URL = process.env.CSM_TEST_DATABASE_URL || ''

/** What a PostgreSQL-only test says when it is skipped (`.ci/run` looks for no such line). */
export const PG_SKIP_REASON = 'PostgreSQL tests skipped: set CSM_TEST_DATABASE_URL=postgresql://… to run them'

/**
 * With `CSM_REQUIRE_POSTGRES=1` (CI sets it with `CSM_TEST_DATABASE_URL`), a PostgreSQL test that
 * would be skipped fails instead: a missing database must never look like a pass.
 */
function requirePostgres() {
  if (!PG_URL && process.env.CSM_REQUIRE_POSTGRES === '1') {
    throw new Error('CSM_REQUIRE_POSTGRES=1 but CSM_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run')
  }
}

/**
 * For a PostgreSQL-only test: true (and the test reported as skipped, with the reason) when there
 * is no test database; use as `if (skipWithoutPostgres(t)) return`.
 */
export function skipWithoutPostgres(t) {
  requirePostgres()
  if (PG_URL) return false
  t.skip(PG_SKIP_REASON)
  return true
}

let skipNoted = false
/**
 * The store backends to run a test against: `sqlite`, and `postgres` when `CSM_TEST_DATABASE_URL`
 * is set (otherwise one line says they were skipped, and no `[postgres]` test is made at all).
 */
export function testBackends() {
  requirePostgres()
  if (!PG_URL && !skipNoted) {
    skipNoted = true
    console.log(PG_SKIP_REASON)
  }
  return PG_URL ? ['sqlite', 'postgres'] : ['sqlite']
}

/** A test name's suffix for a backend ('' for the default, SQLite). */
export const backendTag = (backend) => (backend === 'sqlite' ? '' : ` [${backend}]`)

const schemas = []
process.on('exit', () => {
  if (!schemas.length) return
  const sql = schemas.map((s) => `DROP SCHEMA IF EXISTS "${s}" CASCADE;`).join(' ')
  try {
    execFileSync('psql', [PG_URL, '-qc', sql], { stdio: 'ignore' })
  } catch {}
})

/** Where a manager of `backend` keeps its sessions: a fresh SQLite file or PostgreSQL schema. */
function storeOptions(backend, dir) {
  if (backend === 'sqlite') return { databasePath: path.join(dir, 'sessions.db') }
  if (backend !== 'postgres' || !PG_URL) throw new Error(`no such test backend: ${backend}`)
  const schema = `csm_js_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
  schemas.push(schema)
  return { databaseUrl: PG_URL, databaseSchema: schema }
}

/**
 * A manager over a fresh database (`backend`: `sqlite` or `postgres`); `server` is optional.
 * Warm processes are off (`warmIdleMs: 0`) unless the test asks for them: the suites written
 * before them check that a task's CLI is gone when the task is, which is the cold path's promise
 * (warm.test.mjs covers the warm one, the default).
 */
export function makeManager({ server, dir = tempDir(), backend = 'sqlite', ...options } = {}) {
  const configDir = path.join(dir, 'claude-config')
  fs.mkdirSync(configDir, { recursive: true })
  const home = path.join(dir, 'home')
  fs.mkdirSync(home, { recursive: true })
  const work = path.join(dir, 'work')
  fs.mkdirSync(work, { recursive: true })
  const store = storeOptions(backend, dir)
  const all = {
    warmIdleMs: 0,
    ...store,
    workingDirectory: work,
    // A HOME of its own: an unsandboxed CLI's Bash runs a login shell, which must not depend on
    // (or wait for a lock in) the profile of whoever runs the tests.
    env: { ...(server ? server.env() : {}), CLAUDE_CONFIG_DIR: configDir, HOME: home },
    ...options,
  }
  const manager = new addon.SessionManager(all)
  // `options`: what the manager was made with, for another manager (or process) on the same
  // store; `store`: its store options alone.
  return { manager, dir, work, configDir, store, options: all }
}

/** Waits until `check()` is truthy (polled every 50 ms) and returns its value; after `ms`,
 * returns the last (falsy) one, for `t.assert.ok(await eventually(...))`. */
export async function eventually(check, ms = 15000) {
  const end = Date.now() + ms
  for (;;) {
    const v = await check()
    if (v || Date.now() > end) return v
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** As {@link eventually}, but throws naming `what` when `check()` is still falsy after `ms`. */
export async function until(what, check, ms = 15000) {
  const v = await eventually(check, ms)
  if (!v) throw new Error(`timed out waiting for ${what}`)
  return v
}

/** Expects a promise (or function) to reject with an Error carrying `code`. */
export async function rejectsWith(t, fnOrPromise, code, messagePart, label = '') {
  try {
    await (typeof fnOrPromise === 'function' ? fnOrPromise() : fnOrPromise)
  } catch (e) {
    t.assert.ok(e instanceof Error, `not an Error: ${e}`)
    t.assert.strictEqual(e.code, code, `${label} expected ${code}, got ${e.code}: ${e.message}`)
    if (messagePart) t.assert.match(e.message, messagePart)
    return e
  }
  t.assert.fail(`${label} expected a rejection with ${code}`)
}

/** Processes whose command line mentions `needle` (e.g. a session id in the CLI's argv). */
export function processesMentioning(needle) {
  const found = []
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      if (cmd.includes(needle) && !/\) Z /.test(stat)) found.push(Number(pid))
    } catch {}
  }
  return found
}

/** The `claude` processes whose argv names `sessionId` (not the sandbox's launchers). */
export function cliProcesses(sessionId) {
  return processesMentioning(sessionId).filter((pid) => {
    try {
      return /claude/.test(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0])
    } catch {
      return false
    }
  })
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

/** Parses a text/event-stream body into `{ event, data, id }` records. */
export function parseSse(text) {
  const out = []
  for (const block of text.split(/\r?\n\r?\n/)) {
    let event = 'message'
    let id
    const data = []
    let any = false
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(':')) continue
      const i = line.indexOf(':')
      const field = i < 0 ? line : line.slice(0, i)
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '')
      if (field === 'event') event = value
      else if (field === 'data') data.push(value)
      else if (field === 'id') id = value
      any = true
    }
    if (any && data.length) out.push({ event, id, data: JSON.parse(data.join('\n')) })
  }
  return out
}

/** Reads an SSE response as it arrives: `next(pred)` resolves with the first event matching. */
export function sseReader(res) {
  const reader = res.body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  const seen = []
  let done = false
  return {
    seen,
    async next(pred) {
      for (;;) {
        const hit = seen.find(pred)
        if (hit) return hit
        if (done) throw new Error(`stream ended without the event; saw ${seen.map((e) => e.event + ':' + (e.data.type ?? '')).join(', ')}`)
        const chunk = await reader.read()
        if (chunk.done) done = true
        else buffer += decoder.decode(chunk.value, { stream: true })
        const cut = buffer.lastIndexOf('\n\n')
        if (cut >= 0) {
          seen.push(...parseSse(buffer.slice(0, cut + 2)))
          buffer = buffer.slice(cut + 2)
        }
      }
    },
  }
}
