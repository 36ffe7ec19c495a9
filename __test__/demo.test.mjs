// `npm run demo` (examples/demo.mjs) against the stand-in: it explains what the stand-in's
// `Echo #<n>` proves at each step (resume, fork, the parent unchanged), labels the stand-in's
// costs as such, and leaves no temp folder behind.
import { test } from 'node:test'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

test('demo: explains the stand-in answers and costs, and removes its temp folder', (t) => {
  const env = { ...process.env }
  for (const k of Object.keys(env)) if (/^(ANTHROPIC_|CLAUDE_)/.test(k)) delete env[k]
  // Its own TMPDIR, so that what the demo leaves (or removes) is its alone.
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'csm-demo-test-'))
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }))
  const run = spawnSync(process.execPath, [path.join(root, 'examples', 'demo.mjs')], { env: { ...env, TMPDIR: tmp }, encoding: 'utf8', timeout: 240000 })
  t.assert.strictEqual(run.status, 0, run.stderr + run.stdout)
  const out = run.stdout
  t.assert.match(out, /stand-in API server/)
  t.assert.match(out, /`Echo #<n>: <your last message>`, where <n> is the\s+number of user turns/)
  t.assert.match(out, /Echo #2: What is my name/)
  t.assert.match(out, /the model was sent 2 user turns \(as it should\): turn 1 came with it, so the session was resumed/)
  t.assert.strictEqual(out.match(/\(as it should\)/g)?.length, 4, out)
  t.assert.doesNotMatch(out, /EXPECTED/)
  for (const line of out.split('\n').filter((l) => /cost:\s+\$/.test(l))) t.assert.match(line, /\$\d+\.\d+ \(stand-in\)/, line)
  t.assert.deepStrictEqual(fs.readdirSync(tmp).filter((f) => f.startsWith('csm-demo-')), [], 'no /tmp/csm-demo-* left')
})
