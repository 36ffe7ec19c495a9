// The sandbox's attack tests again, with the server as an unprivileged user (the other way the
// sandbox is built: a user namespace of the server's uid instead of a uid of its own). Runs when
// this process is root (as CI is), by starting the same test file as uid 65534 (`setpriv`).
import { test } from 'node:test'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p))
const FILES = ['attacks-sandbox.test.mjs', 'attacks-round3.test.mjs']

test('the sandbox attack tests (attacks-sandbox, attacks-round3) pass with the server as an unprivileged user (uid 65534)', (t) => {
  if (process.getuid?.() !== 0) return t.skip('this process is not root: attacks-sandbox.test.mjs already runs unprivileged here')
  if (!setpriv) return t.skip('setpriv (util-linux) is not installed')
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'csm-unpriv-'))
  fs.chownSync(home, 65534, 65534)
  // A test file started from a test: without this, node's runner sees it is nested and runs nothing.
  const env = { ...process.env, HOME: home, TMPDIR: home }
  delete env.NODE_TEST_CONTEXT
  try {
    const r = spawnSync(
      setpriv,
      ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--test', '--test-concurrency=1', ...FILES.map((f) => path.join(here, f))],
      { env, encoding: 'utf8', timeout: 15 * 60 * 1000, cwd: path.join(here, '..') },
    )
    const out = `${r.stdout}\n${r.stderr}`
    const count = (k) => Number((out.match(new RegExp(`^# ${k} (\\d+)$`, 'm')) ?? [])[1] ?? NaN)
    t.diagnostic(`as uid 65534: pass ${count('pass')}, fail ${count('fail')}, skipped ${count('skipped')}`)
    t.assert.strictEqual(r.status, 0, out.slice(-6000))
    t.assert.strictEqual(count('fail'), 0, out.slice(-6000))
    t.assert.ok(count('pass') >= 15, `the sandbox attacks ran (not skipped) as uid 65534:\n${out.slice(-3000)}`)
  } finally {
    fs.rmSync(home, { recursive: true, force: true })
  }
})
