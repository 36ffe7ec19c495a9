// The README's quick start, as a new user meets it: a fresh Next.js 16 app (TypeScript) made of
// exactly the code blocks the README marks with `<!-- readme-app: <file> -->`, this checkout
// installed from an `npm pack` tarball (as the README's Install says), `next build` (type check
// included) and `next start`, then the routes called over HTTP with the real CLI against the
// package's stand-in API: a task, its resume, the stream, and the errors the README's table lists.
//
// Needs the npm registry (or its cache) for next, react, typescript and the types, installed with
// `--prefer-offline`. Takes a few minutes: `CSM_SKIP_NEXT_BUILD=1` skips it (reported as skipped);
// CI runs it.
import { test } from 'node:test'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { parseSse, startStandInServer, tempDir } from './helpers.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/** The same versions as examples/nextjs (so the registry cache CI fills there serves these). */
const VERSIONS = {
  next: '16.4.6',
  react: '19.3.1',
  'react-dom': '19.3.1',
  '@anthropic-ai/claude-code': '2.1.331',
  typescript: '5.9.3',
  '@types/react': '^19.3.0',
  '@types/node': '^20.19.0',
}

/** `{ file: code }` for every block the README marks `<!-- readme-app: file -->`. */
export function readmeAppFiles(readme) {
  const files = {}
  const re = /<!-- readme-app: ([\w./[\]-]+) -->\r?\n```(?:ts|tsx|js|json)\r?\n([\s\S]*?)```/g
  for (const [, file, code] of readme.matchAll(re)) {
    if (files[file] !== undefined) throw new Error(`the README marks ${file} twice`)
    files[file] = code
  }
  return files
}

function run(cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}):\n${(r.stdout || '').slice(-6000)}\n${(r.stderr || '').slice(-6000)}`)
  return r
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

/** This process's environment without API credentials, CLI or Next settings of this machine. */
function cleanEnv(extra) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(ANTHROPIC_|CLAUDE_|CLAUDECODE|AWS_|GOOGLE_|VERTEX_|NEXT_|__NEXT|npm_)/.test(k)) continue
    env[k] = v
  }
  return { ...env, NEXT_TELEMETRY_DISABLED: '1', ...extra }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

test('README: the marked code blocks are the files of an app (lib/claude.ts, the task and stream routes, next.config.ts)', () => {
  const files = readmeAppFiles(fs.readFileSync(path.join(root, 'README.md'), 'utf8'))
  for (const f of ['lib/claude.ts', 'app/api/claude/task/route.ts', 'app/api/claude/stream/route.ts', 'next.config.ts']) {
    if (!files[f]) throw new Error(`the README marks no block for ${f}`)
  }
  for (const [f, code] of Object.entries(files)) {
    // What Next 16's cacheComponents rejects, and what the issue found not compiling.
    if (/export const runtime\b/.test(code)) throw new Error(`${f}: no route segment config in the quick start`)
    if (/new SessionManager\(/.test(code) && !/=>|function/.test(code)) throw new Error(`${f}: the manager must be made lazily`)
  }
})

test('README quick start: a fresh Next.js 16 app from the README builds (types checked), starts and answers', { timeout: 20 * 60 * 1000 }, async (t) => {
  if (process.env.CSM_SKIP_NEXT_BUILD === '1') return t.skip('CSM_SKIP_NEXT_BUILD=1: the fresh Next.js app is not built')
  const files = readmeAppFiles(fs.readFileSync(path.join(root, 'README.md'), 'utf8'))
  const dir = tempDir('csm-readme-')
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))

  // The package as the README installs it: an `npm pack` tarball. `--ignore-scripts`: the addon
  // built for the tests is usually a debug build, which `prepack` refuses (the README builds the
  // release one first); what is tested here is the package's files, not the build's profile.
  const packed = JSON.parse(run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], { cwd: root }).stdout)[0]
  const tarball = path.join(dir, packed.filename)
  t.diagnostic(`packed ${packed.filename}: ${(packed.size / 1e6).toFixed(1)} MB, ${(packed.unpackedSize / 1e6).toFixed(1)} MB unpacked`)

  // An existing app: package.json, tsconfig.json as create-next-app writes them, a page and a
  // layout; then the README's files on top.
  const app = path.join(dir, 'app')
  fs.mkdirSync(app)
  const { typescript, '@types/react': typesReact, '@types/node': typesNode, ...deps } = VERSIONS
  fs.writeFileSync(
    path.join(app, 'package.json'),
    JSON.stringify(
      {
        name: 'readme-app',
        private: true,
        scripts: { build: 'next build', start: 'next start' },
        dependencies: { ...deps, 'claude-session-manager': `file:${tarball}` },
        devDependencies: { typescript, '@types/react': typesReact, '@types/node': typesNode },
      },
      null,
      2,
    ),
  )
  fs.writeFileSync(
    path.join(app, 'tsconfig.json'),
    JSON.stringify(
      {
        compilerOptions: {
          target: 'ES2017',
          lib: ['dom', 'dom.iterable', 'esnext'],
          allowJs: true,
          skipLibCheck: true,
          strict: true,
          noEmit: true,
          esModuleInterop: true,
          module: 'esnext',
          moduleResolution: 'bundler',
          resolveJsonModule: true,
          isolatedModules: true,
          jsx: 'react-jsx',
          incremental: true,
          plugins: [{ name: 'next' }],
          paths: { '@/*': ['./*'] },
        },
        include: ['next-env.d.ts', '**/*.ts', '**/*.tsx', '.next/types/**/*.ts'],
        exclude: ['node_modules'],
      },
      null,
      2,
    ),
  )
  fs.mkdirSync(path.join(app, 'app'))
  fs.writeFileSync(path.join(app, 'app', 'layout.tsx'), 'export default function RootLayout({ children }: { children: React.ReactNode }) {\n  return (\n    <html lang="en">\n      <body>{children}</body>\n    </html>\n  )\n}\n')
  fs.writeFileSync(path.join(app, 'app', 'page.tsx'), 'export default function Home() {\n  return <main>An existing app</main>\n}\n')
  for (const [file, code] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(app, file)), { recursive: true })
    fs.writeFileSync(path.join(app, file), code)
  }
  // The strictest Next 16 setting the README claims to work with: cacheComponents on (it rejects
  // `export const runtime`). The README's next.config.ts is otherwise used as it is.
  const config = path.join(app, 'next.config.ts')
  const withCache = fs.readFileSync(config, 'utf8').replace('const nextConfig: NextConfig = {', 'const nextConfig: NextConfig = {\n  cacheComponents: true,')
  if (!withCache.includes('cacheComponents: true')) throw new Error('next.config.ts does not have the shape the test expects')
  fs.writeFileSync(config, withCache)

  const installStarted = Date.now()
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app, env: cleanEnv() })
  t.diagnostic(`npm install took ${((Date.now() - installStarted) / 1000).toFixed(1)} s`)
  t.assert.ok(!fs.lstatSync(path.join(app, 'node_modules', 'claude-session-manager')).isSymbolicLink(), 'installed as a copy')

  // Where the manager would keep its database: nothing may be made there during the build.
  // The README's defaults: a folder per session under ~/.local/share/…/workspaces, with HOME a
  // fresh folder of the test's; only the state folder is set, to check the build leaves it alone.
  const state = path.join(dir, 'state')
  const env = cleanEnv({ CLAUDE_SESSIONS_STATE_DIR: state, HOME: path.join(dir, 'home') })
  fs.mkdirSync(env.HOME)
  const nextBin = path.join(app, 'node_modules', 'next', 'dist', 'bin', 'next')
  const buildStarted = Date.now()
  const build = run(process.execPath, [nextBin, 'build'], { cwd: app, env: { ...env, NODE_ENV: 'production' } })
  t.diagnostic(`next build took ${((Date.now() - buildStarted) / 1000).toFixed(1)} s`)
  for (const line of (build.stdout + build.stderr).trim().split('\n').slice(-25)) t.diagnostic(line)
  t.assert.match(build.stdout + build.stderr, /Finished TypeScript|Checking validity of types/, 'the build checked the types')
  t.assert.ok(!fs.existsSync(state), `next build made no database (${state} exists)`)

  // The stand-in API in this process; the app's CLI reaches it through the environment, as it
  // would reach the real API with ANTHROPIC_API_KEY alone.
  const server = await startStandInServer()
  t.after(() => server.close())
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  let log = ''
  let exited = false
  const child = spawn(process.execPath, [nextBin, 'start', '-H', '127.0.0.1', '-p', String(port)], {
    cwd: app,
    env: { ...env, ...server.env(), NODE_ENV: 'production', ALLOW_DEMO_USER_HEADER: '1' },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout.on('data', (d) => (log += d))
  child.stderr.on('data', (d) => (log += d))
  child.on('exit', () => (exited = true))
  t.after(async () => {
    for (const sig of ['SIGTERM', 'SIGKILL']) {
      if (exited) break
      try {
        process.kill(-child.pid, sig)
      } catch {}
      for (let i = 0; i < 50 && !exited; i++) await sleep(100)
    }
  })
  for (let i = 0; ; i++) {
    if (exited) throw new Error(`next start exited:\n${log}`)
    try {
      await fetch(base)
      break
    } catch {
      if (i > 600) throw new Error(`next start did not answer:\n${log}`)
      await sleep(100)
    }
  }

  const post = (route, body, { user = 'alice', type = 'application/json' } = {}) =>
    fetch(`${base}/api/claude/${route}`, {
      method: 'POST',
      headers: { 'content-type': type, ...(user ? { 'x-demo-user': user } : {}) },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    })
  const json = async (res, status) => {
    const text = await res.text()
    t.assert.strictEqual(res.status, status, `${res.status}: ${text}\n${log.slice(-3000)}`)
    return JSON.parse(text)
  }

  // A task, then the same session resumed: the stand-in answers `Echo #<user turns>: <text>`.
  const first = await json(await post('task', { prompt: 'Say hello', projectId: 'demo' }), 200)
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  t.assert.strictEqual(first.result, 'Echo #1: Say hello')
  const again = await json(await post('task', { prompt: 'and again', projectId: 'demo', sessionId: first.sessionId }), 200)
  t.assert.strictEqual(again.result, 'Echo #2: and again', 'the second task saw the first (resumed)')

  // The stream route: events, then `event: result`.
  const res = await post('stream', { prompt: 'streamed', projectId: 'demo', sessionId: first.sessionId })
  t.assert.strictEqual(res.status, 200)
  t.assert.match(res.headers.get('content-type'), /^text\/event-stream/)
  const events = parseSse(await res.text())
  t.assert.strictEqual(events[0].data.type, 'task_queued')
  const result = events.find((e) => e.event === 'result')
  t.assert.strictEqual(result?.data.result, 'Echo #3: streamed')

  // The errors the README's table lists, as JSON with a code.
  t.assert.strictEqual((await json(await post('task', { prompt: 'x', projectId: 'demo' }, { user: null }), 401)).error.code, 'UNAUTHORIZED')
  t.assert.strictEqual((await json(await post('task', '{"prompt": "not json', {}), 400)).error.code, 'INVALID_ARGUMENT')
  t.assert.match((await json(await post('task', { projectId: 'demo' }), 400)).error.message, /prompt/)
  t.assert.strictEqual((await json(await post('task', { prompt: 'x', projectId: 'demo', userId: 'bob' }), 400)).error.code, 'INVALID_ARGUMENT')
  t.assert.strictEqual((await json(await post('task', { prompt: 'x', projectId: 'demo', sessionId: first.sessionId }, { user: 'bob' }), 404)).error.code, 'SESSION_NOT_FOUND')
  t.assert.strictEqual((await json(await post('task', 'prompt=x', { type: 'application/x-www-form-urlencoded' }), 400)).error.code, 'INVALID_ARGUMENT')

  // The database is where the README says (the state folder), made on the first request, and
  // the agent worked in a folder of the session's own under ~/.local/share.
  t.assert.ok(fs.existsSync(path.join(state, 'sessions.db')), 'the sessions are in <state folder>/sessions.db')
  const workspaces = path.join(env.HOME, '.local', 'share', 'claude-session-manager', 'workspaces')
  const roots = fs.readdirSync(workspaces)
  t.assert.strictEqual(roots.length, 1, roots.join(', '))
  t.assert.ok(fs.readdirSync(path.join(workspaces, roots[0])).includes(first.sessionId), 'the session has its own folder')
})
