// What the task sections share: the stand-in server in a child process, temp folders, the
// claude binary, the lifetime wrapper's log, and bulk-populated session stores.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fork, execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { repoRoot } from './corpus.mjs'

const require = createRequire(import.meta.url)
// BENCH_ADDON points the sections at another build's .node (to record "before" figures).
export const addon = require(process.env.BENCH_ADDON || '../../index.js')

/** The tasks, scale and growth sections compare the manager with the Agent SDK on the same
 * process model, so they run the CLI unsandboxed (their lifetime wrapper execs a binary outside
 * any sandbox view); section `sandbox` measures what the sandbox and the key proxy add. */
export const BENCH_SANDBOX = 'none'

/** The claude binary the addon finds by itself (the platform package of @anthropic-ai/claude-code). */
export function claudeBinary() {
  const candidates = [
    path.join(repoRoot, 'node_modules/@anthropic-ai/claude-code-linux-x64/claude'),
    path.join(repoRoot, 'node_modules/.bin/claude'),
  ]
  for (const c of candidates) if (fs.existsSync(c)) return fs.realpathSync(c)
  throw new Error('no claude binary under node_modules: run npm ci first')
}

export function claudeVersion() {
  try {
    return execFileSync(claudeBinary(), ['--version'], { encoding: 'utf8', timeout: 30000 }).trim()
  } catch (e) {
    return `unknown (${e.message})`
  }
}

export function tempDir(prefix) {
  return fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), prefix)))
}

/**
 * Starts the stand-in server in a child process; resolves to { url, env, close }. `delayMs`: how
 * long each reply waits before it is sent (a model that takes time; default: at once).
 */
export function startStandIn({ delayMs = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, CSM_STANDIN_DELAY_MS: String(delayMs) }
    const child = fork(new URL('./standin-process.mjs', import.meta.url), [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    child.once('error', reject)
    child.once('message', (m) =>
      resolve({
        url: m.url,
        env: m.env,
        pid: child.pid,
        /** Scripts replies (`server.enqueue` in the child). */
        enqueue: (...replies) => child.send({ enqueue: replies }),
        close: () =>
          new Promise((done) => {
            child.once('exit', done)
            child.send('close')
          }),
      }),
    )
  })
}

/**
 * The environment the Agent SDK's CLI gets in these sections. The SDK's own default is the whole
 * process.env; give it that (as the manager, too, passes on what the CLI needs from it, e.g.
 * NODE_EXTRA_CA_CERTS, which costs the CLI ~20 ms to load), less credentials that would point the
 * CLI elsewhere, plus the stand-in's variables and `extra`.
 */
export function sdkEnvironment(standInEnv, extra) {
  const env = { ...process.env }
  for (const k of Object.keys(env)) {
    if (k === 'ANTHROPIC_AUTH_TOKEN' || k.startsWith('CLAUDE_CODE_USE_') || k.startsWith('AWS_') || k.startsWith('VERTEX_')) delete env[k]
  }
  return Object.assign(env, standInEnv, extra)
}

/**
 * The Agent SDK's options that give its CLI the warm manager's flags (`--input-format=stream-json
 * --output-format=stream-json --verbose --include-partial-messages --disable-slash-commands
 * --setting-sources= --model=sonnet --permission-mode=default`; the SDK adds the stream-json ones
 * itself and starts a new session without --session-id), in workspace `ws`.
 */
export function sdkWarmOptions(cli, ws, standInEnv) {
  return {
    pathToClaudeCodeExecutable: cli,
    cwd: ws.work,
    env: sdkEnvironment(standInEnv, { CLAUDE_CONFIG_DIR: ws.config }),
    model: 'sonnet',
    includePartialMessages: true,
    permissionMode: 'default',
    settingSources: [],
    extraArgs: { 'disable-slash-commands': null },
  }
}

/**
 * Memory of one process in KiB: VmRSS, RssAnon, RssFile, RssShmem (/proc/<pid>/status) and Pss,
 * Pss_Anon, Pss_File (/proc/<pid>/smaps_rollup).
 */
export function procMemoryKb(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  const kb = (text, k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(text) || [])[1] || 0)
  return {
    rss: kb(status, 'VmRSS'),
    anon: kb(status, 'RssAnon'),
    file: kb(status, 'RssFile'),
    shmem: kb(status, 'RssShmem'),
    pss: kb(rollup, 'Pss'),
    pssAnon: kb(rollup, 'Pss_Anon'),
    pssFile: kb(rollup, 'Pss_File'),
  }
}

/** A folder with a CLI config dir and a work dir. */
export function workspace(prefix) {
  const dir = tempDir(prefix)
  const config = path.join(dir, 'claude-config')
  const work = path.join(dir, 'work')
  fs.mkdirSync(config)
  fs.mkdirSync(work)
  return { dir, config, work, db: path.join(dir, 'sessions.db') }
}

/** Reads the lifetime wrapper's log: one record per CLI process it ran. */
export class LifetimeLog {
  constructor(file) {
    this.file = file
    this.seen = 0
  }
  all() {
    if (!fs.existsSync(this.file)) return []
    return fs
      .readFileSync(this.file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [main, forked, reaped, maxRssKb, status, pid, result = '0', mirror = '0'] = l.split(' ')
        return {
          main: BigInt(main),
          forked: BigInt(forked),
          reaped: BigInt(reaped),
          maxRssKb: Number(maxRssKb),
          status: Number(status),
          pid: Number(pid),
          result: result === '0' ? null : BigInt(result),
          // Whether the CLI ran with --session-mirror (PostgreSQL's transcript mirror).
          mirror: mirror === '1',
        }
      })
  }
  /** The records added since the last call (waiting up to `waitMs` for at least one). */
  async next(waitMs = 5000) {
    const deadline = Date.now() + waitMs
    for (;;) {
      const all = this.all()
      if (all.length > this.seen || Date.now() > deadline) {
        const fresh = all.slice(this.seen)
        this.seen = all.length
        return fresh
      }
      await new Promise((r) => setTimeout(r, 2))
    }
  }
}

/**
 * Compiles benchmark/lib/lifetime.c (static when the toolchain allows) into `dir`, for the real
 * claude binary: run without REAL_CLAUDE (the manager's `claude --version`, with an empty
 * environment) it runs that binary, so the manager sees the real version and takes the same
 * paths as in production (PostgreSQL's transcript mirror among them).
 */
export function buildWrapper(dir, real = claudeBinary()) {
  const src = path.join(repoRoot, 'benchmark/lib/lifetime.c')
  const out = path.join(dir, 'lifetime')
  const cc = process.env.CC || 'cc'
  const define = `-DBUILT_FOR=${JSON.stringify(real)}`
  try {
    execFileSync(cc, ['-O2', '-static', define, '-o', out, src], { stdio: 'pipe' })
    return { path: out, static: true }
  } catch {
    execFileSync(cc, ['-O2', define, '-o', out, src], { stdio: 'pipe' })
    return { path: out, static: false }
  }
}

/** A fake CLI (a shell script) that answers at once, to measure the wrapper's own cost. */
export function fakeCli(dir) {
  const p = path.join(dir, 'fake-claude.sh')
  fs.writeFileSync(
    p,
    `#!/bin/sh\ncat >/dev/null\necho '{"type":"system","subtype":"init","claude_code_version":"0.0.0","model":"sonnet"}'\necho '{"type":"result","subtype":"success","is_error":false,"result":"ok","num_turns":1,"total_cost_usd":0}'\n`,
    { mode: 0o755 },
  )
  return p
}

/**
 * Fills the store at `db` (created by the addon, so the schema is its own) with `n` sessions:
 * 100 users, 10 projects each, a fifth archived, most with a context measurement. One SQL
 * transaction through python3's sqlite3 module (or the sqlite3 CLI).
 */
export function populate(db, n, { users = 100, projects = 10, workDir = '/tmp' } = {}) {
  const now = Date.now()
  const sql = `
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < ${n - 1})
INSERT INTO sessions (id, project_id, user_id, status, parent_id, title, model, working_directory,
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens,
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source,
  context_measured_at, materialized, cli_cost_watermark, config_dir)
SELECT printf('%08x-%04x-4%03x-%x%03x-%012x', i, (i * 7919) % 65536, i % 4096, 8 + (i % 4), (i / 4) % 4096, (i * 2654435761) % 281474976710656),
  'p' || ((i / ${users}) % ${projects}), 'u' || (i % ${users}),
  CASE WHEN i % 5 = 0 THEN 'archived' ELSE 'active' END, NULL, 'session ' || i, 'sonnet', '${workDir}',
  ${now} - i * 1000, ${now} - i * 1000, ${now} - i * 997, i % 7, (i % 100) / 1000.0, i % 5000, i % 900, i % 20000, i % 3000,
  CASE WHEN i % 3 = 0 THEN NULL ELSE 1000 + i % 150000 END, 200000, CASE WHEN i % 3 = 0 THEN NULL ELSE 'api' END,
  CASE WHEN i % 3 = 0 THEN NULL ELSE ${now} - i * 1000 END, CASE WHEN i % 3 = 0 THEN 0 ELSE 1 END, 0, NULL
FROM seq;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
`
  const py = `import sqlite3,sys\nc=sqlite3.connect(sys.argv[1], isolation_level=None)\nc.executescript(sys.stdin.read())\nc.close()\n`
  try {
    execFileSync('python3', ['-c', py, db], { input: sql, stdio: ['pipe', 'pipe', 'pipe'] })
  } catch {
    execFileSync('sqlite3', [db], { input: sql, stdio: ['pipe', 'pipe', 'pipe'] })
  }
}

/** An id of a session `populate` made: index i, and its user. */
export function populatedSession(i, users = 100) {
  const hex = (v, w) => v.toString(16).padStart(w, '0')
  const big = (BigInt(i) * 2654435761n) % 281474976710656n
  return {
    id: `${hex(i, 8)}-${hex((i * 7919) % 65536, 4)}-4${hex(i % 4096, 3)}-${(8 + (i % 4)).toString(16)}${hex(Math.floor(i / 4) % 4096, 3)}-${big.toString(16).padStart(12, '0')}`,
    userId: `u${i % users}`,
  }
}

/**
 * Times store calls on random sessions of a store `populate` filled with `sessions` sessions:
 * getSessionContext and getSession (`iter` each), listSessions for a user and for a user's
 * project (`lists` each), after 200 untimed rounds. Returns the raw milliseconds.
 */
export async function timeStoreCalls(manager, sessions, { iter, lists }) {
  const ns = () => process.hrtime.bigint()
  const time = async (f) => {
    const s = ns()
    await f()
    return Number(ns() - s) / 1e6
  }
  let seed = 12345
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31
    return seed % n
  }
  const probe = populatedSession(7)
  if (!(await manager.getSession(probe.id, probe.userId))) throw new Error('the populated sessions are not readable through the addon')
  const t = { getSessionContext: [], getSession: [], listSessions: [], listSessionsProject: [] }
  for (let i = 0; i < 200; i++) {
    const s = populatedSession(rand(sessions))
    await manager.getSessionContext(s.id, s.userId)
    await manager.listSessions({ userId: s.userId })
  }
  for (let i = 0; i < iter; i++) {
    const s = populatedSession(rand(sessions))
    t.getSessionContext.push(await time(() => manager.getSessionContext(s.id, s.userId)))
    t.getSession.push(await time(() => manager.getSession(s.id, s.userId)))
  }
  for (let i = 0; i < lists; i++) {
    const u = `u${rand(100)}`
    t.listSessions.push(await time(() => manager.listSessions({ userId: u })))
    t.listSessionsProject.push(await time(() => manager.listSessions({ userId: u, projectId: `p${rand(10)}`, status: 'active' })))
  }
  return t
}
