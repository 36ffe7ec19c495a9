#!/usr/bin/env node
// getUsage over a large ledger: `node benchmark/usage.mjs [--sessions=100000] [--calls=10] [--runs=20]`
//
// Fills the key proxy's ledger (`model_calls`) of a fresh store with `calls` model calls for each of
// `sessions` sessions (1,000 users, 10 projects each, spread over 60 days), written straight into
// the database (SQLite with the `sqlite3` shell, PostgreSQL with `psql` and generate_series: the
// manager's own path would need that many model calls), then times `manager.getUsage` for the
// queries an app makes: one user by day, by model and by session, one project, one session, and
// every user by day. Median and p95 of `runs` calls each. PostgreSQL runs when
// CSM_BENCH_DATABASE_URL or CSM_TEST_DATABASE_URL is set. Prints a Markdown table.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { SessionManager } = require('../index.js')

const opt = {}
for (const a of process.argv.slice(2)) {
  const m = /^--([^=]+)(?:=(.*))?$/.exec(a)
  if (m) opt[m[1]] = m[2] ?? true
}
const SESSIONS = Number(opt.sessions ?? 100_000)
const CALLS = Number(opt.calls ?? 10)
const RUNS = Number(opt.runs ?? 20)
const USERS = 1000
const PG_URL = process.env.CSM_BENCH_DATABASE_URL || process.env.CSM_TEST_DATABASE_URL
const DAY = 86_400_000
const now = Date.now()

// The rows, in SQL both dialects read (the session id, a UUID, is built per dialect): session s belongs to user s % USERS, project (s / USERS) % 10.
const fill = (table, series, sessionId) => `
  INSERT INTO ${table} (task_id, session_id, user_id, project_id, model, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, usd, reserved, at)
  SELECT 'task-' || (n / ${CALLS}), ${sessionId}, 'user-' || ((n / ${CALLS}) % ${USERS}),
    'project-' || (((n / ${CALLS}) / ${USERS}) % 10),
    CASE n % 3 WHEN 0 THEN 'claude-sonnet-4-5' WHEN 1 THEN 'claude-haiku-4-5' ELSE 'claude-opus-4-1' END,
    1000 + n % 5000, 100 + n % 700, n % 2000, n % 300, 0.001 * (1 + n % 50), false,
    ${now} - (n % 60) * ${DAY} - (n % 1000)
  FROM ${series};`

function time(fn) {
  return async () => {
    const t0 = process.hrtime.bigint()
    const rows = await fn()
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6, groups: rows.length }
  }
}

async function measure(manager) {
  const since = now - 30 * DAY
  const queries = [
    ['one user, by day (30 days)', () => manager.getUsage({ userId: 'user-7', since, groupBy: 'day' })],
    ['one user, by model', () => manager.getUsage({ userId: 'user-7', groupBy: 'model' })],
    ['one user, by session', () => manager.getUsage({ userId: 'user-7', groupBy: 'session' })],
    ["one user's project, by day", () => manager.getUsage({ userId: 'user-7', projectId: 'project-3', groupBy: 'day' })],
    ['one session, by model', () => manager.getUsage({ sessionId: '00000000-0000-4000-8000-000000004242', groupBy: 'model' })],
    ['everyone, by day (30 days)', () => manager.getUsage({ since, groupBy: 'day' })],
  ]
  const out = []
  for (const [name, q] of queries) {
    const run = time(q)
    await run() // warm-up
    const samples = []
    let groups = 0
    for (let i = 0; i < RUNS; i++) {
      const r = await run()
      samples.push(r.ms)
      groups = r.groups
    }
    samples.sort((a, b) => a - b)
    out.push({ name, median: samples[Math.floor(samples.length / 2)], p95: samples[Math.min(samples.length - 1, Math.ceil(samples.length * 0.95) - 1)], groups })
  }
  return out
}

async function sqlite() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csm-usage-'))
  fs.mkdirSync(path.join(dir, 'work'))
  const databasePath = path.join(dir, 'sessions.db')
  new SessionManager({ databasePath, workingDirectory: path.join(dir, 'work') }).close()
  const series = `(WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n + 1 < ${SESSIONS * CALLS}) SELECT n FROM c)`
  execFileSync('sqlite3', [databasePath], { input: `BEGIN;${fill('model_calls', series, `'00000000-0000-4000-8000-' || substr('000000000000' || (n / ${CALLS}), -12, 12)`)}COMMIT;ANALYZE;` })
  const manager = new SessionManager({ databasePath, workingDirectory: path.join(dir, 'work') })
  try {
    return await measure(manager)
  } finally {
    await manager.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function postgres() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csm-usage-'))
  fs.mkdirSync(path.join(dir, 'work'))
  const databaseSchema = `csm_bench_usage_${process.pid}`
  const options = { databaseUrl: PG_URL, databaseSchema, workingDirectory: path.join(dir, 'work') }
  await new SessionManager(options).close()
  const psql = (sql) => execFileSync('psql', [PG_URL, '-q', '-v', 'ON_ERROR_STOP=1', '-c', `SET client_min_messages = warning; ${sql}`], { stdio: ['ignore', 'ignore', 'inherit'] })
  try {
    psql(fill(`${databaseSchema}.model_calls`, `generate_series(0::bigint, ${SESSIONS * CALLS - 1}) AS g(n)`, `'00000000-0000-4000-8000-' || lpad((n / ${CALLS})::text, 12, '0')`))
    psql(`ANALYZE ${databaseSchema}.model_calls`)
    const manager = new SessionManager(options)
    try {
      return await measure(manager)
    } finally {
      await manager.close()
    }
  } finally {
    psql(`DROP SCHEMA ${databaseSchema} CASCADE`)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const f = (ms) => (ms < 10 ? ms.toFixed(2) : ms.toFixed(1))
console.log(`getUsage over ${SESSIONS.toLocaleString('en')} sessions × ${CALLS} model calls (${(SESSIONS * CALLS).toLocaleString('en')} ledger rows), ${USERS} users; ${RUNS} runs each, ms\n`)
console.log('| query | groups | SQLite median | SQLite p95 | PostgreSQL median | PostgreSQL p95 |')
console.log('| --- | ---: | ---: | ---: | ---: | ---: |')
const lite = await sqlite()
const pg = PG_URL ? await postgres() : null
for (let i = 0; i < lite.length; i++) {
  const p = pg?.[i]
  console.log(`| ${lite[i].name} | ${lite[i].groups} | ${f(lite[i].median)} | ${f(lite[i].p95)} | ${p ? f(p.median) : 'n/a'} | ${p ? f(p.p95) : 'n/a'} |`)
}
