// executeTask end to end: the real `claude` CLI against the package's stand-in API server.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { makeManager, rejectsWith, startStandInServer, processesMentioning, UUID, testBackends, backendTag } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const messageCalls = () => server.requests.filter((r) => r.path === '/v1/messages')

for (const backend of testBackends()) {
  test(`task: a new session runs, persists its row, and the CLI used our session id${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ backend, server })
    const events = []
    const r = await manager.executeTask({ prompt: 'hello there', projectId: 'p', userId: 'u' }, { onEvent: (e) => events.push(e) })
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    t.assert.match(r.sessionId, UUID)
    t.assert.strictEqual(r.result, 'Echo #1: hello there')
    t.assert.strictEqual(r.turns, 1)
    t.assert.strictEqual(r.stopReason, 'end_turn')
    t.assert.ok(r.cost > 0)
    // The CLI talked to the stand-in under the id we chose.
    const calls = messageCalls()
    t.assert.strictEqual(calls.length, 1)
    t.assert.strictEqual(calls[0].sessionId, r.sessionId)
    // The exact usage the server reported is the task's usage and the context meter.
    const reported = server.responses.find((x) => x.kind === 'text').usage
    t.assert.strictEqual(r.usage.inputTokens, reported.input_tokens)
    t.assert.strictEqual(r.usage.outputTokens, reported.output_tokens)
    t.assert.strictEqual(r.contextInfo.estimatedTokens, reported.input_tokens + reported.output_tokens + reported.cache_read_input_tokens + reported.cache_creation_input_tokens)
    t.assert.strictEqual(r.contextInfo.source, 'api')
    // Events arrived in order, starting with ours and ending with the result.
    t.assert.deepStrictEqual(events.slice(0, 2).map((e) => e.type), ['task_queued', 'task_started'])
    t.assert.strictEqual(events[1].sessionId, r.sessionId)
    t.assert.strictEqual(events[1].taskId, r.taskId)
    t.assert.ok(events.some((e) => e.type === 'system' && e.subtype === 'init'))
    t.assert.ok(events.some((e) => e.type === 'assistant'))
    t.assert.strictEqual(events.at(-1).type, 'result')
    t.assert.ok(!events.some((e) => e.type === 'stream_event'), 'partials only on request')
    // Rows.
    const s = await manager.getSession(r.sessionId, 'u')
    t.assert.strictEqual(s.taskCount, 1)
    t.assert.strictEqual(s.totalCostUsd, r.cost)
    t.assert.strictEqual(s.usage.inputTokens, r.usage.inputTokens)
    t.assert.strictEqual(s.context.tokens, r.contextInfo.estimatedTokens)
    const [task] = await manager.listTasks(r.sessionId, 'u')
    t.assert.strictEqual(task.status, 'succeeded')
    t.assert.strictEqual(task.id, r.taskId)
    t.assert.match(task.cliVersion, /^\d+\.\d+\.\d+/)
    await manager.close()
  })
}

for (const backend of testBackends()) {
  test(`task: resume keeps the id and the history; partial deltas on request${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ backend, server })
    const first = await manager.executeTask({ prompt: 'remember 42', projectId: 'p', userId: 'u' })
    const deltas = []
    const second = await manager.executeTask(
      { prompt: 'what did I say?', projectId: 'p', userId: 'u', sessionId: first.sessionId, includePartialMessages: true },
      { onEvent: (e) => e.type === 'stream_event' && e.event?.delta?.type === 'text_delta' && deltas.push(e.event.delta.text) },
    )
    t.assert.strictEqual(second.success, true)
    t.assert.strictEqual(second.sessionId, first.sessionId)
    t.assert.strictEqual(second.result, 'Echo #2: what did I say?', 'the model got both user turns')
    t.assert.strictEqual(deltas.join(''), second.result)
    const sent = messageCalls().at(-1).body.messages.map((m) => JSON.stringify(m.content)).join('\n')
    t.assert.match(sent, /remember 42/)
    t.assert.ok(second.contextInfo.estimatedTokens > first.contextInfo.estimatedTokens)
    const s = await manager.getSession(first.sessionId, 'u')
    t.assert.strictEqual(s.taskCount, 2)
    t.assert.ok(Math.abs(s.totalCostUsd - (first.cost + second.cost)) < 1e-12, 'session cost is the sum of task costs')
    await manager.close()
  })
}

for (const backend of testBackends()) {
  test(`task: fork gets a new id, carries the history, and leaves the parent as it was${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ backend, server })
    const root = await manager.executeTask({ prompt: 'base fact', projectId: 'p', userId: 'u' })
    const fork = await manager.executeTask({ prompt: 'in the fork', projectId: 'p', userId: 'u', sessionId: root.sessionId, forkSession: true })
    t.assert.strictEqual(fork.success, true, JSON.stringify(fork.error))
    t.assert.notStrictEqual(fork.sessionId, root.sessionId)
    t.assert.strictEqual(fork.parentSessionId, root.sessionId)
    t.assert.strictEqual(fork.result, 'Echo #2: in the fork')
    t.assert.strictEqual(messageCalls().at(-1).sessionId, fork.sessionId)
    const parentAfter = await manager.executeTask({ prompt: 'in the parent', projectId: 'p', userId: 'u', sessionId: root.sessionId })
    t.assert.strictEqual(parentAfter.result, 'Echo #2: in the parent', 'the fork did not add to the parent')
    // fork() without a model call, then its first task materialises it.
    const lazy = await manager.fork({ sessionId: root.sessionId, userId: 'u', title: 'lazy fork' })
    t.assert.strictEqual(lazy.parentId, root.sessionId)
    t.assert.strictEqual(lazy.title, 'lazy fork')
    t.assert.strictEqual(lazy.taskCount, 0)
    t.assert.deepStrictEqual(lazy.context.tokens, (await manager.getSession(root.sessionId, 'u')).context.tokens)
    const lazyRun = await manager.executeTask({ prompt: 'lazy', projectId: 'p', userId: 'u', sessionId: lazy.id })
    t.assert.strictEqual(lazyRun.result, 'Echo #3: lazy')
    const forks = await manager.listSessions({ userId: 'u', parentId: root.sessionId })
    t.assert.deepStrictEqual(new Set(forks.map((s) => s.id)), new Set([fork.sessionId, lazy.id]))
    await manager.close()
  })
}

test('task: a tool turn writes a file under acceptEdits and is denied under default', async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server })
  const file = path.join(work, 'out.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: file, content: 'written by the agent\n' } } }, { text: 'Wrote it.' })
  const ok = await manager.executeTask({ prompt: 'write the file', projectId: 'p', userId: 'u', permissionMode: 'acceptEdits' })
  t.assert.strictEqual(ok.success, true, JSON.stringify(ok.error))
  t.assert.strictEqual(fs.readFileSync(file, 'utf8'), 'written by the agent\n')
  t.assert.strictEqual(ok.turns, 2)
  t.assert.deepStrictEqual(ok.permissionDenials, [])

  const denied = path.join(work, 'denied.txt')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: denied, content: 'no' } } }, { text: 'Could not.' })
  const no = await manager.executeTask({ prompt: 'write another', projectId: 'p', userId: 'u', permissionMode: 'default' })
  t.assert.strictEqual(fs.existsSync(denied), false)
  t.assert.strictEqual(no.permissionDenials.length, 1)
  t.assert.strictEqual(no.permissionDenials[0].tool_name, 'Write')
  await manager.close()
})

test('task: a 529 resolves with success false and API_ERROR; the session stays usable', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const first = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  server.enqueue({ error: { status: 529 } })
  const r = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'API_ERROR')
  t.assert.strictEqual(r.error.status, 529)
  const tasks = await manager.listTasks(first.sessionId, 'u')
  t.assert.deepStrictEqual(tasks.map((x) => x.status), ['succeeded', 'failed'])
  t.assert.strictEqual(tasks[1].errorCode, 'API_ERROR')
  const again = await manager.executeTask({ prompt: 'three', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  t.assert.strictEqual(again.success, true)
  t.assert.match(again.result, /^Echo #\d: three$/)
  await manager.close()
})

test('task: abort mid-stream stops the CLI process group; the session stays resumable', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const first = await manager.executeTask({ prompt: 'before', projectId: 'p', userId: 'u' })
  server.enqueue({ text: 'a very slow answer that streams word by word for a long time indeed', chunkDelayMs: 1000 })
  const controller = new AbortController()
  let sawAssistantStart = false
  const pending = manager.executeTask(
    { prompt: 'slow', projectId: 'p', userId: 'u', sessionId: first.sessionId, includePartialMessages: true },
    {
      signal: controller.signal,
      onEvent: (e) => {
        if (e.type === 'stream_event' && !sawAssistantStart) {
          sawAssistantStart = true
          controller.abort()
        }
      },
    },
  )
  const r = await pending
  t.assert.ok(sawAssistantStart)
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'ABORTED')
  t.assert.deepStrictEqual(processesMentioning(first.sessionId), [], 'no CLI process left')
  const tasks = await manager.listTasks(first.sessionId, 'u')
  t.assert.strictEqual(tasks.at(-1).status, 'aborted')
  const after = await manager.executeTask({ prompt: 'after', projectId: 'p', userId: 'u', sessionId: first.sessionId })
  t.assert.strictEqual(after.success, true, JSON.stringify(after.error))
  // An already-aborted signal never spawns.
  const before = server.requests.length
  const pre = await manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u', sessionId: first.sessionId }, { signal: AbortSignal.abort() })
  t.assert.strictEqual(pre.error?.code ?? 'rejected', 'ABORTED')
  t.assert.strictEqual(server.requests.length, before)
  await manager.close()
})

test('task: timeoutMs stops a slow task with TIMEOUT', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  server.enqueue({ text: 'late', delayMs: 20_000 })
  const r = await manager.executeTask({ prompt: 'slow', projectId: 'p', userId: 'u', timeoutMs: 1500 })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'TIMEOUT')
  t.assert.strictEqual((await manager.listTasks(r.sessionId, 'u'))[0].status, 'timed_out')
  t.assert.deepStrictEqual(processesMentioning(r.sessionId), [])
  await manager.close()
})

for (const backend of testBackends()) {
  test(`task: two tasks on one session never overlap; the second waits its turn${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ backend, server })
    const first = await manager.executeTask({ prompt: 'start', projectId: 'p', userId: 'u' })
    server.reset()
    server.enqueue({ text: 'slow one', delayMs: 800 }, { text: 'slow two', delayMs: 800 })
    const req = (prompt) => manager.executeTask({ prompt, projectId: 'p', userId: 'u', sessionId: first.sessionId })
    const [a, b] = await Promise.all([req('A'), req('B')])
    t.assert.ok(a.success && b.success, JSON.stringify([a.error, b.error]))
    const calls = messageCalls().filter((c) => c.sessionId === first.sessionId).sort((x, y) => x.receivedAt - y.receivedAt)
    t.assert.strictEqual(calls.length, 2)
    t.assert.ok(calls[1].receivedAt >= calls[0].endedAt, `overlap: ${JSON.stringify(calls.map((c) => [c.receivedAt, c.endedAt]))}`)
    await manager.close()
  })
}

for (const backend of testBackends()) {
  test(`task: a busy session fails with SESSION_BUSY after queueTimeoutMs${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ backend, server, queueTimeoutMs: 300 })
    const first = await manager.executeTask({ prompt: 'start', projectId: 'p', userId: 'u' })
    server.enqueue({ text: 'slow', delayMs: 3000 })
    const slow = manager.executeTask({ prompt: 'slow', projectId: 'p', userId: 'u', sessionId: first.sessionId })
    await new Promise((r) => setTimeout(r, 100))
    await rejectsWith(t, manager.executeTask({ prompt: 'second', projectId: 'p', userId: 'u', sessionId: first.sessionId }), 'SESSION_BUSY')
    await rejectsWith(t, manager.executeTask({ prompt: 'now or never', projectId: 'p', userId: 'u', sessionId: first.sessionId, queueTimeoutMs: 0 }), 'SESSION_BUSY', /waited 0 ms/)
    await rejectsWith(t, manager.deleteSession(first.sessionId, 'u'), 'SESSION_BUSY')
    t.assert.strictEqual((await slow).success, true)
    await manager.close()
  })
}

test('task: 16 sessions in parallel all complete with correct rows', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, maxConcurrentTasks: 16 })
  const results = await Promise.all(
    Array.from({ length: 16 }, (_, i) => manager.executeTask({ prompt: `task ${i}`, projectId: `p${i}`, userId: 'u' })),
  )
  for (const [i, r] of results.entries()) {
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    t.assert.strictEqual(r.result, `Echo #1: task ${i}`)
  }
  t.assert.strictEqual(new Set(results.map((r) => r.sessionId)).size, 16)
  const sessions = await manager.listSessions({ userId: 'u', limit: 100 })
  t.assert.strictEqual(sessions.length, 16)
  for (const s of sessions) {
    t.assert.strictEqual(s.taskCount, 1)
    const [task] = await manager.listTasks(s.id, 'u')
    t.assert.strictEqual(task.status, 'succeeded')
  }
  await manager.close()
})

test('task: invalid requests reject before anything is spawned', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  const base = { prompt: 'hi', projectId: 'p', userId: 'u' }
  const cases = [
    [{ ...base, prompt: '' }, 'INVALID_ARGUMENT'],
    [{ ...base, prompt: 'a\u0000b' }, 'INVALID_ARGUMENT'],
    [{ ...base, prompt: 'x'.repeat(5 * 1024 * 1024) }, 'CONTEXT_OVERFLOW'],
    [{ ...base, permissionMode: 'bypassPermissions' }, 'INVALID_ARGUMENT'],
    [{ ...base, permissionMode: 'yolo' }, 'INVALID_ARGUMENT'],
    [{ ...base, maxTurns: 0 }, 'INVALID_ARGUMENT'],
    [{ ...base, maxTurns: '3' }, 'INVALID_ARGUMENT'],
    [{ ...base, model: '' }, 'INVALID_ARGUMENT'],
    [{ ...base, allowedTools: 'Bash' }, 'INVALID_ARGUMENT'],
    [{ ...base, allowedTools: ['Bash\nRead'] }, 'INVALID_ARGUMENT'],
    [{ ...base, maxBudgetUsd: -1 }, 'INVALID_ARGUMENT'],
    [{ ...base, timeoutMs: Number.POSITIVE_INFINITY }, 'INVALID_ARGUMENT'],
    [{ ...base, sessionId: '--dangerously-skip-permissions' }, 'INVALID_ARGUMENT'],
    [{ ...base, forkSession: true }, 'INVALID_ARGUMENT'],
    [{ ...base, sessionId: session.id, userId: 'someone-else' }, 'SESSION_NOT_FOUND'],
    [{ ...base, dangerouslySkipPermissions: true }, 'INVALID_ARGUMENT'],
  ]
  for (const [i, [req, code]] of cases.entries()) await rejectsWith(t, manager.executeTask(req), code, undefined, `case ${i}`)
  await rejectsWith(t, manager.executeTask(base, { onEvent: 'not a function' }), 'INVALID_ARGUMENT')
  await rejectsWith(t, manager.executeTask(base, { signal: {} }), 'INVALID_ARGUMENT')
  t.assert.strictEqual(server.requests.length, 0, 'nothing reached the API')
  t.assert.strictEqual((await manager.listSessions({ userId: 'u' })).length, 1, 'no session was created')
  await manager.close()
  const { manager: noCli } = makeManager({ server, claudePath: '/nonexistent/claude' })
  await rejectsWith(t, noCli.executeTask(base), 'CLI_NOT_FOUND', /npm install @anthropic-ai\/claude-code/)
  await noCli.close()
})

test('task: the CLI gets the API settings but not unrelated server secrets', async (t) => {
  server.reset()
  process.env.DATABASE_URL = 'postgres://user:secret@db/prod'
  const { manager, work } = makeManager({ server })
  const out = path.join(work, 'env.txt')
  server.enqueue({ toolUse: { name: 'Bash', input: { command: `env > ${out}`, description: 'dump env' } } }, { text: 'done' })
  const r = await manager.executeTask({ prompt: 'dump env', projectId: 'p', userId: 'u', allowedTools: ['Bash'] })
  delete process.env.DATABASE_URL
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const dumped = fs.readFileSync(out, 'utf8')
  t.assert.match(dumped, /ANTHROPIC_BASE_URL=http:\/\/127\.0\.0\.1/)
  t.assert.doesNotMatch(dumped, /DATABASE_URL|secret@db/)
  await manager.close()
})

test('task: two first tasks racing on a new session both run (the second resumes what the first started)', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  server.enqueue({ text: 'first', delayMs: 300 })
  const [a, b] = await Promise.all(['A', 'B'].map((prompt) => manager.executeTask({ prompt, projectId: 'p', userId: 'u', sessionId: session.id })))
  t.assert.ok(a.success && b.success, JSON.stringify([a.error, b.error]))
  // Called in the same tick, either may reach the session first; the other resumes its session.
  const [firstRun, second] = a.result === 'first' ? ['A', 'B'] : ['B', 'A']
  t.assert.deepStrictEqual([a.result, b.result].sort(), [`Echo #2: ${second}`, 'first'].sort(), `${firstRun} ran first`)
  const s = await manager.getSession(session.id, 'u')
  t.assert.ok(Math.abs(s.totalCostUsd - (a.cost + b.cost)) < 1e-12)
  await manager.close()
})

test('task: a long-lived AbortSignal shared by many tasks collects no listeners', async (t) => {
  const { getEventListeners } = await import('node:events')
  server.reset()
  const { manager } = makeManager({ server })
  const controller = new AbortController()
  const first = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' }, { signal: controller.signal })
  for (let i = 0; i < 12; i++) {
    const r = await manager.executeTask({ prompt: `n${i}`, projectId: 'p', userId: 'u', sessionId: first.sessionId }, { signal: controller.signal })
    t.assert.strictEqual(r.success, true)
  }
  // A call rejected before it ran leaves no listener behind either.
  await rejectsWith(t, manager.executeTask({ prompt: '', projectId: 'p', userId: 'u' }, { signal: controller.signal }), 'INVALID_ARGUMENT')
  t.assert.strictEqual(getEventListeners(controller.signal, 'abort').length, 0)
  await manager.close()
})

// The nice value of the real `claude` process running this session, read from /proc while it waits
// for the stand-in API; `null` when no such process is found.
function cliNice(sessionId) {
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')
    } catch {
      continue
    }
    if (!cmd.includes(sessionId) || !cmd.includes('stream-json')) continue
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return { pid: Number(pid), nice: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]) }
  }
  return null
}
const ownNice = () => {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])
}

test('task: the CLI runs cliNiceness steps below Node (default 10); the next task waits for its exit', { skip: process.platform !== 'linux' }, async (t) => {
  for (const [options, by] of [[{}, 10], [{ cliNiceness: 0 }, 0], [{ cliNiceness: 19 }, 19]]) {
    server.reset()
    const { manager } = makeManager({ server, ...options })
    const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
    server.enqueue({ text: 'slow', delayMs: 1500 })
    const marker = `prompt-marker-${Math.random().toString(36).slice(2)}`
    let seen = null
    let promptInArgv = null
    let second = null
    let firstAliveAtSecondStart = null
    const alive = (pid) => {
      try {
        return !/\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))
      } catch {
        return false
      }
    }
    const first = manager.executeTask({ prompt: `one ${marker}`, projectId: 'p', userId: 'u', sessionId: session.id }, {
      onEvent: (e) => {
        if (e.type !== 'system' || e.subtype !== 'init') return
        seen = cliNice(session.id)
        // The prompt went on stdin: no process of this session has it in its argv.
        promptInArgv = processesMentioning(session.id).filter((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker))
        // Queued behind the first while it runs: it may start only once the first CLI has exited.
        second = manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: session.id }, {
          onEvent: (e2) => {
            if (e2.type === 'task_started') firstAliveAtSecondStart = alive(seen.pid)
          },
        })
      },
    })
    const a = await first
    t.assert.ok(a.success, JSON.stringify(a.error))
    t.assert.ok(seen, 'the CLI process was found while it ran')
    t.assert.deepStrictEqual(promptInArgv, [], 'the prompt is not in any argv')
    t.assert.strictEqual(seen.nice, Math.min(19, ownNice() + by), JSON.stringify(options))
    const b = await second
    t.assert.ok(b.success, JSON.stringify(b.error))
    t.assert.strictEqual(b.result, 'Echo #2: two', 'the second task resumed the first one\'s full history')
    t.assert.strictEqual(firstAliveAtSecondStart, false, 'the second CLI started after the first had exited')
    // Right after a task settles its CLI may still be exiting; that is not a busy session, even
    // for a caller that accepts no waiting at all.
    let thirdCli = null
    const third = await manager.executeTask({ prompt: 'three', projectId: 'p', userId: 'u', sessionId: session.id, queueTimeoutMs: 0 }, {
      onEvent: (e) => {
        if (e.type === 'system' && e.subtype === 'init') thirdCli = processesMentioning(session.id)
      },
    })
    t.assert.ok(third.success, JSON.stringify(third.error))
    t.assert.ok(thirdCli?.length > 0, 'the third CLI was found while it ran')
    // executeTask settled at the result line; the third CLI is usually still exiting here, and
    // close() must wait for it (and for every process of its session).
    // (A process running its exit has dropped its command line; a zombie has exited.)
    const running = (pid) => processesMentioning(session.id).includes(pid)
    const runningBeforeClose = thirdCli.filter(running)
    await manager.close()
    t.assert.deepStrictEqual(thirdCli.filter(running), [], `no CLI is left after close() (${runningBeforeClose.length} still ran when close() was called)`)
    t.assert.deepStrictEqual(processesMentioning(session.id), [], 'nothing of the session runs after close()')
  }
})
