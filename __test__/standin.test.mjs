// Tests of the Messages API stand-in (claude-session-manager/testing) against the real
// `claude` CLI, fully offline. Run: node --test __test__/standin.test.mjs
import { test, before, after, beforeEach } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { startStandInServer, countInputTokens } = require('claude-session-manager/testing')
import { findClaude } from './helpers.mjs'

const RUN_TIMEOUT_MS = 20_000

const CLAUDE = findClaude()

/** process.env without anything that could point the CLI elsewhere. */
function cleanEnv() {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(ANTHROPIC_|CLAUDE_|CLAUDECODE|AWS_|GOOGLE_|VERTEX_)/.test(k)) continue
    env[k] = v
  }
  return env
}

let server
const tempDirs = []

function makeDirs() {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'csm-standin-'))
  tempDirs.push(base)
  const cwd = path.join(base, 'work')
  const configDir = path.join(base, 'config')
  fs.mkdirSync(cwd)
  fs.mkdirSync(configDir)
  return { cwd: fs.realpathSync(cwd), configDir }
}

/**
 * Runs `claude -p --output-format stream-json --verbose ...args` with `prompt` on stdin.
 * `onLine(line, child)` sees each parsed stdout line as it arrives.
 */
function runClaude(args, prompt, { cwd, configDir, env = {}, onLine } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(CLAUDE, ['-p', '--output-format', 'stream-json', '--verbose', ...args], {
      cwd,
      env: { ...cleanEnv(), ...server.env(), CLAUDE_CONFIG_DIR: configDir, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const lines = []
    let buf = ''
    let stderr = ''
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`claude timed out after ${RUN_TIMEOUT_MS} ms; stderr: ${stderr}`))
    }, RUN_TIMEOUT_MS)
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk) => {
      buf += chunk
      let nl
      while ((nl = buf.indexOf('\n')) >= 0) {
        const raw = buf.slice(0, nl).trim()
        buf = buf.slice(nl + 1)
        if (!raw) continue
        let line
        try {
          line = JSON.parse(raw)
        } catch {
          line = { type: 'unparsed', raw }
        }
        lines.push(line)
        if (onLine) onLine(line, child)
      }
    })
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const result = lines.find((l) => l.type === 'result')
      const init = lines.find((l) => l.type === 'system' && l.subtype === 'init')
      resolve({ code, signal, lines, result, init, stderr })
    })
    child.stdin.end(prompt)
  })
}

const messageCalls = () => server.requests.filter((r) => r.method === 'POST' && r.path === '/v1/messages')

function findTranscript(configDir, sessionId) {
  const projects = path.join(configDir, 'projects')
  for (const dir of fs.existsSync(projects) ? fs.readdirSync(projects) : []) {
    const file = path.join(projects, dir, `${sessionId}.jsonl`)
    if (fs.existsSync(file)) return file
  }
  return null
}

async function waitFor(predicate, ms = 5000) {
  const start = Date.now()
  while (!predicate()) {
    if (Date.now() - start > ms) throw new Error('waitFor timed out')
    await new Promise((r) => setTimeout(r, 20))
  }
}

before(async () => {
  server = await startStandInServer()
})

beforeEach(() => server.reset())

after(async () => {
  await server.close()
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true })
})

test('server: inFlight and maxInFlight count the messages calls open at once', async () => {
  const headers = { 'content-type': 'application/json', 'x-api-key': 'test-key' }
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] })
  const post = () => fetch(`${server.url}/v1/messages`, { method: 'POST', headers, body }).then((r) => r.json())
  server.enqueue({ text: 'a', delayMs: 300 }, { text: 'b', delayMs: 300 }, { text: 'c', delayMs: 300 })
  const three = [post(), post(), post()]
  await waitFor(() => server.inFlight === 3)
  await Promise.all(three)
  await fetch(`${server.url}/v1/messages/count_tokens`, { method: 'POST', headers, body }) // not a messages call
  assert.equal(server.maxInFlight, 3)
  assert.equal(server.inFlight, 0)
  await post()
  assert.equal(server.maxInFlight, 3, 'a high-water mark')
  server.reset()
  assert.equal(server.maxInFlight, 0)
  await post()
  assert.equal(server.maxInFlight, 1)
})

test('server: an answer with `after` is held until its promise settles', async () => {
  const headers = { 'content-type': 'application/json', 'x-api-key': 'test-key' }
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] })
  let release
  server.enqueue({ text: 'held', after: new Promise((r) => (release = r)) })
  let answered = false
  const call = fetch(`${server.url}/v1/messages`, { method: 'POST', headers, body }).then((r) => r.json()).then((j) => ((answered = true), j))
  try {
    await waitFor(() => server.inFlight === 1)
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(answered, false, 'held while the promise is pending')
  } finally {
    release()
  }
  assert.equal((await call).content[0].text, 'held')
})

test('server basics: env(), routes, auth, count_tokens', async () => {
  assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  assert.deepEqual(server.env(), {
    ANTHROPIC_BASE_URL: server.url,
    ANTHROPIC_API_KEY: 'test-key',
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    CLAUDE_CODE_MAX_RETRIES: '0',
  })
  const headers = { 'content-type': 'application/json', 'x-api-key': 'test-key' }
  const body = { model: 'm', messages: [{ role: 'user', content: 'hi' }] }

  const ct = await fetch(`${server.url}/v1/messages/count_tokens?beta=true`, { method: 'POST', headers, body: JSON.stringify(body) })
  assert.equal(ct.status, 200)
  assert.deepEqual(await ct.json(), { input_tokens: countInputTokens(body) })

  const msg = await fetch(`${server.url}/v1/messages`, { method: 'POST', headers, body: JSON.stringify(body) })
  assert.equal(msg.status, 200)
  const json = await msg.json()
  assert.equal(json.content[0].text, 'Echo #1: hi')
  assert.deepEqual(json.usage, server.responses.at(-1).usage)

  const bad = await fetch(`${server.url}/v1/messages`, { method: 'POST', headers: { ...headers, 'x-api-key': 'nope' }, body: '{}' })
  assert.equal(bad.status, 401)
  assert.equal((await bad.json()).error.type, 'authentication_error')

  const missing = await fetch(`${server.url}/v1/nothing`, { headers })
  assert.equal(missing.status, 404)
  assert.equal((await fetch(server.url, { method: 'HEAD' })).status, 200)
  assert.equal(server.requests.length, 5)
  assert.equal(server.responses.length, 5)
})

test('text reply reaches the result line; session id header and usage are recorded', async () => {
  const { cwd, configDir } = makeDirs()
  const sessionId = randomUUID()
  server.enqueue({ text: 'Hello from the stand-in, three words.' })

  const run = await runClaude(['--session-id', sessionId], 'say hello', { cwd, configDir })
  assert.equal(run.code, 0, run.stderr)
  assert.equal(run.init.session_id, sessionId)
  assert.equal(run.result.subtype, 'success')
  assert.equal(run.result.is_error, false)
  assert.equal(run.result.result, 'Hello from the stand-in, three words.')
  assert.equal(run.result.session_id, sessionId)

  const calls = messageCalls()
  assert.equal(calls.length, 1)
  assert.equal(calls[0].sessionId, sessionId)
  assert.equal(calls[0].body.stream, true)
  assert.equal(server.pending, 0)

  // The CLI's result usage is exactly what the stand-in reported.
  const reported = server.responses[calls[0].index].usage
  assert.equal(reported.input_tokens, countInputTokens(calls[0].body))
  assert.equal(reported.output_tokens, Math.ceil('Hello from the stand-in, three words.'.length / 4))
  for (const k of ['input_tokens', 'output_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens']) {
    assert.equal(run.result.usage[k], reported[k], k)
  }
  const model = calls[0].body.model
  assert.equal(run.result.modelUsage[model].inputTokens, reported.input_tokens)
  assert.equal(run.result.modelUsage[model].outputTokens, reported.output_tokens)

  assert.ok(findTranscript(configDir, sessionId), 'transcript file written under CLAUDE_CONFIG_DIR/projects')
})

test('--resume sends the earlier turn (echo count goes up)', async () => {
  const { cwd, configDir } = makeDirs()
  const sessionId = randomUUID()

  const first = await runClaude(['--session-id', sessionId], 'first question', { cwd, configDir })
  assert.equal(first.code, 0, first.stderr)
  assert.equal(first.result.result, 'Echo #1: first question')

  const second = await runClaude(['--resume', sessionId], 'second question', { cwd, configDir })
  assert.equal(second.code, 0, second.stderr)
  assert.equal(second.result.result, 'Echo #2: second question')
  assert.equal(second.result.session_id, sessionId)

  const calls = messageCalls()
  assert.equal(calls.length, 2)
  assert.deepEqual(calls.map((c) => c.sessionId), [sessionId, sessionId])
  const history = JSON.stringify(calls[1].body.messages)
  assert.ok(history.includes('first question'), 'resumed request carries the first user turn')
  assert.ok(history.includes('Echo #1: first question'), 'resumed request carries the first answer')
})

test('scripted Write tool use really writes the file, then the next reply ends the turn', async () => {
  const { cwd, configDir } = makeDirs()
  const sessionId = randomUUID()
  const target = path.join(cwd, 'notes', 'hello.txt')
  server.enqueue(
    { text: 'Writing the file now.', toolUse: { name: 'Write', input: { file_path: target, content: 'written by the stand-in\n' } } },
    { text: 'The file is written.' },
  )

  const run = await runClaude(['--session-id', sessionId, '--permission-mode', 'acceptEdits'], 'write the file', {
    cwd,
    configDir,
  })
  assert.equal(run.code, 0, run.stderr)
  assert.equal(fs.readFileSync(target, 'utf8'), 'written by the stand-in\n')
  assert.equal(run.result.is_error, false)
  assert.equal(run.result.result, 'The file is written.')
  assert.equal(run.result.num_turns, 2)

  const calls = messageCalls()
  assert.equal(calls.length, 2)
  const toolUseId = server.responses[calls[0].index].content.find((b) => b.type === 'tool_use').id
  assert.equal(server.responses[calls[0].index].stopReason, 'tool_use')
  const lastMessage = calls[1].body.messages.at(-1)
  assert.equal(lastMessage.role, 'user')
  const toolResult = lastMessage.content.find((b) => b.type === 'tool_result')
  assert.equal(toolResult.tool_use_id, toolUseId)
  assert.notEqual(toolResult.is_error, true)

  const toolLine = run.lines.find((l) => l.type === 'assistant' && l.message.content.some((b) => b.type === 'tool_use'))
  assert.equal(toolLine.message.content.find((b) => b.type === 'tool_use').name, 'Write')

  // Usage across both calls adds up in the result.
  const sum = (k) => calls.reduce((n, c) => n + server.responses[c.index].usage[k], 0)
  assert.equal(run.result.usage.output_tokens, sum('output_tokens'))
})

test('529 overloaded error gives a result with is_error true and no retry', async () => {
  const { cwd, configDir } = makeDirs()
  server.enqueue({ error: { status: 529, type: 'overloaded_error', message: 'stand-in is overloaded' } })

  const run = await runClaude(['--session-id', randomUUID()], 'hello?', { cwd, configDir })
  assert.ok(run.result, `no result line; stderr: ${run.stderr}`)
  assert.equal(run.result.is_error, true)
  assert.equal(run.result.subtype, 'success') // sic: the CLI reports API errors this way
  assert.equal(run.result.api_error_status, 529)
  assert.match(run.result.result, /529/)
  assert.equal(messageCalls().length, 1)
  assert.equal(server.responses[0].status, 529)
  assert.equal(server.responses[0].kind, 'error')
})

test('chunkDelayMs lets a client abort mid-stream; the server records the abort', async () => {
  const { cwd, configDir } = makeDirs()
  const words = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ')
  server.enqueue({ text: words, chunkDelayMs: 150 })

  let deltas = 0
  const run = await runClaude(['--session-id', randomUUID(), '--include-partial-messages'], 'stream slowly', {
    cwd,
    configDir,
    onLine(line, child) {
      if (line.type === 'stream_event' && line.event.type === 'content_block_delta' && ++deltas === 2) child.kill('SIGKILL')
    },
  })
  assert.equal(run.signal, 'SIGKILL')
  assert.equal(run.result, undefined)
  const call = messageCalls()[0]
  await waitFor(() => call.endedAt !== null)
  assert.equal(call.aborted, true)
  const response = server.responses[call.index]
  assert.equal(response.completed, false)
  assert.equal(response.stopReason, null)
  assert.equal(response.usage.output_tokens, 1) // only message_start's usage was reported
})

test('dropConnection: the CLI falls back to a non-streaming retry, or fails when that is disabled', async () => {
  const { cwd, configDir } = makeDirs()
  server.enqueue({ text: 'this stream will break', dropConnection: true }, { text: 'recovered without streaming' })
  const run = await runClaude(['--session-id', randomUUID()], 'hi', { cwd, configDir })
  assert.equal(run.code, 0, run.stderr)
  assert.equal(run.result.result, 'recovered without streaming')
  const calls = messageCalls()
  assert.deepEqual(calls.map((c) => c.body.stream), [true, false])
  assert.equal(calls[0].aborted, true)
  assert.equal(server.responses[0].kind, 'drop')

  server.reset()
  server.enqueue({ text: 'this stream will break too', dropConnection: true })
  const failed = await runClaude(['--session-id', randomUUID()], 'hi', {
    cwd,
    configDir,
    env: { CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK: '1' },
  })
  assert.equal(failed.result.is_error, true)
  assert.equal(messageCalls().length, 1)
})
