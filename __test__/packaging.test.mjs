// Packaging as a user meets it: `npm pack` the main package and the linux-x64-gnu binary package,
// install both tarballs into a fresh project with no Rust toolchain on PATH, and use the addon from
// a plain Node script (the binary coming from the per-platform package, as after a publish).
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync, spawnSync } from 'node:child_process'
import { tempDir } from './helpers.mjs'

const root = path.resolve('.')
const binary = 'claude-session-manager.linux-x64-gnu.node'

test('packaging: the packed tarballs install and run without cargo', { skip: process.platform !== 'linux' || process.arch !== 'x64' }, (t) => {
  const out = tempDir('csm-pack-')
  // The per-platform package, with the binary the build produced (as the release workflow does).
  const platformDir = path.join(out, 'linux-x64-gnu')
  fs.cpSync(path.join(root, 'npm', 'linux-x64-gnu'), platformDir, { recursive: true })
  fs.copyFileSync(path.join(root, binary), path.join(platformDir, binary))
  // --ignore-scripts: the addon built for the tests may be a debug build, which `prepack`
  // (scripts/check-pack.mjs) refuses to pack (see "packaging: npm pack refuses a debug build").
  const pack = (cwd) => JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', out], { cwd, encoding: 'utf8' }))[0]
  const main = pack(root)
  const platform = pack(platformDir)
  const files = main.files.map((f) => f.path)
  for (const f of ['index.js', 'index.d.ts', 'testing/index.js', 'next/index.js', 'react/index.js', 'package.json']) t.assert.ok(files.includes(f), `${f} is packed`)
  t.assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('__test__/') || f === 'Cargo.toml'), 'no sources in the package')
  t.assert.deepStrictEqual(platform.files.map((f) => f.path).sort(), ['README.md', binary, 'package.json'].sort())

  const project = path.join(out, 'app')
  fs.mkdirSync(project)
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'app', private: true }))
  // A PATH without cargo or rustc.
  const PATH = process.env.PATH.split(':').filter((d) => !fs.existsSync(path.join(d, 'cargo')) && !fs.existsSync(path.join(d, 'rustc'))).join(':')
  t.assert.ok(!spawnSync('sh', ['-c', 'command -v cargo'], { env: { ...process.env, PATH } }).stdout.length, 'cargo is hidden')
  // Offline, and without the peer dependency (`@anthropic-ai/claude-code`, which an app installs
  // itself): npm would otherwise fetch its metadata from the registry to resolve the range.
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', '--legacy-peer-deps', path.join(out, main.filename), path.join(out, platform.filename)], {
    cwd: project,
    env: { ...process.env, PATH },
    stdio: 'pipe',
  })
  // Load the binary from the per-platform package, as a published install does.
  fs.rmSync(path.join(project, 'node_modules', 'claude-session-manager', binary), { force: true })
  const script = `
    const { SessionManager, countTokens } = require('claude-session-manager');
    const { startStandInServer } = require('claude-session-manager/testing');
    const path = require('path'), fs = require('fs');
    (async () => {
      const server = await startStandInServer();
      const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'csm-app-'));
      fs.mkdirSync(dir + '/cfg');
      fs.mkdirSync(dir + '/work');
      const m = new SessionManager({ workingDirectory: dir + '/work', stateDirectory: dir + '/state', claudePath: ${JSON.stringify(path.join(root, 'node_modules', '.bin', 'claude'))},
        env: { ...server.env(), CLAUDE_CONFIG_DIR: dir + '/cfg' } });
      const r = await m.executeTask({ prompt: 'from a packed install', projectId: 'p', userId: 'u' });
      console.log(JSON.stringify({ tokens: countTokens('hello world'), success: r.success, result: r.result, error: r.error,
        from: require.resolve('claude-session-manager-linux-x64-gnu') }));
      await m.close(); await server.close();
    })().catch((e) => { console.error(e); process.exit(1) });`
  const run = spawnSync(process.execPath, ['-e', script], { cwd: project, env: { ...process.env, PATH }, encoding: 'utf8' })
  t.assert.strictEqual(run.status, 0, run.stderr)
  const got = JSON.parse(run.stdout.trim())
  t.assert.deepStrictEqual({ tokens: got.tokens, success: got.success, result: got.result }, { tokens: 2, success: true, result: 'Echo #1: from a packed install' }, JSON.stringify(got.error))
  t.assert.ok(got.from.includes(path.join(project, 'node_modules')), got.from)
})

test('packaging: npm pack refuses a debug build of the addon and says to run the release build', (t) => {
  const { debug, size } = (() => {
    const bytes = fs.readFileSync(path.join(root, binary))
    return { debug: bytes.includes('CSM_DEBUG_PANIC'), size: bytes.length }
  })()
  const run = spawnSync('npm', ['pack', '--dry-run', '--json'], { cwd: root, encoding: 'utf8' })
  if (debug) {
    t.assert.notStrictEqual(run.status, 0, 'a debug build is not packed')
    t.assert.match(run.stderr, /npm pack refused: claude-session-manager\.linux-x64-gnu\.node is a debug build .*run `npm run build`/)
  } else {
    // A release build (after `npm run build`): packed, and small.
    t.assert.strictEqual(run.status, 0, run.stderr)
    const [info] = JSON.parse(run.stdout)
    t.assert.ok(info.files.some((f) => f.path === binary), 'the addon is packed')
    t.assert.ok(size < 60e6, `a release addon is tens of MB, not ${size}`)
  }
})
