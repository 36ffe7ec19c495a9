// Warm sessions (issue #15): a session's CLI stays running between tasks; the real `claude` CLI
// against the stand-in API. Which process ran a task is read from /proc (the processes whose argv
// names the session), never from timing.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { spawn, execFileSync } from 'node:child_process'
import { eventually, makeManager, startStandInServer, processesMentioning, tempDir, testBackends, backendTag, PG_URL, skipWithoutPostgres, gate } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const task = (manager, extra = {}) => manager.executeTask({ projectId: 'p', userId: 'u', prompt: 'hello', ...extra })

/** A manager with warm processes on (the default), closed after the test. */
function warmManager(t, options = {}) {
  const m = makeManager({ server, warmIdleMs: 600_000, ...options })
  t.after(() => m.manager.close())
  return m
}

const same = (a, b) => a.length > 0 && JSON.stringify([...a].sort()) === JSON.stringify([...b].sort())

test('warm: the second task on a session runs in the same CLI process, with the history', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const first = await task(manager, { prompt: 'one' })
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  const pids = processesMentioning(first.sessionId)
  t.assert.ok(pids.length > 0, 'the CLI is still running after its task')
  const second = await task(manager, { prompt: 'two', sessionId: first.sessionId })
  t.assert.strictEqual(second.success, true, JSON.stringify(second.error))
  t.assert.strictEqual(second.result, 'Echo #2: two')
  t.assert.ok(same(processesMentioning(first.sessionId), pids), 'the same process ran the second task')
  // Costs stay per task (differences of the CLI's cumulative figure), as cold.
  t.assert.ok(second.cost > 0 && second.cost < first.cost * 1.5, `${second.cost} vs ${first.cost}`)
  const s = await manager.getSession(first.sessionId, 'u')
  t.assert.strictEqual(s.taskCount, 2)
  t.assert.ok(Math.abs(s.totalCostUsd - (first.cost + second.cost)) < 1e-9)
})

test('warm: a changed model or permission mode starts a new process; the old one is gone', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const first = await task(manager, { prompt: 'one' })
  const a = processesMentioning(first.sessionId)
  const second = await task(manager, { prompt: 'two', sessionId: first.sessionId, model: 'haiku' })
  t.assert.strictEqual(second.result, 'Echo #2: two')
  const b = processesMentioning(first.sessionId)
  t.assert.ok(b.length > 0 && !b.some((p) => a.includes(p)), `new process for the new model: ${a} -> ${b}`)
  t.assert.ok(server.requests.filter((r) => r.path === '/v1/messages').at(-1).body.model.includes('haiku'))
  const third = await task(manager, { prompt: 'three', sessionId: first.sessionId, model: 'haiku', permissionMode: 'acceptEdits' })
  t.assert.strictEqual(third.result, 'Echo #3: three')
  const c = processesMentioning(first.sessionId)
  t.assert.ok(c.length > 0 && !c.some((p) => b.includes(p)), `new process for the new permission mode: ${b} -> ${c}`)
})

// SQLite: two managers on one file and one machine folder. PostgreSQL: two nodes, each with its
// own folders (their own copy of the transcript), on one schema: the other node can answer
// `Echo #2` only if the warm process's turn reached the store while that process still runs.
for (const backend of testBackends()) {
  test(`warm: a task run by another ${backend === 'sqlite' ? 'manager' : 'node'} in between: the idle warm CLI is gone before that task's CLI starts; the next task resumes cold with the whole history${backendTag(backend)}`, async (t) => {
    server.reset()
    const a = warmManager(t, { backend })
    const { manager } = a
    const other = makeManager({ server, dir: backend === 'sqlite' ? a.dir : tempDir(), backend, warmIdleMs: 0, ...a.store }).manager
    t.after(() => other.close())
    const first = await task(manager, { prompt: 'one' })
    const warmPids = processesMentioning(first.sessionId)
    t.assert.ok(warmPids.length > 0)
    // One CLI per session across managers: the idle one is gone before the other's task starts.
    // (Read from /proc: a process that is killed but not yet reaped has no command line left.)
    let aliveAtStart
    const elsewhere = await other.executeTask(
      { projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId },
      { onEvent: (e) => { if (e.type === 'task_started') aliveAtStart = processesMentioning(first.sessionId).filter((p) => warmPids.includes(p)) } },
    )
    t.assert.strictEqual(elsewhere.result, 'Echo #2: two', JSON.stringify(elsewhere.error))
    t.assert.deepStrictEqual(aliveAtStart, [], 'the idle warm CLI of the first manager was gone when the other task started')
    const third = await task(manager, { prompt: 'three', sessionId: first.sessionId })
    // A stale warm process would answer from its own memory: `Echo #2`.
    t.assert.strictEqual(third.result, 'Echo #3: three', JSON.stringify(third.error))
    const now = processesMentioning(first.sessionId)
    t.assert.ok(!now.some((p) => warmPids.includes(p)), 'the stale process is gone')
    t.assert.deepStrictEqual((await manager.listTasks(first.sessionId, 'u')).map((x) => x.status), ['succeeded', 'succeeded', 'succeeded'])
  })
}

test('warm on PostgreSQL: each turn is in the store when its task returns, while the CLI keeps running; what it writes as it closes is stored too', async (t) => {
  if (skipWithoutPostgres(t)) return
  server.reset()
  const { manager, store } = warmManager(t, { backend: 'postgres' })
  const sql = (q) => execFileSync('psql', [PG_URL, '-AtXqc', q.replaceAll('{S}', `"${store.databaseSchema}"`)], { encoding: 'utf8' }).trim()
  const stored = (sid, type) => Number(sql(`SELECT count(*) FROM {S}.transcript_entries WHERE session_id = '${sid}' AND line::jsonb->>'type' = '${type}'`))
  const r = await task(manager, { prompt: 'one' })
  t.assert.strictEqual(r.result, 'Echo #1: one')
  const pids = processesMentioning(r.sessionId)
  t.assert.ok(pids.length > 0, 'kept running after its task')
  t.assert.strictEqual(stored(r.sessionId, 'assistant'), 1, 'the answer is in the store')
  const again = await task(manager, { prompt: 'two', sessionId: r.sessionId })
  t.assert.strictEqual(again.result, 'Echo #2: two')
  t.assert.ok(same(processesMentioning(r.sessionId), pids), 'the same process ran the second task')
  t.assert.strictEqual(stored(r.sessionId, 'assistant'), 2)
  t.assert.strictEqual(stored(r.sessionId, 'user'), 2)
  // The CLI writes its cost state when its stdin closes, after its last task: stored under that
  // task's lease (no other task took the session since).
  t.assert.strictEqual(stored(r.sessionId, 'cost-state'), 0)
  await manager.close()
  t.assert.deepStrictEqual(processesMentioning(r.sessionId), [])
  t.assert.ok(stored(r.sessionId, 'cost-state') >= 1, 'the closing lines reached the store')
  // Nothing stored twice.
  t.assert.strictEqual(Number(sql(`SELECT count(*) - count(DISTINCT uuid) FROM {S}.transcript_entries WHERE session_id = '${r.sessionId}' AND uuid IS NOT NULL`)), 0)
})

test('warm: an idle process is closed after warmIdleMs', async (t) => {
  server.reset()
  const { manager } = warmManager(t, { warmIdleMs: 2000 })
  const r = await task(manager)
  t.assert.strictEqual(r.success, true)
  t.assert.ok(processesMentioning(r.sessionId).length > 0, 'kept running after the task')
  t.assert.ok(await eventually(() => processesMentioning(r.sessionId).length === 0), 'closed once idle')
  // The session goes on, cold-started again.
  const again = await task(manager, { prompt: 'again', sessionId: r.sessionId })
  t.assert.strictEqual(again.result, 'Echo #2: again')
})

test('warm: maxWarmSessions closes the least recently used idle process', async (t) => {
  server.reset()
  const { manager } = warmManager(t, { maxWarmSessions: 1 })
  const a = await task(manager, { prompt: 'a' })
  t.assert.ok(processesMentioning(a.sessionId).length > 0)
  const b = await task(manager, { prompt: 'b' })
  t.assert.ok(processesMentioning(b.sessionId).length > 0)
  t.assert.ok(await eventually(() => processesMentioning(a.sessionId).length === 0), 'the older one was evicted')
})

test('warm: close() leaves no CLI running', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, warmIdleMs: 600_000 })
  const a = await task(manager, { prompt: 'a' })
  const b = await task(manager, { prompt: 'b' })
  t.assert.ok(processesMentioning(a.sessionId).length > 0 && processesMentioning(b.sessionId).length > 0)
  await manager.close()
  t.assert.deepStrictEqual(processesMentioning(a.sessionId), [])
  t.assert.deepStrictEqual(processesMentioning(b.sessionId), [])
})

test('warm: warmIdleMs 0 keeps today\'s path: one process per task, gone when the task is', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, warmIdleMs: 0 })
  t.after(() => manager.close())
  const r = await task(manager)
  t.assert.strictEqual(r.success, true)
  t.assert.ok(await eventually(() => processesMentioning(r.sessionId).length === 0))
})

test('warm: abort interrupts the turn; the process stays and the session goes on in it', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const first = await task(manager, { prompt: 'before' })
  const pids = processesMentioning(first.sessionId)
  server.enqueue({ text: 'a very slow answer that streams word by word for a long time indeed', chunkDelayMs: 1000 })
  const controller = new AbortController()
  let aborted = false
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'slow', sessionId: first.sessionId, includePartialMessages: true },
    {
      signal: controller.signal,
      onEvent: (e) => {
        if (e.type === 'stream_event' && !aborted) {
          aborted = true
          controller.abort()
        }
      },
    },
  )
  t.assert.ok(aborted)
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'ABORTED')
  t.assert.strictEqual((await manager.listTasks(first.sessionId, 'u')).at(-1).status, 'aborted')
  t.assert.ok(same(processesMentioning(first.sessionId), pids), 'the interrupt kept the process')
  const next = await task(manager, { prompt: 'after', sessionId: first.sessionId })
  t.assert.strictEqual(next.success, true, JSON.stringify(next.error))
  t.assert.ok(same(processesMentioning(first.sessionId), pids), 'and the next task ran in it')
})

test('warm: maxBudgetUsd is per task, not per process', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const first = await task(manager, { prompt: 'one' })
  const pids = processesMentioning(first.sessionId)
  // One stand-in turn costs more than this.
  const over = await task(manager, { prompt: 'two', sessionId: first.sessionId, maxBudgetUsd: first.cost / 10 })
  t.assert.strictEqual(over.success, false)
  t.assert.strictEqual(over.error.code, 'BUDGET_EXCEEDED')
  // A process-wide budget would now refuse every prompt; a task's own budget does not.
  const within = await task(manager, { prompt: 'three', sessionId: first.sessionId, maxBudgetUsd: first.cost * 10 })
  t.assert.strictEqual(within.success, true, JSON.stringify(within.error))
  t.assert.strictEqual(within.result, 'Echo #3: three')
  // A budgeted task runs in a process of its own, started with the CLI's --max-budget-usd, so
  // that the budget holds before a tool runs (attacks-budget.test.mjs): the warm CLI is not reused.
  t.assert.ok(!same(processesMentioning(first.sessionId), pids), 'not in the warm process of the first task')
})

// Permission prompts: `executeTask(request, { canUseTool })` over --permission-prompt-tool=stdio.
function writeCall(work, name, content = 'from the agent\n') {
  const file = path.join(work, name)
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content } } }, { text: 'Done.' })
  return file
}

test('canUseTool: allow runs the tool; the callback gets the SDK arguments', async (t) => {
  server.reset()
  const { manager, work } = warmManager(t)
  const file = writeCall(work, 'allowed.txt')
  const calls = []
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'write it', permissionMode: 'default' },
    {
      canUseTool: async (toolName, input, options) => {
        calls.push({ toolName, input, options })
        return { behavior: 'allow' }
      },
    },
  )
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.strictEqual(calls.length, 1)
  t.assert.strictEqual(calls[0].toolName, 'Write')
  t.assert.strictEqual(calls[0].input.file_path, file)
  t.assert.ok(calls[0].options.signal instanceof AbortSignal)
  t.assert.strictEqual(calls[0].options.signal.aborted, false)
  t.assert.ok(Array.isArray(calls[0].options.suggestions))
  t.assert.match(calls[0].options.toolUseID, /^toolu_/)
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'from the agent\n')
  t.assert.deepStrictEqual(r.permissionDenials, [])
})

test('canUseTool: allow with updatedInput runs the tool with the host\'s input', async (t) => {
  server.reset()
  const { manager, work } = warmManager(t)
  const file = writeCall(work, 'edited.txt')
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'write it', permissionMode: 'default' },
    { canUseTool: async (_name, input) => ({ behavior: 'allow', updatedInput: { ...input, content: 'REWRITTEN by host\n' } }) },
  )
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'REWRITTEN by host\n')
})

test('canUseTool: deny keeps the tool from running and is listed in permissionDenials', async (t) => {
  server.reset()
  const { manager, work } = warmManager(t)
  const file = writeCall(work, 'denied.txt')
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'write it', permissionMode: 'default' },
    { canUseTool: async () => ({ behavior: 'deny', message: 'host says no' }) },
  )
  t.assert.strictEqual(fs.existsSync(file), false)
  t.assert.strictEqual(r.permissionDenials.length, 1)
  t.assert.strictEqual(r.permissionDenials[0].tool_name, 'Write')
  // The model was told why.
  const toolResult = JSON.stringify(server.requests.filter((x) => x.path === '/v1/messages').at(-1).body.messages.at(-1))
  t.assert.match(toolResult, /host says no/)
})

test('canUseTool: nobody deciding within permissionTimeoutMs denies, and the signal aborts', async (t) => {
  server.reset()
  const { manager, work } = warmManager(t, { permissionTimeoutMs: 500, warmIdleMs: 0 })
  const file = writeCall(work, 'late.txt')
  let signal
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'write it', permissionMode: 'default' },
    {
      canUseTool: (_name, _input, options) => {
        signal = options.signal
        return new Promise(() => {})
      },
    },
  )
  t.assert.strictEqual(fs.existsSync(file), false)
  t.assert.strictEqual(r.permissionDenials.length, 1)
  t.assert.ok(signal?.aborted, 'the callback was told to stop')
  t.assert.match(JSON.stringify(server.requests.filter((x) => x.path === '/v1/messages').at(-1).body.messages.at(-1)), /nobody decided/)
  // With warm processes off, the process that asked is gone with its task.
  t.assert.ok(await eventually(() => processesMentioning(r.sessionId).length === 0))
})

test('canUseTool: a throwing callback denies; an abort while it waits withdraws the request (signal aborts) and the session stays usable', async (t) => {
  server.reset()
  const { manager, work } = warmManager(t)
  const thrown = writeCall(work, 'thrown.txt')
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'write it', permissionMode: 'default' },
    {
      canUseTool: () => {
        throw new Error('callback broke')
      },
    },
  )
  t.assert.strictEqual(fs.existsSync(thrown), false)
  t.assert.strictEqual(r.permissionDenials.length, 1)

  const pending = writeCall(work, 'pending.txt')
  const controller = new AbortController()
  let signal
  const aborted = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'write again', permissionMode: 'default', sessionId: r.sessionId },
    {
      signal: controller.signal,
      canUseTool: (_name, _input, options) => {
        signal = options.signal
        setImmediate(() => controller.abort())
        return new Promise(() => {})
      },
    },
  )
  t.assert.strictEqual(aborted.error?.code, 'ABORTED')
  t.assert.strictEqual(fs.existsSync(pending), false)
  t.assert.ok(await eventually(() => signal?.aborted), 'the callback was told to stop')
  const next = await task(manager, { prompt: 'after', sessionId: r.sessionId })
  t.assert.strictEqual(next.success, true, JSON.stringify(next.error))
})

test('sendMessage: a message sent while a task runs is answered in that task; with no task running it is refused', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const first = await task(manager, { prompt: 'one' })
  // The first answer is held until the message is steered in (a loaded machine may take long).
  const steered = gate()
  server.enqueue({ text: 'a slow first answer', after: steered.promise })
  let sent
  const r = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId },
    {
      onEvent: (e) => {
        if (e.type === 'system' && e.subtype === 'init' && !sent) {
          sent = manager.sendMessage({ sessionId: first.sessionId, userId: 'u', prompt: 'and also this' })
          sent.finally(steered.open).catch(() => {})
        }
      },
    },
  )
  await sent
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  // The model saw the steered message after its answer to the prompt, in the same task.
  t.assert.strictEqual(r.result, 'Echo #3: and also this')
  t.assert.strictEqual(server.requests.filter((x) => x.path === '/v1/messages').length, 3)
  t.assert.deepStrictEqual((await manager.listTasks(first.sessionId, 'u')).map((x) => x.status), ['succeeded', 'succeeded'])
  await t.assert.rejects(manager.sendMessage({ sessionId: first.sessionId, userId: 'u', prompt: 'nobody listens' }), { code: 'INVALID_ARGUMENT' })
  await t.assert.rejects(manager.sendMessage({ sessionId: first.sessionId, userId: 'someone-else', prompt: 'x' }), { code: 'SESSION_NOT_FOUND' })
})

test('getContextUsage: the CLI\'s own breakdown from a warm process, else the stored meter', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const r = await task(manager)
  const before = server.requests.length
  const live = await manager.getContextUsage(r.sessionId, 'u')
  t.assert.strictEqual(live.source, 'cli')
  t.assert.ok(live.usage.totalTokens > 0, JSON.stringify(live))
  t.assert.ok(Array.isArray(live.usage.categories) && live.usage.categories.length > 0)
  t.assert.strictEqual(server.requests.length, before, 'summary mode makes no API call')
  const cold = makeManager({ server, warmIdleMs: 0 }).manager
  t.after(() => cold.close())
  const c = await task(cold)
  const stored = await cold.getContextUsage(c.sessionId, 'u')
  t.assert.strictEqual(stored.source, 'store')
  t.assert.strictEqual(stored.contextInfo.estimatedTokens, c.contextInfo.estimatedTokens)
})

/** The key-proxy settings in the environment of one of the session's CLI processes. */
function cliKey(sessionId) {
  for (const pid of processesMentioning(sessionId)) {
    try {
      const env = Object.fromEntries(
        fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
      )
      if (env.ANTHROPIC_API_KEY && env.ANTHROPIC_BASE_URL) return { key: env.ANTHROPIC_API_KEY, base: env.ANTHROPIC_BASE_URL }
    } catch {}
  }
  return null
}

test('warm: the CLI runs in the sandbox, and its key-proxy token answers only while a task runs on it and is revoked when it closes', async (t) => {
  server.reset()
  const { manager } = warmManager(t, { warmIdleMs: 3000 })
  t.assert.strictEqual(manager.info().apiKeyProxy, true)
  const r = await task(manager)
  const sandboxed = manager.info().sandbox === 'bubblewrap'
  t.assert.strictEqual(r.sandboxed, sandboxed)
  if (sandboxed) {
    const cmds = processesMentioning(r.sessionId).map((p) => fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')[0])
    t.assert.ok(cmds.some((c) => c.endsWith('bwrap')), `wrapped by bubblewrap: ${cmds}`)
  }
  const found = cliKey(r.sessionId)
  t.assert.ok(found, 'the CLI has the proxy URL and its token')
  t.assert.notStrictEqual(found.key, server.env().ANTHROPIC_API_KEY, 'the real key never reaches the CLI')
  const probe = () =>
    fetch(`${found.base}/v1/messages/count_tokens`, {
      method: 'POST',
      headers: { 'x-api-key': found.key, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'hi' }] }),
    }).then((res) => res.status)
  // Between tasks the token is suspended; a second task in the same process makes it live again.
  t.assert.strictEqual(await probe(), 401, 'suspended between tasks')
  const again = await task(manager, { prompt: 'again', sessionId: r.sessionId })
  t.assert.strictEqual(again.success, true, JSON.stringify(again.error))
  t.assert.strictEqual(again.result, 'Echo #2: again', 'the second task ran in the same process, its token live again')
  t.assert.strictEqual(await probe(), 401, 'suspended again once the task settled')
  t.assert.ok(await eventually(() => processesMentioning(r.sessionId).length === 0), 'closed once idle')
  // Revoked once the closing is done (just after the process is gone).
  let status
  for (let i = 0; i < 100 && (status = await probe()) !== 401; i++) await new Promise((r) => setTimeout(r, 50))
  t.assert.strictEqual(status, 401, 'revoked with the process')
})

for (const sandbox of ['auto', 'none']) {
  for (const how of ['SIGKILL', 'SIGTERM']) {
    test(`warm: Node ending by ${how}${how === 'SIGTERM' ? ' (closeOnSignals)' : ''} leaves no warm CLI running (sandbox ${sandbox})`, async (t) => {
      const dir = tempDir()
      const work = path.join(dir, 'work')
      fs.mkdirSync(work)
      const options = { databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, env: server.env(), sandbox }
      const script = `
        const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
        const { closeOnSignals } = require(${JSON.stringify(path.resolve('shutdown/index.js'))});
        const m = new SessionManager(${JSON.stringify(options)});
        ${how === 'SIGTERM' ? 'closeOnSignals(m);' : ''}
        m.executeTask({ prompt: 'hi', projectId: 'p', userId: 'u' }).then((r) => console.log(r.sessionId));
        setInterval(() => {}, 1000);`
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
      t.after(() => child.kill('SIGKILL'))
      const sessionId = await new Promise((resolve) => child.stdout.once('data', (d) => resolve(String(d).trim())))
      t.assert.ok(processesMentioning(sessionId).length > 0, 'the warm CLI outlived its task')
      child.kill(how)
      await new Promise((r) => child.on('exit', r))
      t.assert.ok(await eventually(() => processesMentioning(sessionId).length === 0, 5000), `left: ${processesMentioning(sessionId)}`)
    })
  }
}

test('warm: a turn the CLI starts by itself (a background task finishing) is not taken for the next task\'s answer; it is streamed to a task as background_activity', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const marker = `bg-marker-${process.pid}-${Date.now()}`
  server.enqueue(
    { toolUse: { name: 'Bash', input: { command: `python3 -c "import time; time.sleep(1.5)" # ${marker}`, run_in_background: true, description: 'wait' } } },
    { text: 'started it' },
  )
  const first = await task(manager, { prompt: 'start a background job', allowedTools: ['Bash'] })
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  t.assert.strictEqual(first.result, 'started it')
  const calls = () => server.requests.filter((x) => x.path === '/v1/messages')
  const before = calls().length
  const refusedBefore = manager.info().proxyRefused
  // The next task's answer comes late, so that the job's notification turn overlaps it.
  server.enqueue({ text: 'the answer to two', delayMs: 2500 })
  const secondEvents = []
  const second = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId, allowedTools: ['Bash'] },
    { onEvent: (e) => secondEvents.push(e) },
  )
  t.assert.strictEqual(second.success, true, JSON.stringify(second.error))
  t.assert.strictEqual(second.result, 'the answer to two')
  // The CLI did run a turn of its own about the job (a model call nobody's prompt asked for):
  // when it comes while a task runs it reaches the model; between tasks the key proxy refuses it
  // (the CLI's token answers only while a task runs on it).
  const notified = () => calls().slice(before).some((c) => JSON.stringify(c.body.messages).includes('SYSTEM NOTIFICATION'))
  t.assert.ok(await eventually(() => notified() || manager.info().proxyRefused > refusedBefore, 10_000), 'a notification turn ran')
  const events = []
  const third = await manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'three', sessionId: first.sessionId, allowedTools: ['Bash'] },
    { onEvent: (e) => events.push(e) },
  )
  t.assert.match(third.result, /: three$/)
  // The notification turn's lines reached a task's stream (the second's, or the third's when it
  // ran after the second ended), as one event of their own, never as the task's answer.
  const seen = [...secondEvents, ...events].filter((e) => e.type === 'background_activity')
  t.assert.ok(seen.length > 0, `a background_activity event: ${JSON.stringify([...secondEvents, ...events].map((e) => e.type))}`)
  t.assert.ok(seen.every((e) => e.sessionId === first.sessionId))
  const lines = seen.flatMap((e) => e.events)
  t.assert.ok(lines.some((l) => l.type === 'result'), `the CLI's own turn ended in a result: ${JSON.stringify(lines.map((l) => l.type))}`)
  t.assert.ok(!lines.some((l) => l.type === 'result' && l.result === 'the answer to two'), 'the task\'s own result is not among them')
})

test('warm: a CLAUDE.md written after the process started makes the next task start a new one, which reads it', async (t) => {
  server.reset()
  // The CLI reads the project's CLAUDE.md only with the project setting source (off by default).
  const { manager, work } = warmManager(t, { settingSources: ['project'] })
  const first = await task(manager, { prompt: 'one' })
  const a = processesMentioning(first.sessionId)
  fs.writeFileSync(path.join(work, 'CLAUDE.md'), 'Project memory marker: zebra-417.\n')
  const second = await task(manager, { prompt: 'two', sessionId: first.sessionId })
  t.assert.strictEqual(second.result, 'Echo #2: two')
  const b = processesMentioning(first.sessionId)
  t.assert.ok(b.length > 0 && !b.some((p) => a.includes(p)), `a new process: ${a} -> ${b}`)
  const last = server.requests.filter((x) => x.path === '/v1/messages').at(-1)
  t.assert.match(JSON.stringify(last.body), /zebra-417/, 'the new process gave the model the memory file')
  // Unchanged since: the process is kept again.
  await task(manager, { prompt: 'three', sessionId: first.sessionId })
  t.assert.ok(same(processesMentioning(first.sessionId), b))
})

test('warm: compaction, deleteSession and timeoutMs each leave no warm process behind', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  const first = await task(manager, { prompt: 'one' })
  const a = processesMentioning(first.sessionId)
  t.assert.ok(a.length > 0)
  // A compaction runs in a CLI of its own: the warm one is closed first (never two on a session).
  const compacted = await manager.compactSession({ sessionId: first.sessionId, userId: 'u' })
  t.assert.ok(compacted.compactions.length > 0)
  t.assert.ok(!processesMentioning(first.sessionId).some((p) => a.includes(p)), 'the warm CLI went before the compaction ran')
  const after = await task(manager, { prompt: 'after', sessionId: first.sessionId })
  t.assert.strictEqual(after.success, true, JSON.stringify(after.error))
  t.assert.ok(processesMentioning(first.sessionId).length > 0)
  await manager.deleteSession(first.sessionId, 'u')
  t.assert.deepStrictEqual(processesMentioning(first.sessionId), [], 'deleting the session closed its CLI')

  server.enqueue({ text: 'late', delayMs: 20_000 })
  const slow = await task(manager, { prompt: 'slow', timeoutMs: 1500 })
  t.assert.strictEqual(slow.error?.code, 'TIMEOUT')
  t.assert.deepStrictEqual(processesMentioning(slow.sessionId), [], 'a timed-out warm CLI is stopped')
})

/** A session with one task done, and its second task ('two') running, whose model call answers
 * after 20 s (abort it with `controller`); `onEvent(event, sessionId)` sees its events. */
async function slowSecondTask(manager, onEvent) {
  const first = await task(manager, { prompt: 'one' })
  server.enqueue({ text: 'a slow answer', delayMs: 20_000 })
  const controller = new AbortController()
  const running = manager.executeTask(
    { projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId },
    { signal: controller.signal, onEvent: (e) => onEvent(e, first.sessionId) },
  )
  return { first, running, controller }
}

test('sendMessage then abort: the steered message is cancelled with the task and never reaches the model', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  let sent
  const { first, running, controller } = await slowSecondTask(manager, (e, sessionId) => {
    if (e.type === 'system' && e.subtype === 'init' && !sent) {
      sent = manager.sendMessage({ sessionId, userId: 'u', prompt: 'steered-then-cancelled' })
    }
  })
  // Abort once the model call for `two` is under way (it takes the slow reply off the queue).
  const asked = () => server.requests.some((x) => x.path === '/v1/messages' && JSON.stringify(x.body.messages.at(-1)).includes('two'))
  for (let i = 0; i < 300 && !(sent && asked()); i++) await new Promise((r) => setTimeout(r, 50))
  await sent
  controller.abort()
  const r = await running
  t.assert.strictEqual(r.error?.code, 'ABORTED')
  const next = await task(manager, { prompt: 'three', sessionId: first.sessionId })
  t.assert.strictEqual(next.success, true, JSON.stringify(next.error))
  t.assert.match(next.result, /: three$/)
  const texts = JSON.stringify(server.requests.filter((x) => x.path === '/v1/messages').map((x) => x.body.messages))
  t.assert.ok(!texts.includes('steered-then-cancelled'), 'the cancelled message never reached the model')
})

test('sendMessage: one task takes at most 100 messages and 4 MiB of them (each goes to the event log): past that CONTEXT_OVERFLOW, and the task runs on', async (t) => {
  server.reset()
  const { manager } = warmManager(t)
  let started
  const isStarted = new Promise((resolve) => (started = resolve))
  const { first, running, controller } = await slowSecondTask(manager, (e) => e.type === 'system' && e.subtype === 'init' && started())
  await isStarted
  const send = (prompt) => manager.sendMessage({ sessionId: first.sessionId, userId: 'u', prompt }).then(() => 'ok', (e) => e.code)
  const big = 'x'.repeat(3 * 1024 * 1024)
  t.assert.strictEqual(await send(big), 'ok')
  t.assert.strictEqual(await send(big), 'CONTEXT_OVERFLOW', 'past 4 MiB in all')
  const small = []
  for (let i = 0; i < 100; i++) small.push(await send(`m${i}`))
  t.assert.deepStrictEqual([...new Set(small.slice(0, 99))], ['ok'])
  t.assert.strictEqual(small[99], 'CONTEXT_OVERFLOW', 'the 101st message')
  controller.abort()
  t.assert.strictEqual((await running).error?.code, 'ABORTED')
  // The next task takes messages again.
  const logged = (await manager.streamEvents({ sessionId: first.sessionId, userId: 'u', after: 0 }))
  let messages = 0
  for await (const { event } of logged) if (event.type === 'user_message') messages++
  t.assert.strictEqual(messages, 100, 'only the messages taken are in the log')
})

// ---- Second test audit (M12, M13): reuse must follow the task's rules and the store ----

test('warm: a task with other tool rules gets a new CLI: Bash allowed in task 1, disallowed in task 2 does not run (M12)', async (t) => {
  server.reset()
  const { manager, work } = warmManager(t)
  const ran1 = path.join(work, `m12-first-${process.pid}-${Date.now()}`)
  const ran2 = path.join(work, `m12-second-${process.pid}-${Date.now()}`)
  server.enqueue({ toolUse: { name: 'Bash', input: { command: `touch ${ran1}`, description: 'x' } } }, { text: 'one done' })
  const first = await task(manager, { prompt: 'one', allowedTools: ['Bash'] })
  t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
  t.assert.ok(fs.existsSync(ran1), 'control: task 1 ran Bash (it was allowed)')
  const pids = processesMentioning(first.sessionId)
  t.assert.ok(pids.length > 0, 'task 1 left a warm CLI')
  // The model asks for Bash again; this task disallows it.
  server.enqueue({ toolUse: { name: 'Bash', input: { command: `touch ${ran2}`, description: 'x' } } }, { text: 'two done' })
  const second = await task(manager, { prompt: 'two', sessionId: first.sessionId, disallowedTools: ['Bash'] })
  t.assert.strictEqual(second.success, true, JSON.stringify(second.error))
  t.assert.ok(!fs.existsSync(ran2), 'task 2 ran Bash although it disallowed it: the warm CLI of task 1 (Bash allowed) was reused')
  const now = processesMentioning(first.sessionId)
  t.assert.ok(now.length > 0 && !now.some((p) => pids.includes(p)), `task 2 ran in a new CLI: ${pids} -> ${now}`)
})

/** Deletes every warm hold of a manager's store (what expiry does to the holds of a frozen manager). */
function dropWarmHolds(made) {
  if (made.store.databasePath) execFileSync('sqlite3', ['-cmd', '.timeout 5000', made.store.databasePath, 'DELETE FROM warm_holds'])
  else execFileSync('psql', [PG_URL, '-qc', `DELETE FROM "${made.store.databaseSchema}".warm_holds`])
}

for (const backend of testBackends()) {
  test(`warm: a kept CLI whose hold lapsed is not reused after a task ran elsewhere: the next task answers from the whole history (M13)${backendTag(backend)}`, async (t) => {
    server.reset()
    const a = warmManager(t, { backend })
    const { manager } = a
    const other = makeManager({ server, dir: backend === 'sqlite' ? a.dir : tempDir(), backend, warmIdleMs: 0, ...a.store }).manager
    t.after(() => other.close())
    const first = await task(manager, { prompt: 'one' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    const warmPids = processesMentioning(first.sessionId)
    t.assert.ok(warmPids.length > 0, 'a warm CLI is kept')
    // The hold is gone as if it had expired (a manager frozen past it): the other manager's task
    // does not ask this one to close its CLI, which stays, idle and behind.
    dropWarmHolds(a)
    const elsewhere = await other.executeTask({ projectId: 'p', userId: 'u', prompt: 'two', sessionId: first.sessionId })
    t.assert.strictEqual(elsewhere.result, 'Echo #2: two', JSON.stringify(elsewhere.error))
    t.assert.ok(same(processesMentioning(first.sessionId).filter((p) => warmPids.includes(p)), warmPids), 'control: the stale CLI was still running')
    const third = await task(manager, { prompt: 'three', sessionId: first.sessionId })
    // The stale CLI never saw turn 2: reused, it would answer `Echo #2`.
    t.assert.strictEqual(third.result, 'Echo #3: three', JSON.stringify(third.error))
    t.assert.ok(!processesMentioning(first.sessionId).some((p) => warmPids.includes(p)), 'the stale CLI is gone')
  })
}
