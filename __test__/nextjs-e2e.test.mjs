// The Next.js example (examples/nextjs) end to end: `next build`, `next start` on a free loopback
// port (offline: the app starts the package's stand-in API itself), every route over HTTP, then
// the page in headless Chromium: a streamed reply, the context meter filling up and changing
// colour, Compact emptying it, Fork adding a session to the list, Start fresh, a Write the
// agent asks permission for (an approval card: Allow writes the file, Deny does not), a message
// typed while a task runs reaching the model in that task (steering), and the context panel with
// the CLI's own categories.
//
// The example depends on this package by path and installs it as a copy (`install-links`), so
// this test (re)installs the example when its copy is missing or older than the files here.
// Needs the npm registry only for that install; the browser part needs /usr/bin/chromium.
import { test } from 'node:test'
import fs from 'node:fs'
import os from 'node:os'
import net from 'node:net'
import path from 'node:path'
import { spawn, spawnSync, execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { parseSse, processesMentioning, tempDir, until, PG_URL } from './helpers.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const app = path.join(root, 'examples', 'nextjs')
const artifacts = path.join(root, 'test-artifacts')
const CHROMIUM = '/usr/bin/chromium'
const USER = 'e2e-user'
const FEATURE_USER = 'feat-user'
const OTHER_USER = 'alice'
const BROKE_USER = 'broke-user'

// ---- set-up helpers ----------------------------------------------------------------------

/** The files `npm pack` puts in this package (per package.json `files`), relative to root. */
function packageFiles() {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))
  const out = ['package.json']
  const walk = (rel) => {
    const abs = path.join(root, rel)
    if (!fs.existsSync(abs)) return
    if (fs.statSync(abs).isDirectory()) for (const f of fs.readdirSync(abs)) walk(path.join(rel, f))
    else out.push(rel)
  }
  for (const entry of pkg.files) {
    if (entry.includes('*')) {
      const re = new RegExp(`^${entry.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`)
      for (const f of fs.readdirSync(root)) if (re.test(f)) out.push(f)
    } else walk(entry.replace(/\/$/, ''))
  }
  return out
}

/** Why the example's installed copy of the package differs from this checkout, or null. */
function staleReason() {
  const installed = path.join(app, 'node_modules', 'claude-session-manager')
  if (!fs.existsSync(path.join(app, 'node_modules', 'next', 'package.json'))) return 'the example is not installed'
  if (!fs.existsSync(installed)) return 'the package is not installed in the example'
  if (fs.lstatSync(installed).isSymbolicLink()) return 'the package is a symlink (install-links is off)'
  for (const rel of packageFiles()) {
    const copy = path.join(installed, rel)
    if (!fs.existsSync(copy)) return `${rel} is missing from the installed copy`
    if (!fs.readFileSync(copy).equals(fs.readFileSync(path.join(root, rel)))) return `${rel} changed since the example was installed`
  }
  return null
}

function run(cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${(r.stdout || '').slice(-4000)}\n${(r.stderr || '').slice(-4000)}`)
  return r
}

function ensureExampleInstalled(t) {
  const why = staleReason()
  if (!why) return t.diagnostic('the example already has this checkout installed')
  t.diagnostic(`installing the example: ${why}`)
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
  if (!fs.existsSync(path.join(app, 'node_modules'))) {
    run(npm, ['ci', '--no-audit', '--no-fund'], { cwd: app })
  } else {
    // npm does not refresh a `file:` copy whose version is unchanged: drop it and install again.
    fs.rmSync(path.join(app, 'node_modules', 'claude-session-manager'), { recursive: true, force: true })
    run(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: app })
  }
  const still = staleReason()
  if (still) throw new Error(`the example's copy of the package is still stale after installing: ${still}`)
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Env for the app: offline (no real API key, no CLI settings of this machine). */
function appEnv(extra) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(ANTHROPIC_|CLAUDE_|CLAUDECODE|AWS_|GOOGLE_|VERTEX_|NEXT_|__NEXT)/.test(k)) continue
    env[k] = v
  }
  return { ...env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production', ...extra }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Headless Chromium (closed after the test), or null after t.skip when it is not installed. */
async function launchChromium(t) {
  if (!fs.existsSync(CHROMIUM)) {
    t.skip(`${CHROMIUM} is missing (install it with: apt-get install -y chromium)`)
    return null
  }
  const { chromium } = createRequire(path.join(app, 'package.json'))('playwright-core')
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  })
  t.after(() => browser.close())
  return browser
}

/**
 * A page in a new browser context, the errors it reports (uncaught exceptions and console
 * errors; with `expectHttpErrors`, not the browser's own lines for HTTP error answers the test
 * provokes) and `shot(name)`, a screenshot into the test artifacts.
 */
async function openPage(browser, t, { expectHttpErrors = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } })
  const page = await context.newPage()
  page.setDefaultTimeout(30000)
  const pageErrors = []
  page.on('pageerror', (e) => pageErrors.push(e.stack || e.message))
  // An exception React or Next.js catches (they then show their error page) is reported here too,
  // and said even when the test fails first on a wait it made hopeless.
  t.after(() => pageErrors.length && t.diagnostic(`errors in the page:\n${pageErrors.join('\n')}`))
  await page.exposeFunction('__e2eReportError', (text) => pageErrors.push(text))
  await page.addInitScript(() => {
    window.addEventListener('error', (e) => window.__e2eReportError(String((e.error && e.error.stack) || e.message)))
    window.addEventListener('unhandledrejection', (e) => window.__e2eReportError(`unhandled rejection: ${String((e.reason && e.reason.stack) || e.reason)}`))
  })
  page.on('console', (m) => {
    if (m.type() !== 'error') return
    if (expectHttpErrors && /^Failed to load resource: the server responded with a status of (400|402|404|409|500)/.test(m.text())) return
    pageErrors.push(`console: ${m.text()}`)
  })
  fs.mkdirSync(artifacts, { recursive: true })
  const shot = (name) => page.screenshot({ path: path.join(artifacts, name) })
  t.diagnostic(`screenshots in ${path.relative(root, artifacts)}/`)
  return { page, pageErrors, shot }
}

// ---- the test ------------------------------------------------------------------------------

test('nextjs example: build, start, every route over HTTP, and the page in Chromium', { timeout: 15 * 60 * 1000 }, async (t) => {
  ensureExampleInstalled(t)
  const nextBin = path.join(app, 'node_modules', 'next', 'dist', 'bin', 'next')

  const buildStarted = Date.now()
  run(process.execPath, [nextBin, 'build'], { cwd: app, env: appEnv() })
  t.diagnostic(`next build took ${((Date.now() - buildStarted) / 1000).toFixed(1)} s`)

  const work = tempDir('csm-next-e2e-')
  const state = tempDir('csm-next-e2e-state-') // the addon's state folder, apart from the working directory
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  let log = ''
  // With CSM_TEST_DATABASE_URL the app keeps its sessions in PostgreSQL (a schema of its own),
  // as a deployment of several instances would; else in its SQLite file.
  const pgSchema = PG_URL ? `csm_e2e_${process.pid}` : null
  const psql = (sql) => execFileSync('psql', [PG_URL, '-qtAc', sql], { encoding: 'utf8' }).trim()
  if (pgSchema) t.diagnostic(`example app on PostgreSQL, schema ${pgSchema}`)
  const server = spawn(process.execPath, [nextBin, 'start', '-H', '127.0.0.1', '-p', String(port)], {
    cwd: app,
    env: appEnv({
      CLAUDE_WORKING_DIR: work,
      CLAUDE_SESSIONS_STATE_DIR: state,
      DEMO_TOKENS_PER_TURN: '300000',
      // A daily spend cap for every user (high: never reached here) and a tiny one for one demo
      // user, so the page's spend line and "Spending limit reached" can be checked.
      BUDGET_USD_PER_USER_PER_DAY: '1000',
      DEMO_USER_BUDGETS: JSON.stringify({ [BROKE_USER]: 0.01 }),
      ...(pgSchema ? { CLAUDE_SESSIONS_DATABASE_URL: PG_URL, CLAUDE_SESSIONS_DATABASE_SCHEMA: pgSchema } : {}),
    }),
    detached: true, // its own process group, so everything it started can be stopped at once
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  server.stdout.on('data', (d) => (log += d))
  server.stderr.on('data', (d) => (log += d))
  let exited = false
  server.on('exit', () => (exited = true))
  t.after(async () => {
    if (!exited) {
      try {
        process.kill(-server.pid, 'SIGTERM')
      } catch {}
      for (let i = 0; i < 50 && !exited; i++) await sleep(100)
      if (!exited) {
        try {
          process.kill(-server.pid, 'SIGKILL')
        } catch {}
      }
    }
    fs.rmSync(work, { recursive: true, force: true })
    fs.rmSync(state, { recursive: true, force: true })
    if (pgSchema) psql(`DROP SCHEMA IF EXISTS "${pgSchema}" CASCADE`)
  })

  // Wait until it answers.
  const deadline = Date.now() + 60000
  for (;;) {
    if (exited) throw new Error(`next start exited:\n${log}`)
    try {
      await fetch(`${base}/api/demo-login`, { redirect: 'manual' })
      break
    } catch {}
    if (Date.now() > deadline) throw new Error(`next start did not answer within 60 s:\n${log}`)
    await sleep(200)
  }

  await t.test('routes over HTTP', async (t) => {
    let mark = Date.now()
    const lap = (what) => {
      t.diagnostic(`${what}: ${Date.now() - mark} ms`)
      mark = Date.now()
    }
    const headers = (user = USER) => ({ 'content-type': 'application/json', ...(user ? { 'x-demo-user': user } : {}) })
    const post = (route, body, user) => fetch(`${base}/api/claude/${route}`, { method: 'POST', headers: headers(user), body: typeof body === 'string' ? body : JSON.stringify(body) })
    const get = (route, user) => fetch(`${base}/api/claude/${route}`, { headers: headers(user) })
    const ok = async (resPromise) => {
      const res = await resPromise
      const text = await res.text()
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${text}`)
      return JSON.parse(text)
    }
    const fails = async (resPromise, status, code) => {
      const res = await resPromise
      const body = await res.json()
      t.assert.strictEqual(res.status, status, JSON.stringify(body))
      t.assert.strictEqual(body.error.code, code)
      return body.error
    }

    // The page signs the demo user in through /api/demo-login.
    const page = await fetch(`${base}/`, { redirect: 'manual' })
    t.assert.strictEqual(page.status, 307)
    t.assert.match(page.headers.get('location'), /\/api\/demo-login/)
    const login = await fetch(`${base}/api/demo-login?next=/`, { redirect: 'manual' })
    t.assert.strictEqual(login.status, 303)
    t.assert.match(login.headers.get('set-cookie'), /^demo_user=demo-user;/)
    const withCookie = await fetch(`${base}/`, { headers: { cookie: 'demo_user=demo-user' } })
    t.assert.strictEqual(withCookie.status, 200)
    t.assert.match(await withCookie.text(), /Sessions/)

    // 401 without a user, on every route.
    for (const res of await Promise.all([
      post('task', { prompt: 'x', projectId: 'p' }, null),
      post('stream', { prompt: 'x', projectId: 'p' }, null),
      get('session?projectId=p', null),
      post('session', { action: 'getOrCreate', projectId: 'p' }, null),
      get('compact?sessionId=00000000-0000-4000-8000-000000000000', null),
      post('compact', { sessionId: '00000000-0000-4000-8000-000000000000' }, null),
      post('message', { sessionId: '00000000-0000-4000-8000-000000000000', prompt: 'x' }, null),
      get('context?sessionId=00000000-0000-4000-8000-000000000000', null),
    ])) {
      t.assert.strictEqual(res.status, 401)
      t.assert.strictEqual((await res.json()).error.code, 'UNAUTHORIZED')
    }
    // The cookie works as well as the header.
    const byCookie = await fetch(`${base}/api/claude/session?projectId=p`, { headers: { cookie: 'demo_user=demo-user' } })
    t.assert.strictEqual(byCookie.status, 200)

    lap('sign-in and 401s')
    // 400s.
    await fails(post('task', '{"prompt": '), 400, 'INVALID_ARGUMENT')
    await fails(post('task', { prompt: 'x', projectId: 'p', userId: 'someone-else' }), 400, 'INVALID_ARGUMENT')
    await fails(post('task', { prompt: 'x', projectId: 'p', allowedTools: ['Bash'] }), 400, 'INVALID_ARGUMENT')
    await fails(post('session', { action: 'nope' }), 400, 'INVALID_ARGUMENT')
    await fails(get('compact'), 400, 'INVALID_ARGUMENT')

    // POST task: the TaskResult; the second task resumes the session.
    const first = await ok(post('task', { prompt: 'hello over http', projectId: 'http' }))
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    t.assert.strictEqual(first.result, 'Echo #1: hello over http')
    const second = await ok(post('task', { prompt: 'again', projectId: 'http', sessionId: first.sessionId }))
    t.assert.strictEqual(second.result, 'Echo #2: again')
    t.assert.ok(second.contextInfo.usagePercentage > first.contextInfo.usagePercentage, 'the demo stand-in pads usage per turn')

    lap('400s and two tasks')
    // POST stream: SSE, really streamed (events arrive over time), ending with the TaskResult.
    const res = await post('stream', { prompt: 'one two three four five six seven eight', projectId: 'http', sessionId: first.sessionId })
    t.assert.strictEqual(res.status, 200)
    t.assert.match(res.headers.get('content-type'), /^text\/event-stream/)
    const reader = res.body.getReader()
    const decoder = new TextDecoder()
    let text = ''
    const arrivals = []
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      text += decoder.decode(value, { stream: true })
      arrivals.push(Date.now())
    }
    const events = parseSse(text)
    t.assert.deepStrictEqual(events.slice(0, 2).map((e) => e.data.type), ['task_queued', 'task_started'])
    const deltas = events.filter((e) => e.data.type === 'stream_event' && e.data.event?.delta?.type === 'text_delta').map((e) => e.data.event.delta.text)
    t.assert.strictEqual(deltas.join(''), 'Echo #3: one two three four five six seven eight')
    t.assert.ok(arrivals.length > 3 && arrivals.at(-1) - arrivals[0] > 100, `the body arrived in ${arrivals.length} chunks over ${arrivals.at(-1) - arrivals[0]} ms`)
    const final = events.at(-1)
    t.assert.strictEqual(final.event, 'result')
    t.assert.strictEqual(final.data.success, true)
    t.assert.strictEqual(final.data.result, 'Echo #3: one two three four five six seven eight')

    lap('stream')
    // Sessions: GET one / list, and every POST action.
    const sid = first.sessionId
    t.assert.strictEqual((await ok(get(`session?sessionId=${sid}`))).session.taskCount, 3)
    const goc = await ok(post('session', { action: 'getOrCreate', projectId: 'http' }))
    t.assert.deepStrictEqual([goc.created, goc.session.id], [false, sid])
    const fork = (await ok(post('session', { action: 'fork', sessionId: sid, title: 'http fork' }))).session
    t.assert.strictEqual(fork.parentId, sid)
    const listed = (await ok(get('session?projectId=http'))).sessions
    t.assert.deepStrictEqual(new Set(listed.map((s) => s.id)), new Set([sid, fork.id]))
    t.assert.strictEqual((await ok(post('session', { action: 'tasks', sessionId: sid }))).tasks.length, 3)
    const history = await ok(post('session', { action: 'messages', sessionId: sid }))
    t.assert.ok(history.messages.some((m) => m.role === 'user' && String(m.text).includes('hello over http')), JSON.stringify(history).slice(0, 500))
    t.assert.strictEqual((await ok(post('session', { action: 'archive', sessionId: fork.id }))).session.status, 'archived')
    const fresh = await ok(post('session', { action: 'startFresh', projectId: 'http' }))
    t.assert.strictEqual(fresh.archived, 1)
    t.assert.deepStrictEqual(await ok(post('session', { action: 'delete', sessionId: fork.id })), { deleted: true, sessionId: fork.id })
    await sleep(5)
    t.assert.deepStrictEqual(await ok(post('session', { action: 'cleanup', projectId: 'http', maxAgeMs: 1 })), { deleted: 1, remaining: 1 })
    // (the cleanup deleted the archived original; the fresh session is left)
    await fails(get(`session?sessionId=${sid}`), 404, 'SESSION_NOT_FOUND')

    lap('session actions')
    // Compact: GET the meter, POST to compact, and the number drops.
    const c1 = await ok(post('task', { prompt: 'fill', projectId: 'compact' }))
    const c2 = await ok(post('task', { prompt: 'fill more', projectId: 'compact', sessionId: c1.sessionId }))
    const before = (await ok(get(`compact?sessionId=${c1.sessionId}`))).context
    t.assert.strictEqual(before.estimatedTokens, c2.contextInfo.estimatedTokens)
    const compacted = await ok(post('compact', { sessionId: c1.sessionId }))
    t.assert.strictEqual(compacted.success, true)
    const after = (await ok(get(`compact?sessionId=${c1.sessionId}`))).context
    t.assert.ok(after.estimatedTokens < before.estimatedTokens / 10, `${before.estimatedTokens} -> ${after.estimatedTokens}`)

    lap('compact')
    // The context breakdown (no server path in it) and steering with no task running.
    const usage = (await ok(get(`context?sessionId=${c1.sessionId}`))).contextUsage
    t.assert.ok(usage.total > 0 && usage.window > 0, JSON.stringify(usage))
    t.assert.ok(!JSON.stringify(usage).includes(work), JSON.stringify(usage))
    await fails(get('context'), 400, 'INVALID_ARGUMENT')
    await fails(post('message', { sessionId: c1.sessionId, prompt: 'x', userId: USER }), 400, 'INVALID_ARGUMENT')
    const idle = await fails(post('message', { sessionId: c1.sessionId, prompt: 'nobody is working' }), 400, 'INVALID_ARGUMENT')
    t.assert.match(idle.message, /no task is running/)
    // 404: another user's session looks missing.
    await fails(get(`session?sessionId=${c1.sessionId}`, 'intruder'), 404, 'SESSION_NOT_FOUND')
    await fails(post('task', { prompt: 'x', projectId: 'compact', sessionId: c1.sessionId }, 'intruder'), 404, 'SESSION_NOT_FOUND')
    await fails(post('compact', { sessionId: c1.sessionId }, 'intruder'), 404, 'SESSION_NOT_FOUND')
    await fails(post('message', { sessionId: c1.sessionId, prompt: 'x' }, 'intruder'), 404, 'SESSION_NOT_FOUND')
    await fails(get(`context?sessionId=${c1.sessionId}`, 'intruder'), 404, 'SESSION_NOT_FOUND')

    lap('404s')
    // 409: deleting a session while it runs a task; then the client hangs up and the task is aborted.
    const long = Array.from({ length: 400 }, (_, i) => `w${i}`).join(' ')
    const streaming = await post('stream', { prompt: long, projectId: 'compact', sessionId: c1.sessionId })
    t.assert.strictEqual(streaming.status, 200)
    const r2 = streaming.body.getReader()
    let seen = ''
    while (!seen.includes('text_delta')) seen += decoder.decode((await r2.read()).value, { stream: true })
    await fails(post('session', { action: 'delete', sessionId: c1.sessionId }), 409, 'SESSION_BUSY')
    await r2.cancel() // the client goes away: the task runs on
    t.assert.strictEqual((await get(`stream?sessionId=${c1.sessionId}`)).status, 200, 'still running: its stream resumes')
    const stopped = await ok(fetch(`${base}/api/claude/stream?sessionId=${c1.sessionId}`, { method: 'DELETE', headers: headers() }))
    t.assert.strictEqual(stopped.aborted, true)
    const end = Date.now() + 15000
    let last
    do {
      await sleep(100)
      last = (await ok(post('session', { action: 'tasks', sessionId: c1.sessionId }))).tasks.at(-1)
    } while (last.status === 'running' && Date.now() < end)
    t.assert.strictEqual(last.status, 'aborted', 'DELETE /stream aborted the task')
    t.assert.strictEqual(last.errorCode, 'ABORTED')
    lap('409, the task outlives its connection, DELETE stops it')
  })

  await t.test('the page in headless Chromium', async (t) => {
    const browser = await launchChromium(t)
    if (!browser) return
    const { page, pageErrors, shot: screenshot } = await openPage(browser, t)

    const meter = async () => page.$eval('[data-testid=meter]', (el) => ({ level: el.dataset.level, pct: Number(el.dataset.percentage), tokens: Number(el.dataset.tokens), label: el.textContent }))
    const barColour = (rgb) => page.waitForFunction((rgb) => getComputedStyle(document.querySelector('.meter-fill')).backgroundColor === rgb, rgb, { timeout: 5000 })
    /** Waits for the meter bar's CSS transition (width and colour) to finish, e.g. before a screenshot. */
    const settled = () => page.waitForFunction(() => document.querySelector('.meter-fill').getAnimations().length === 0)
    const shot = async (name) => {
      await settled()
      await screenshot(name)
    }
    const currentSession = () => page.$eval('[data-testid=current-session] code', (el) => el.textContent)
    const assistantDone = (n) => page.waitForFunction((n) => document.querySelectorAll('.message.assistant[data-status=done]').length >= n, n)
    const sendPrompt = async (text) => {
      await page.fill('[data-testid=prompt]', text)
      await page.click('[data-testid=send]')
    }
    /** The context panel: where its numbers came from, its total and its categories. */
    const contextPanel = () =>
      page.$eval('[data-testid=context-panel]', (el) => ({
        source: el.dataset.source,
        total: Number(el.dataset.total),
        categories: Object.fromEntries([...el.querySelectorAll('[data-testid=context-category]')].map((li) => [li.dataset.id, Number(li.dataset.tokens)])),
        text: el.textContent,
      }))

    // Sign-in redirect, then the project's session opens.
    await page.goto(`${base}/?project=browser`)
    await page.waitForSelector('[data-testid=current-session] code')
    const parentId = await currentSession()
    t.assert.match(parentId, /^[0-9a-f-]{36}$/)
    await page.waitForSelector(`[data-session-id="${parentId}"]`)
    const m0 = await meter()
    t.assert.deepStrictEqual([m0.level, m0.tokens], ['ok', 0])
    // Opening the session started its CLI (the hook's prewarm), before any prompt.
    await until('the session\'s CLI to be prewarmed', () => processesMentioning(parentId).length > 0)

    // 1. A streamed reply: seen mid-way while still streaming, then complete. The meter moves.
    const words = Array.from({ length: 40 }, (_, i) => `token${i}`).join(' ')
    await sendPrompt(`Please repeat: ${words}`)
    const partial = await page.waitForFunction(() => {
      const m = document.querySelector('.message.assistant[data-status=streaming]')
      return m && m.querySelector('.text').textContent.includes('token') ? m.querySelector('.text').textContent : null
    })
    const partialText = await partial.jsonValue()
    await assistantDone(1)
    const reply1 = await page.$eval('.message.assistant[data-status=done] .text', (el) => el.textContent)
    t.assert.strictEqual(reply1, `Echo #1: Please repeat: ${words}`)
    t.assert.ok(partialText.replace('▍', '').length < reply1.length, `seen while streaming: "${partialText.slice(0, 60)}…"`)
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=meter]').dataset.tokens) > 0)
    const m1 = await meter()
    t.assert.strictEqual(m1.level, 'ok', JSON.stringify(m1))
    t.assert.ok(m1.pct > 20 && m1.pct < 60, JSON.stringify(m1))
    // The context panel, loaded again after the task: the session's CLI is kept warm (on both
    // stores) and gives its own categories.
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=context-panel]').dataset.total) > 0)
    const afterTask = await contextPanel()
    t.assert.strictEqual(afterTask.source, 'cli', JSON.stringify(afterTask))
    for (const id of ['system_prompt', 'system_tools', 'free_space']) t.assert.ok(afterTask.categories[id] > 0, `${id}: ${JSON.stringify(afterTask)}`)
    t.assert.match(afterTask.text, /System prompt[\d,]+/)

    // 2 and 3. The meter keeps filling: amber, then red (compaction recommended).
    await sendPrompt('second message')
    await assistantDone(2)
    await page.waitForFunction((p) => Number(document.querySelector('[data-testid=meter]').dataset.percentage) > p, m1.pct)
    const m2 = await meter()
    t.assert.strictEqual(m2.level, 'warning', JSON.stringify(m2))
    await barColour('rgb(217, 119, 6)') // amber
    await sendPrompt('third message')
    await assistantDone(3)
    await page.waitForFunction((p) => Number(document.querySelector('[data-testid=meter]').dataset.percentage) > p, m2.pct)
    const m3 = await meter()
    t.assert.strictEqual(m3.level, 'critical', JSON.stringify(m3))
    t.assert.match(m3.label, /compact recommended/)
    await barColour('rgb(220, 38, 38)') // red (after the CSS transition)
    await shot('nextjs-before-compact.png')

    // Compact: the meter drops back to green and a note says by how much.
    await page.click('[data-testid=compact]')
    await page.waitForSelector('.message.system')
    await page.waitForFunction((t) => Number(document.querySelector('[data-testid=meter]').dataset.tokens) < t / 10, m3.tokens)
    const m4 = await meter()
    t.assert.strictEqual(m4.level, 'ok', JSON.stringify(m4))
    t.assert.match(await page.textContent('.message.system'), /Context compacted: [\d,]+ → [\d,]+ tokens/)
    await barColour('rgb(22, 163, 74)') // green

    // Fork: a new session, current, listed as a fork of the parent; the conversation stays on screen.
    await page.click('[data-testid=fork]')
    await page.waitForFunction((p) => {
      const code = document.querySelector('[data-testid=current-session] code')
      return code && code.textContent !== p
    }, parentId)
    const forkId = await currentSession()
    await page.waitForSelector(`[data-session-id="${forkId}"]`)
    t.assert.match(await page.textContent(`[data-session-id="${forkId}"]`), /fork of Please repeat/)
    t.assert.strictEqual(await page.locator('[data-testid=session-list] li').count(), 2)
    t.assert.strictEqual(await page.locator('.message.assistant').count(), 3, 'the fork keeps the conversation on screen')
    // The fork answers (and has the parent's history: the echo counts its user turns).
    await sendPrompt('hello from the fork')
    await assistantDone(4)
    const forkReply = await page.$$eval('.message.assistant[data-status=done] .text', (els) => els.at(-1).textContent)
    t.assert.match(forkReply, /^Echo #\d+: hello from the fork$/)
    t.assert.ok(Number(forkReply.match(/#(\d+)/)[1]) > 1, `the fork carried its parent's history: ${forkReply}`)
    await page.waitForFunction((id) => /1 task/.test(document.querySelector(`[data-session-id="${id}"]`)?.textContent || ''), forkId)
    const api = await page.evaluate(async (id) => (await (await fetch(`/api/claude/session?sessionId=${id}`)).json()).session, forkId)
    t.assert.strictEqual(api.parentId, parentId)
    await shot('nextjs.png')

    // Reload: the project's newest active session (the fork) opens again with its meter and its
    // history (SessionManager.getMessages).
    const forkMeter = await meter()
    await page.reload()
    await page.waitForFunction((id) => document.querySelector('[data-testid=current-session] code')?.textContent === id, forkId)
    await page.waitForFunction((n) => Number(document.querySelector('[data-testid=meter]').dataset.tokens) === n, forkMeter.tokens)
    const historyStatus = await page.evaluate(
      async (id) => (await fetch('/api/claude/session', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ action: 'messages', sessionId: id }) })).status,
      forkId,
    )
    t.assert.strictEqual(historyStatus, 200)
    await page.waitForFunction(() => [...document.querySelectorAll('.message.assistant .text')].some((el) => el.textContent.includes('hello from the fork')))

    // Start fresh: a new, empty session; the one on screen (the fork) is archived, the parent
    // stays as it was (Start fresh archives the conversation it was pressed in, not the project).
    await page.click('[data-testid=start-fresh]')
    await page.waitForFunction((ids) => {
      const code = document.querySelector('[data-testid=current-session] code')
      return code && !ids.includes(code.textContent) && document.querySelectorAll('[data-testid=session-list] li').length === 3
    }, [parentId, forkId])
    t.assert.strictEqual(await page.locator('.message').count(), 0)
    t.assert.deepStrictEqual(
      await page.$$eval('[data-testid=session-list] li', (els) => els.map((el) => [el.dataset.sessionId, el.dataset.status])).then((rows) => rows.filter(([id]) => id === parentId || id === forkId).sort()),
      [
        [forkId, 'archived'],
        [parentId, 'active'],
      ].sort(),
    )
    t.assert.strictEqual((await meter()).tokens, 0)
    await shot('nextjs-fresh.png')

    // Permission prompts: the stand-in answers `write <file> <text>` with a Write call, which the
    // CLI (permission mode default) asks about; the page shows a card. Allow: the file is written.
    const note = path.join(work, 'note.txt')
    await sendPrompt('write note.txt hello from the browser')
    const card = page.locator('[data-testid=permission-card]')
    await card.waitFor()
    t.assert.strictEqual(await card.count(), 1)
    t.assert.strictEqual(await card.locator('[data-testid=permission-tool]').textContent(), 'Write')
    t.assert.strictEqual(await card.locator('[data-testid=permission-file]').textContent(), note)
    t.assert.match(await card.textContent(), /\+ hello from the browser/)
    t.assert.strictEqual(fs.existsSync(note), false, 'nothing is written before the answer')
    await shot('nextjs-permission.png')
    await page.click('[data-testid=permission-allow]')
    await assistantDone(1)
    await card.waitFor({ state: 'detached' })
    t.assert.strictEqual(fs.readFileSync(note, 'utf8'), 'hello from the browser')
    t.assert.strictEqual(await page.$eval('.message.assistant[data-status=done] .text', (el) => el.textContent), 'Wrote note.txt.')
    t.assert.strictEqual(await page.locator('[data-testid=permission-denied]').count(), 0)

    // Deny: the tool does not run, the model is told, and the result lists the denial.
    const denied = path.join(work, 'denied.txt')
    await sendPrompt('write denied.txt not this one')
    await card.waitFor()
    t.assert.strictEqual(await card.locator('[data-testid=permission-file]').textContent(), denied)
    await page.click('[data-testid=permission-deny]')
    await assistantDone(2)
    await card.waitFor({ state: 'detached' })
    t.assert.strictEqual(fs.existsSync(denied), false, 'a denied Write writes nothing')
    const deniedReply = await page.$$eval('.message.assistant[data-status=done] .text', (els) => els.at(-1).textContent)
    t.assert.match(deniedReply, /^Did not write denied\.txt: /)
    t.assert.match(deniedReply, /denied this in the browser/)
    t.assert.strictEqual(await page.$$eval('.message.assistant', (els) => els.at(-1).querySelector('[data-testid=permission-denied]')?.textContent), 'denied: Write')
    await shot('nextjs-permission-denied.png')

    // Steering: a task waiting for the user's permission is running until the answer. The input
    // stays open; a message sent now goes to that task, and the model sees it there.
    const steered = path.join(work, 'steered.txt')
    await sendPrompt('write steered.txt a draft')
    await card.waitFor()
    // Asked now, the panel shows the running CLI's own categories (on either store).
    await page.click('[data-testid=context-refresh]')
    await page.waitForFunction(() => document.querySelector('[data-testid=context-panel]').dataset.source === 'cli')
    const live = await contextPanel()
    for (const id of ['system_prompt', 'system_tools', 'free_space']) t.assert.ok(live.categories[id] > 0, `${id}: ${JSON.stringify(live)}`)
    t.assert.ok(live.total > 0, JSON.stringify(live))
    t.assert.strictEqual(await page.isEnabled('[data-testid=prompt]'), true, 'the input stays open while Claude works')
    const [steerResponse] = await Promise.all([page.waitForResponse((r) => r.url().endsWith('/api/claude/message')), sendPrompt('and call it the steered note')])
    t.assert.strictEqual(steerResponse.status(), 200, await steerResponse.text())
    // The message is in the list at once, while the task still runs.
    await page.waitForFunction(() => [...document.querySelectorAll('.message.user .text')].some((el) => el.textContent === 'and call it the steered note'))
    t.assert.strictEqual(fs.existsSync(steered), false)
    await shot('nextjs-steering.png')
    await page.click('[data-testid=permission-allow]')
    await card.waitFor({ state: 'detached' })
    await page.waitForFunction(() => {
      const last = [...document.querySelectorAll('.messages > .message')].at(-1)
      return last && last.dataset.role === 'assistant' && last.dataset.status === 'done'
    })
    t.assert.strictEqual(fs.readFileSync(steered, 'utf8'), 'a draft')
    const tail = await page.$$eval('.messages > .message', (els) => els.slice(-4).map((el) => [el.dataset.role, el.querySelector('.text').textContent, el.dataset.status]))
    t.assert.deepStrictEqual(tail, [
      ['user', 'write steered.txt a draft', 'done'],
      ['assistant', '', 'done'], // the Write call (shown as a tool card)
      ['user', 'and call it the steered note', 'done'],
      // The stand-in names what it was sent mid-turn: the model saw the message in this task.
      ['assistant', 'Wrote steered.txt. You also said: and call it the steered note', 'done'],
    ])
    const tasks = await page.evaluate(async (id) => (await (await fetch('/api/claude/session', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ action: 'tasks', sessionId: id }) })).json()).tasks, await currentSession())
    t.assert.strictEqual(tasks.length, 3, 'the steered message ran in the task, not as a task of its own')

    // Going back to the fork restores its meter.
    await page.click(`[data-session-id="${forkId}"] [data-testid=session-open]`)
    await page.waitForFunction((id) => document.querySelector('[data-testid=current-session] code')?.textContent === id, forkId)
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=meter]').dataset.tokens) > 0)

    t.assert.deepStrictEqual(pageErrors, [], 'no errors in the page')
  })

  await t.test('the app in Chromium: Markdown, tool cards, always-allow, rename, search, delete, forks, compaction, users, errors', async (t) => {
    const browser = await launchChromium(t)
    if (!browser) return
    const { page, pageErrors, shot } = await openPage(browser, t, { expectHttpErrors: true })
    const project = 'features'
    const current = () => page.$eval('[data-testid=current-session] code', (el) => el.textContent)
    const waitCurrent = (id) => page.waitForFunction((id) => document.querySelector('[data-testid=current-session] code')?.textContent === id, id)
    const sendPrompt = async (text) => {
      await page.fill('[data-testid=prompt]', text)
      await page.click('[data-testid=send]')
    }
    /** Waits until the thread's last message is a finished reply. */
    const replyDone = () =>
      page.waitForFunction(() => {
        const last = [...document.querySelectorAll('.messages > .message')].at(-1)
        return last && last.dataset.role === 'assistant' && last.dataset.status === 'done' && !document.querySelector('[data-testid=stop]')
      })
    const lastReply = () => page.$$eval('.message.assistant .text', (els) => els.at(-1).textContent)
    const listRow = (id) => `[data-testid=session-list] li[data-session-id="${id}"]`
    const listedIds = () => page.$$eval('[data-testid=session-list] li[data-session-id]', (els) => els.map((el) => el.dataset.sessionId))
    const api = (route, body) =>
      page.evaluate(
        async ([route, body]) => {
          const res = await fetch(`/api/claude/${route}`, body ? { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {})
          return { status: res.status, text: await res.text() }
        },
        [route, body],
      )

    await page.goto(`${base}/api/demo-login?user=${FEATURE_USER}&next=${encodeURIComponent(`/?project=${project}`)}`)
    await page.waitForSelector('[data-testid=current-session] code')
    const first = await current()
    t.assert.strictEqual(await page.$eval('[data-testid=user-switcher]', (el) => el.value), FEATURE_USER)
    // A spend cap is set for every user (BUDGET_USD_PER_USER_PER_DAY): the page shows the spend.
    await page.waitForSelector('[data-testid=budget]')
    t.assert.match(await page.textContent('[data-testid=budget]'), /Spending today\$0\.00 of \$1000\.00/)

    // Markdown: a code block, a table and a list are elements; raw HTML from the model is not.
    await sendPrompt('markdown')
    await replyDone()
    const md = await page.$eval('.message.assistant .markdown', (el) => ({
      code: el.querySelector('pre > code')?.textContent,
      codeClass: el.querySelector('pre > code')?.className,
      cells: el.querySelectorAll('table td').length,
      items: el.querySelectorAll('ul > li').length,
      img: el.querySelectorAll('img').length,
      h2: el.querySelector('h2')?.textContent,
    }))
    t.assert.deepStrictEqual(md, { code: 'export const greet = (name: string) => `hello ${name}`\n', codeClass: 'language-ts', cells: 4, items: 2, img: 0, h2: 'A Markdown reply' })
    t.assert.strictEqual(await page.evaluate(() => window.__injected), undefined, 'no HTML from the model ran')
    await shot('nextjs-markdown.png')

    // A Bash call: the approval card shows the command; "Always allow for this session" sends
    // `remember: 'session'` with the allow; the thread shows the command and its output.
    // (a command that writes: Claude Code runs read-only ones such as a bare `echo` unasked)
    await sendPrompt('run echo hello-from-bash > bash-out.txt && cat bash-out.txt')
    const card = page.locator('[data-testid=permission-card]')
    await card.waitFor()
    t.assert.strictEqual(await card.getAttribute('data-tool'), 'Bash')
    t.assert.match(await card.textContent(), /\$ echo hello-from-bash > bash-out\.txt && cat bash-out\.txt/)
    const [always] = await Promise.all([page.waitForRequest((r) => r.url().endsWith('/api/claude/permission') && r.method() === 'POST'), page.click('[data-testid=permission-always]')])
    const sent = JSON.parse(always.postData())
    t.assert.deepStrictEqual([sent.behavior, sent.remember], ['allow', 'session'])
    const answer = await always.response()
    t.assert.strictEqual(answer.status(), 200, `the permission route took "remember": ${await answer.text()}`)
    await replyDone()
    t.assert.strictEqual(await lastReply(), 'Ran the command.')
    const bash = page.locator('[data-testid=tool-card][data-tool=Bash]').last()
    t.assert.strictEqual(await bash.locator('[data-testid=tool-command]').textContent(), '$ echo hello-from-bash > bash-out.txt && cat bash-out.txt')
    t.assert.match(await bash.locator('[data-testid=tool-output]').textContent(), /hello-from-bash/)
    await t.test('"always allow" is remembered by the server for the session', async (t) => {
      // The rule is the exact command (the server never widens it): the same command again runs
      // without a card.
      const before = await page.locator('[data-testid=tool-card][data-tool=Bash]').count()
      await sendPrompt('run echo hello-from-bash > bash-out.txt && cat bash-out.txt')
      await replyDone()
      t.assert.strictEqual(await page.locator('[data-testid=permission-card]').count(), 0)
      t.assert.strictEqual(await page.locator('[data-testid=tool-card][data-tool=Bash]').count(), before + 1, 'the command ran again')
      t.assert.match(await page.locator('[data-testid=tool-card][data-tool=Bash] [data-testid=tool-output]').last().textContent(), /hello-from-bash/)
    })

    // A Write allowed once: the tool card shows the new file's lines.
    await sendPrompt('write feature.txt line one')
    await card.waitFor()
    await page.click('[data-testid=permission-allow]')
    await replyDone()
    const write = page.locator('[data-testid=tool-card][data-tool=Write]').last()
    t.assert.match(await write.locator('[data-testid=tool-file]').textContent(), /feature\.txt$/)
    t.assert.match(await write.locator('.diff').textContent(), /\+ line one/)
    t.assert.strictEqual(await write.getAttribute('data-state'), 'ok')
    // An Edit of that file (which the Write left read): the card and the tool card show a diff.
    await sendPrompt('edit feature.txt line one => line two')
    await card.waitFor()
    t.assert.deepStrictEqual(await card.locator('.diff > div').evaluateAll((els) => els.map((el) => [el.className, el.textContent])), [
      ['del', '- line one'],
      ['add', '+ line two'],
    ])
    await page.click('[data-testid=permission-allow]')
    await replyDone()
    t.assert.strictEqual(await lastReply(), 'Edited feature.txt.')
    const edit = page.locator('[data-testid=tool-card][data-tool=Edit]').last()
    t.assert.strictEqual(await edit.getAttribute('data-state'), 'ok')
    t.assert.match(await edit.locator('.diff').textContent(), /- line one\+ line two/)
    t.assert.strictEqual(fs.readFileSync(path.join(work, 'feature.txt'), 'utf8'), 'line two')
    await shot('nextjs-tools.png')

    // After a reload the tool cards come back from the history, with their results. The history
    // answer (read by the server at once) is held back on its way to the page here, and a prompt
    // is sent before it arrives: the prompt and its reply stay, below the history.
    let heldBack = 0
    await page.route('**/api/claude/session', async (route) => {
      const req = route.request()
      if (req.method() !== 'POST' || JSON.parse(req.postData() || '{}').action !== 'messages') return route.continue()
      const response = await route.fetch()
      heldBack++
      await sleep(2500)
      await route.fulfill({ response })
    })
    await page.reload()
    await waitCurrent(first)
    await sendPrompt('sent before the history')
    await replyDone()
    await page.waitForSelector('[data-testid=tool-card][data-tool=Write]')
    await page.unroute('**/api/claude/session')
    t.assert.ok(heldBack > 0, 'the history request was held back')
    t.assert.match(await page.locator('[data-testid=tool-card][data-tool=Bash] [data-testid=tool-output]').first().textContent(), /hello-from-bash/)
    t.assert.match(await page.locator('[data-testid=tool-card][data-tool=Write] .diff').first().textContent(), /\+ line one/)
    t.assert.strictEqual(await page.locator('[data-testid=tool-card][data-tool=Write]').first().getAttribute('data-state'), 'ok')
    // The tool results are not "You" bubbles.
    const prompts = ['markdown', 'run echo hello-from-bash > bash-out.txt && cat bash-out.txt', 'run echo hello-from-bash > bash-out.txt && cat bash-out.txt', 'write feature.txt line one', 'edit feature.txt line one => line two', 'sent before the history']
    t.assert.deepStrictEqual(await page.$$eval('.message.user .text', (els) => els.map((el) => el.textContent)), prompts)
    t.assert.match(await lastReply(), /^Echo #\d+: sent before the history$/)
    t.assert.strictEqual(await page.locator('.message.assistant', { hasText: 'sent before the history' }).count(), 1)

    // Compaction, then a reload: a system note, no CLI command lines, no server path anywhere.
    await page.click('[data-testid=compact]')
    await page.waitForSelector('.message.system')
    await page.reload()
    await waitCurrent(first)
    const compactNote = page.locator('[data-testid=system-note][data-kind=compaction]')
    await compactNote.waitFor()
    t.assert.match(await compactNote.textContent(), /Conversation compacted/)
    await compactNote.locator('summary').click()
    t.assert.match(await compactNote.textContent(), /Summary \(stand-in\)/)
    const body = await page.textContent('body')
    const history = await api('session', { action: 'messages', sessionId: first })
    for (const [what, text] of [
      ['the page', body],
      ['the history answer', history.text],
    ]) {
      // (the state folder holds the CLI's config, the tenant folders and the transcripts; the
      // working directory is the agent's, and tool cards name files in it)
      for (const secret of [state, os.homedir(), '.jsonl', '<command-name>', 'local-command-stdout', 'This session is being continued']) t.assert.ok(!text.includes(secret), `${what} shows ${secret}`)
    }
    t.assert.strictEqual(await page.locator('.message.user').count(), prompts.length)
    await shot('nextjs-compaction.png')

    // Fork: a fork that has not run shows the conversation it continues from, also after a reload.
    await page.click('[data-testid=fork]')
    await page.waitForFunction((p) => document.querySelector('[data-testid=current-session] code')?.textContent !== p, first)
    const fork = await current()
    await page.reload()
    // (a reload opens the project's most recently active session: that is the parent again once
    // its kept-warm CLI is let go, which counts as activity; so open the fork from the list)
    await page.waitForSelector(listRow(fork))
    if ((await current()) !== fork) await page.click(`${listRow(fork)} [data-testid=session-open]`)
    await waitCurrent(fork)
    await page.waitForSelector('[data-testid=inherited]')
    t.assert.ok((await page.locator('.message.user').count()) > 0, 'the inherited conversation is shown')
    t.assert.strictEqual(await page.locator('.empty').count(), 0, 'not "No messages yet"')
    t.assert.match(await page.textContent(listRow(fork)), /fork of markdown.*not used yet/)

    // Rename and search (titles and first prompts).
    await page.click(`${listRow(fork)} [data-testid=rename]`)
    await page.fill('[data-testid=rename-input]', 'My renamed fork')
    await page.click('[data-testid=rename-save]')
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes('My renamed fork'), `${listRow(fork)} [data-testid=session-title]`)
    await page.fill('[data-testid=session-search]', 'renamed')
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=session-list] li[data-session-id]').length === 1)
    t.assert.deepStrictEqual(await listedIds(), [fork])
    await page.fill('[data-testid=session-search]', 'MARKDOWN') // the first prompt, any case: the parent and its fork
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=session-list] li[data-session-id]').length === 2)
    t.assert.deepStrictEqual(new Set(await listedIds()), new Set([first, fork]))
    await page.fill('[data-testid=session-search]', 'no such words')
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=session-list] li[data-session-id]').length === 0)
    await page.fill('[data-testid=session-search]', '')
    // The title is kept by the server.
    t.assert.strictEqual(JSON.parse((await api(`session?sessionId=${fork}`)).text).session.title, 'My renamed fork')

    // Start fresh in the parent archives the parent only: its fork stays active. A meter of the
    // new session shows the model's window at once (no "/ 200,000" first).
    await page.click(`${listRow(first)} [data-testid=session-open]`)
    await waitCurrent(first)
    await page.click('[data-testid=start-fresh]')
    await page.waitForFunction((ids) => !ids.includes(document.querySelector('[data-testid=current-session] code')?.textContent), [first, fork])
    const fresh = await current()
    await page.waitForSelector(listRow(fresh))
    t.assert.strictEqual(await page.getAttribute(listRow(first), 'data-status'), 'archived')
    t.assert.strictEqual(await page.getAttribute(listRow(fork), 'data-status'), 'active')
    const label = await page.textContent('[data-testid=meter-label]')
    t.assert.match(label, /^0 \/ 1,000,000 tokens/)
    t.assert.match(await page.textContent('[data-testid=context-total]'), /\/ 1,000,000 tokens/)

    // An archived session that is continued is no longer labelled archived.
    await page.click(`${listRow(first)} [data-testid=session-open]`)
    await waitCurrent(first)
    await sendPrompt('carry on')
    await replyDone()
    await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.status === 'active', listRow(first))

    // Delete (the empty fresh session), with its confirmation.
    await page.click(`${listRow(fresh)} [data-testid=delete]`)
    await page.click(`${listRow(fresh)} [data-testid=delete-confirm]`)
    await page.waitForSelector(listRow(fresh), { state: 'detached' })
    t.assert.strictEqual((await api(`session?sessionId=${fresh}`)).status, 404)

    // Stop: once the server has recorded the stopped task, the list, the meter and the panel
    // agree with the server.
    const long = Array.from({ length: 300 }, (_, i) => `w${i}`).join(' ')
    await sendPrompt(long)
    await page.waitForFunction(() => document.querySelector('.message.assistant[data-status=streaming] .text')?.textContent.includes('w1'))
    await page.click('[data-testid=stop]')
    await page.waitForSelector('.message.assistant[data-status=aborted]')
    // The server records the stopped task a moment after the stream closed.
    let tasks
    for (const end = Date.now() + 15000; ; await sleep(200)) {
      tasks = JSON.parse((await api('session', { action: 'tasks', sessionId: first })).text).tasks
      if (tasks.at(-1).status !== 'running' || Date.now() > end) break
    }
    t.assert.strictEqual(tasks.at(-1).status, 'aborted')
    const s = JSON.parse((await api(`session?sessionId=${first}`)).text).session
    t.assert.strictEqual(s.taskCount, tasks.length)
    const ctx = JSON.parse((await api(`compact?sessionId=${first}`)).text).context
    // The page catches up by itself (no reload): the list's count and cost, and the meter.
    await page.waitForFunction(
      ([id, count, cost, tokens]) => {
        const row = document.querySelector(`[data-testid=session-list] li[data-session-id="${id}"] .meta`)?.textContent || ''
        return row.startsWith(`${count} task`) && row.includes(`$${cost}`) && Number(document.querySelector('[data-testid=meter]').dataset.tokens) === tokens
      },
      [first, s.taskCount, s.totalCostUsd.toFixed(4), ctx.estimatedTokens],
      { polling: 250 },
    )
    await shot('nextjs-after-stop.png')

    // Errors in words: a server shutting down (CLOSED), scripted here by answering the stream
    // request as the routes do then.
    await page.route('**/api/claude/stream', (route) => route.fulfill({ status: 500, contentType: 'application/json', body: JSON.stringify({ error: { code: 'CLOSED', message: 'the session manager is closed; create a new one' } }) }))
    await sendPrompt('while the server restarts')
    await page.waitForSelector('[data-testid=error]')
    t.assert.strictEqual(await page.textContent('[data-testid=error-title]'), 'The server is restarting. Try again in a moment.')
    t.assert.ok(!(await page.textContent('[data-testid=error]')).includes('create a new one'))
    await page.unroute('**/api/claude/stream')

    // The user switcher: another demo user sees none of these sessions, and cannot open them.
    await Promise.all([page.waitForURL((u) => u.searchParams.get('project') === project), page.selectOption('[data-testid=user-switcher]', OTHER_USER)])
    await page.waitForSelector('[data-testid=current-session] code')
    t.assert.strictEqual(await page.$eval('[data-testid=user-switcher]', (el) => el.value), OTHER_USER)
    const theirs = await listedIds()
    for (const id of [first, fork]) t.assert.ok(!theirs.includes(id), `${OTHER_USER} sees ${id}`)
    t.assert.strictEqual((await api(`session?sessionId=${first}`)).status, 404)
    t.assert.strictEqual((await api('session', { action: 'messages', sessionId: first })).status, 404)
    await shot('nextjs-other-user.png')

    // A user over their spend cap: the task is refused before the model call, in words.
    await page.goto(`${base}/api/demo-login?user=${BROKE_USER}&next=${encodeURIComponent(`/?project=${project}`)}`)
    await page.waitForSelector('[data-testid=current-session] code')
    await page.waitForSelector('[data-testid=budget]')
    await sendPrompt('hello')
    await page.waitForSelector('[data-testid=error][data-code=BUDGET_EXCEEDED]')
    t.assert.strictEqual(await page.textContent('[data-testid=error-title]'), 'Spending limit reached: your daily spending limit is used up.')
    // The reply says so too; the CLI's own text ("API Error: 402 …") only under "details".
    t.assert.strictEqual(await page.textContent('.message.assistant[data-status=error] [data-testid=reply-error]'), 'Spending limit reached: your daily spending limit is used up.')
    t.assert.doesNotMatch(await page.innerText('.message.assistant[data-status=error]'), /API Error/)
    await shot('nextjs-budget.png')

    t.assert.deepStrictEqual(pageErrors, [], 'no errors in the page')
  })

  await t.test('the app in Chromium: edit an earlier message, get the new answer, switch back to the old branch; undo a turn', async (t) => {
    const browser = await launchChromium(t)
    if (!browser) return
    const { page, pageErrors, shot } = await openPage(browser, t)
    const current = () => page.$eval('[data-testid=current-session] code', (el) => el.textContent)
    const texts = () => page.$$eval('.messages > .message .text', (els) => els.map((el) => el.textContent))
    const settledOn = (n) =>
      page.waitForFunction((n) => {
        const ms = [...document.querySelectorAll('.messages > .message')]
        return ms.length === n && ms.every((m) => m.dataset.status === 'done') && !document.querySelector('[data-testid=stop]') && document.querySelector('[data-testid=edit-message]')
      }, n)
    const sendPrompt = async (text) => {
      await page.fill('[data-testid=prompt]', text)
      await page.click('[data-testid=send]')
    }
    await page.goto(`${base}/?project=branching`)
    await page.waitForSelector('[data-testid=current-session] code')
    const original = await current()
    await sendPrompt('first question')
    await settledOn(2)
    await sendPrompt('second question')
    await settledOn(4)
    t.assert.deepStrictEqual(await texts(), ['first question', 'Echo #1: first question', 'second question', 'Echo #2: second question'])

    // Edit the second message: a new branch from the first answer, with the new answer.
    await page.locator('[data-testid=edit-message]').nth(1).click()
    await page.fill('[data-testid=edit-text]', 'second question, edited')
    await page.click('[data-testid=edit-send]')
    await page.waitForFunction((id) => document.querySelector('[data-testid=current-session] code')?.textContent !== id, original)
    const edited = await current()
    await page.waitForFunction(() => [...document.querySelectorAll('.messages > .message .text')].some((el) => el.textContent === 'Echo #2: second question, edited'))
    await settledOn(4)
    t.assert.deepStrictEqual(await texts(), ['first question', 'Echo #1: first question', 'second question, edited', 'Echo #2: second question, edited'])
    await page.waitForSelector('[data-testid=branches] option[data-relation=parent]', { state: 'attached' })
    await shot('nextjs-branch-edited.png')

    // Switch back to the old branch: its own second question and answer.
    await page.selectOption('[data-testid=branches]', original)
    await page.waitForFunction((id) => document.querySelector('[data-testid=current-session] code')?.textContent === id, original)
    await page.waitForFunction(() => [...document.querySelectorAll('.messages > .message .text')].some((el) => el.textContent === 'Echo #2: second question'))
    await settledOn(4)
    t.assert.deepStrictEqual(await texts(), ['first question', 'Echo #1: first question', 'second question', 'Echo #2: second question'])
    // The branch list is the session's own, loaded with its history: wait for the fork to be in it.
    await page.waitForSelector(`[data-testid=branches] option[value="${edited}"]`, { state: 'attached' })
    t.assert.strictEqual(await page.$eval(`[data-testid=branches] option[value="${edited}"]`, (el) => el.dataset.relation), 'fork')

    // Undo the last turn (files too): the session continues from the first answer.
    await page.locator('[data-testid=undo-turn]').nth(1).click()
    await page.waitForSelector('[data-testid=note]')
    t.assert.match(await page.textContent('[data-testid=note]'), /Turn undone: 2 messages dropped/)
    await settledOn(2)
    await sendPrompt('third question')
    await settledOn(4)
    t.assert.deepStrictEqual(await texts(), ['first question', 'Echo #1: first question', 'third question', 'Echo #2: third question'])
    t.assert.strictEqual(await current(), original)
    t.assert.deepStrictEqual(pageErrors, [], 'no errors in the page')
  })

  await t.test('the app in Chromium: a reload mid-reply, a second tab, Stop after a reload, a permission card answered after a reload', async (t) => {
    const browser = await launchChromium(t)
    if (!browser) return
    const { page, pageErrors, shot } = await openPage(browser, t)
    const current = () => page.$eval('[data-testid=current-session] code', (el) => el.textContent)
    const sendPrompt = async (p, text) => {
      await p.fill('[data-testid=prompt]', text)
      await p.click('[data-testid=send]')
    }
    /** The text of the page's streaming reply once it contains `part`. */
    const streamingWith = (p, part) => p.waitForFunction((part) => [...document.querySelectorAll('.message.assistant[data-status=streaming] .text')].some((el) => el.textContent.includes(part)), part)
    const lastReply = (p) => p.waitForFunction(() => {
      const last = [...document.querySelectorAll('.messages > .message')].at(-1)
      return last && last.dataset.role === 'assistant' && last.dataset.status !== 'streaming' && !document.querySelector('[data-testid=stop]') ? { status: last.dataset.status, text: last.querySelector('.text')?.textContent ?? '' } : null
    }).then((h) => h.jsonValue())
    const running = (id) => page.evaluate(async (id) => (await fetch(`/api/claude/stream?sessionId=${id}`, { method: 'GET' }).then(async (r) => { if (r.body) await r.body.cancel(); return r.status })), id)
    const words = Array.from({ length: 30 }, (_, i) => `w${i}`).join(' ')

    await page.goto(`${base}/?project=reload`)
    await page.waitForSelector('[data-testid=current-session] code')
    const sessionId = await current()

    // 1. A reload mid-reply: the page attaches to the running task and the reply finishes
    // streaming into it. A second tab opened meanwhile shows the same reply.
    await sendPrompt(page, `slow ${words}`)
    await streamingWith(page, 'w2 ')
    await page.reload()
    await page.waitForSelector('[data-testid=current-session] code')
    t.assert.strictEqual(await current(), sessionId, 'the reload opens the same session')
    await streamingWith(page, 'w')
    const second = await openPage(browser, t)
    await second.page.goto(`${base}/?project=reload`)
    await streamingWith(second.page, 'w')
    const [afterReload, inSecond] = await Promise.all([lastReply(page), lastReply(second.page)])
    t.assert.deepStrictEqual(afterReload, { status: 'done', text: `Echo #1: slow ${words}` })
    t.assert.deepStrictEqual(inSecond, afterReload)
    await shot('nextjs-reload-finished.png')

    // 2. Stop after a reload stops the task on the server: nothing runs on the session any more
    // and the reply stays unfinished.
    await sendPrompt(page, `slow ${words}`)
    await streamingWith(page, 'w1 ')
    await page.reload()
    await streamingWith(page, 'w')
    await page.click('[data-testid=stop]')
    const stopped = await lastReply(page)
    t.assert.strictEqual(stopped.status, 'aborted')
    t.assert.ok(!stopped.text.includes('w29'), `the reply stopped early: ${stopped.text}`)
    await until('nothing runs on the session', async () => (await running(sessionId)) === 204)

    // 3. A permission card raised before the reload is shown again after it, answered, and the
    // tool runs.
    await sendPrompt(page, 'write reload.txt written after a reload')
    await page.locator('[data-testid=permission-card]').waitFor()
    await page.reload()
    const card = page.locator('[data-testid=permission-card]')
    await card.waitFor()
    t.assert.strictEqual(await card.getAttribute('data-tool'), 'Write')
    await page.click('[data-testid=permission-allow]')
    const written = await lastReply(page)
    t.assert.strictEqual(written.status, 'done')
    t.assert.strictEqual(fs.readFileSync(path.join(work, 'reload.txt'), 'utf8'), 'written after a reload')
    t.assert.deepStrictEqual([...pageErrors, ...second.pageErrors], [], 'no errors in the pages')
  })

  await t.test('the sessions are in the store the app was configured with', (t) => {
    const dbFile = path.join(state, 'sessions.db')
    t.assert.strictEqual(fs.existsSync(path.join(work, '.claude-sessions')), false, 'nothing of the store inside the working directory')
    if (pgSchema) {
      t.assert.ok(Number(psql(`SELECT count(*) FROM "${pgSchema}".tasks`)) > 0, 'task rows in PostgreSQL')
      t.assert.strictEqual(fs.existsSync(dbFile), false, 'no SQLite file beside it')
    } else {
      t.assert.ok(fs.existsSync(dbFile), 'the SQLite file')
    }
  })
})
