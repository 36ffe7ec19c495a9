#!/usr/bin/env node
// Runs the CLI-facing tests against another version of the `claude` CLI than the pinned one:
//   node scripts/test-cli-version.mjs 2.1.332 [test files...]
// The version is installed from the npm registry into a cache folder of its own (once), and the
// tests find it through CLAUDE_PATH. Without test files, the ones that drive the CLI the most
// (tasks, warm processes, sessions, forwarding, the meter, the sandbox, callbacks) run.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const [version, ...files] = process.argv.slice(2)
if (!/^\d+\.\d+\.\d+$/.test(version ?? '')) {
  console.error('usage: node scripts/test-cli-version.mjs <version, e.g. 2.1.332> [test files...]')
  process.exit(2)
}
const dir = path.join(os.homedir(), '.cache', 'claude-session-manager', 'cli-versions', version)
const bin = path.join(dir, 'node_modules', '@anthropic-ai', 'claude-code', 'bin', 'claude.exe')
if (!fs.existsSync(bin)) {
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, 'package.json'), '{"private":true}\n')
  execFileSync('npm', ['install', '--no-audit', '--no-fund', `@anthropic-ai/claude-code@${version}`], { cwd: dir, stdio: 'inherit' })
}
const reported = execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim()
if (!reported.startsWith(version)) {
  console.error(`${bin} reports ${reported}, not ${version}`)
  process.exit(1)
}
console.log(`running against ${bin} (${reported})`)
const tests = files.length
  ? files
  : ['tasks', 'warm', 'sessions', 'forward', 'context', 'attacks-sandbox', 'callbacks'].map((f) => `__test__/${f}.test.mjs`)
try {
  execFileSync(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=1200000', ...tests], {
    stdio: 'inherit',
    env: { ...process.env, CLAUDE_PATH: bin },
  })
} catch (e) {
  process.exit(e.status ?? 1)
}
