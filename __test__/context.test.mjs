// Context tracking, compaction and token counting against the real CLI and the stand-in server.
import { test, before, after } from 'node:test'
import os from 'node:os'
import { addon, makeManager, rejectsWith, startStandInServer } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const total = (u) => u.input_tokens + u.output_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens

test('context: the meter is exactly what the API reported for the last main-chain call', async (t) => {
  server.reset()
  // The option differs from any window the CLI reports, so the window below can only be the CLI's.
  const { manager, work } = makeManager({ server, contextWindow: 123456 })
  // A tool turn makes two API calls in one task; the meter must follow the second, and must take
  // output_tokens from message_delta (the assistant lines carry a provisional 1).
  server.enqueue(
    { toolUse: { name: 'Write', input: { file_path: `${work}/a.txt`, content: 'x' } }, usage: { cache_read_input_tokens: 5000, cache_creation_input_tokens: 300 } },
    { text: 'done and dusted', usage: { cache_read_input_tokens: 7000, cache_creation_input_tokens: 111, output_tokens: 4321 } },
  )
  const events = []
  const r = await manager.executeTask({ prompt: 'go', projectId: 'p', userId: 'u', permissionMode: 'acceptEdits' }, { onEvent: (e) => events.push(e) })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const last = server.responses.filter((x) => x.kind === 'text' || x.kind === 'tool_use').at(-1).usage
  t.assert.strictEqual(last.output_tokens, 4321)
  t.assert.strictEqual(r.contextInfo.estimatedTokens, total(last))
  t.assert.strictEqual(r.contextInfo.source, 'api')
  // result.usage is cumulative over the task, so it is larger than the last call.
  const sum = r.usage.inputTokens + r.usage.outputTokens + r.usage.cacheReadInputTokens + r.usage.cacheCreationInputTokens
  t.assert.ok(sum > r.contextInfo.estimatedTokens)
  // The window is what the CLI reported for the model (the result's modelUsage[model].contextWindow), not the option.
  const modelUsage = Object.values(events.find((e) => e.type === 'result').modelUsage)
  t.assert.strictEqual(modelUsage.length, 1, JSON.stringify(modelUsage))
  t.assert.strictEqual(typeof modelUsage[0].contextWindow, 'number')
  t.assert.strictEqual(r.contextInfo.maxTokens, modelUsage[0].contextWindow)
  t.assert.notStrictEqual(r.contextInfo.maxTokens, 123456)
  const c = await manager.getSessionContext(r.sessionId, 'u')
  t.assert.strictEqual(c.estimatedTokens, r.contextInfo.estimatedTokens)
  t.assert.strictEqual(c.maxTokens, r.contextInfo.maxTokens)
  t.assert.strictEqual(c.usagePercentage, Math.round((c.estimatedTokens / c.maxTokens) * 10000) / 100)
  const tight = await manager.getSessionContext(r.sessionId, 'u', { threshold: c.usagePercentage })
  t.assert.strictEqual(tight.shouldCompact, true)
  const loose = await manager.getSessionContext(r.sessionId, 'u', { threshold: 99 })
  t.assert.strictEqual(loose.shouldCompact, false)
  await manager.close()
})

test('context: without a model report the window is the contextWindow option; a new session reads as empty', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, contextWindow: 123456 })
  const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  const empty = await manager.getSessionContext(session.id, 'u')
  t.assert.deepStrictEqual(
    { tokens: empty.estimatedTokens, max: empty.maxTokens, pct: empty.usagePercentage, source: empty.source, can: empty.canContinue },
    { tokens: 0, max: 123456, pct: 0, source: 'estimate', can: true },
  )
  server.enqueue({ error: { status: 500 } })
  const r = await manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u', sessionId: session.id })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.contextInfo.maxTokens, 123456)
  // Once the CLI has reported a window for the model, new sessions of that model start with it.
  const ok = await manager.executeTask({ prompt: 'y', projectId: 'p', userId: 'u' })
  t.assert.notStrictEqual(ok.contextInfo.maxTokens, 123456)
  const { session: next } = await manager.startFresh({ projectId: 'p', userId: 'u' })
  t.assert.strictEqual((await manager.getSessionContext(next.id, 'u')).maxTokens, ok.contextInfo.maxTokens)
  await manager.close()
})

test('compaction: manual compaction records before/after tokens and updates the meter', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const a = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  server.reset()
  const c = await manager.compactSession({ sessionId: a.sessionId, userId: 'u', summaryInstructions: 'keep the numbers' })
  t.assert.strictEqual(c.success, true, JSON.stringify(c.error))
  t.assert.strictEqual(c.compactions.length, 1)
  const [k] = c.compactions
  t.assert.strictEqual(k.trigger, 'manual')
  t.assert.ok(k.preTokens > k.postTokens, JSON.stringify(k))
  // The summary request carried our instructions.
  const summaryCall = server.requests.find((r) => r.path === '/v1/messages')
  t.assert.match(JSON.stringify(summaryCall.body.messages.at(-1)), /keep the numbers/)
  const ctx = await manager.getSessionContext(a.sessionId, 'u')
  t.assert.strictEqual(ctx.estimatedTokens, k.postTokens)
  const rows = await manager.listCompactions(a.sessionId, 'u')
  t.assert.deepStrictEqual(rows.map((x) => [x.trigger, x.preTokens, x.postTokens]), [['manual', k.preTokens, k.postTokens]])
  // The session goes on after it.
  const after = await manager.executeTask({ prompt: 'three', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  t.assert.strictEqual(after.success, true)
  t.assert.match(after.result, /three$/)
  await manager.close()
})

test('compaction: a failed compaction is COMPACT_FAILED and leaves the session as it was', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const a = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  const before = await manager.getSessionContext(a.sessionId, 'u')
  server.enqueue({ error: { status: 500 } })
  await rejectsWith(t, manager.compactSession({ sessionId: a.sessionId, userId: 'u' }), 'COMPACT_FAILED')
  t.assert.deepStrictEqual(await manager.getSessionContext(a.sessionId, 'u'), before)
  t.assert.deepStrictEqual(await manager.listCompactions(a.sessionId, 'u'), [])
  const next = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  t.assert.strictEqual(next.result, 'Echo #2: two', 'history intact')
  // A fork that has not run yet compacts the conversation it carries, into its own transcript.
  const fork = await manager.fork({ sessionId: a.sessionId, userId: 'u' })
  const fc = await manager.compactSession({ sessionId: fork.id, userId: 'u' })
  t.assert.strictEqual(fc.sessionId, fork.id)
  t.assert.strictEqual(fc.compactions.length, 1)
  t.assert.strictEqual((await manager.getMessages(a.sessionId, 'u')).compactions, 0, 'the parent was not compacted')
  // A session that never ran has nothing to compact.
  const { session } = await manager.getOrCreateSession({ projectId: 'empty', userId: 'u' })
  await rejectsWith(t, manager.compactSession({ sessionId: session.id, userId: 'u' }), 'COMPACT_FAILED')
  await manager.close()
})

test('compaction: autoCompact compacts first when the session is over the threshold', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  const a = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  const pct = a.contextInfo.usagePercentage
  // Under the threshold: no compaction.
  const b = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: a.sessionId, autoCompact: true })
  t.assert.strictEqual(b.compacted, false)
  // Over it: compact, then run.
  const c = await manager.executeTask({ prompt: 'three', projectId: 'p', userId: 'u', sessionId: a.sessionId, autoCompact: true, compactThreshold: pct / 2 })
  t.assert.strictEqual(c.success, true, JSON.stringify(c.error))
  t.assert.strictEqual(c.compacted, true)
  t.assert.strictEqual(c.compactions[0].trigger, 'auto')
  t.assert.ok(c.compactions[0].preTokens > c.compactions[0].postTokens)
  t.assert.match(c.result, /three$/)
  const rows = await manager.listCompactions(a.sessionId, 'u')
  t.assert.deepStrictEqual(rows.map((r) => r.trigger), ['auto'])
  const tasks = await manager.listTasks(a.sessionId, 'u')
  t.assert.deepStrictEqual(tasks.map((x) => x.kind), ['task', 'task', 'compact', 'task'])
  await manager.close()
})

test('compaction: one the CLI does on its own is recorded as auto', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  // Report a nearly full window; the CLI compacts by itself on the next turn.
  server.enqueue({ text: 'big', usage: { input_tokens: 990_000, cache_read_input_tokens: 5000 } })
  const a = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  t.assert.ok(a.contextInfo.usagePercentage > 90, JSON.stringify(a.contextInfo))
  t.assert.strictEqual((await manager.getSessionContext(a.sessionId, 'u')).shouldCompact, true)
  server.reset()
  const b = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  t.assert.strictEqual(b.success, true, JSON.stringify(b.error))
  t.assert.strictEqual(b.compacted, true)
  t.assert.strictEqual(b.compactions[0].trigger, 'auto')
  t.assert.ok(b.contextInfo.usagePercentage < 10, JSON.stringify(b.contextInfo))
  // After the compaction the task made a call, so the meter is that call as the stand-in reported
  // it, not the compaction's estimate.
  const calls = server.responses.filter((x) => x.kind === 'text')
  const isSummary = (x) => /CRITICAL: Respond with TEXT ONLY/.test(JSON.stringify(server.requests[x.requestIndex].body.messages.at(-1)))
  t.assert.ok(calls.some(isSummary) && !isSummary(calls.at(-1)), 'the summary call(s), then the answer')
  t.assert.strictEqual(b.contextInfo.source, 'api')
  t.assert.strictEqual(b.contextInfo.estimatedTokens, total(calls.at(-1).usage))
  t.assert.notStrictEqual(b.contextInfo.estimatedTokens, b.compactions[0].postTokens)
  t.assert.strictEqual((await manager.getSessionContext(a.sessionId, 'u')).estimatedTokens, total(calls.at(-1).usage))
  t.assert.deepStrictEqual((await manager.listCompactions(a.sessionId, 'u')).map((r) => r.trigger), ['auto'])
  await manager.close()
})

test('compaction: a mid-task compaction followed by a failed call leaves the meter at the compaction, not the call before it', async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server })
  // A tool call reporting a nearly full window; the CLI runs the tool, compacts before its next
  // call (its summary requests, one or more, get a summary), and that next call fails.
  const summaryOrFail = (req) =>
    /CRITICAL: Respond with TEXT ONLY/.test(JSON.stringify(req.body.messages.at(-1))) ? { text: 'Summary: wrote c.txt.' } : { error: { status: 500 } }
  server.enqueue(
    { toolUse: { name: 'Write', input: { file_path: `${work}/c.txt`, content: 'x' } }, usage: { input_tokens: 990_000 } },
    ...Array(6).fill(summaryOrFail),
  )
  const r = await manager.executeTask({ prompt: 'fill and fail', projectId: 'p', userId: 'u', permissionMode: 'acceptEdits' })
  t.assert.strictEqual(r.success, false)
  t.assert.strictEqual(r.error.code, 'API_ERROR', JSON.stringify(r.error))
  t.assert.strictEqual(r.compacted, true, JSON.stringify(server.responses.map((x) => x.kind)))
  const [k] = r.compactions
  t.assert.strictEqual(k.trigger, 'auto')
  const full = server.responses.find((x) => x.kind === 'tool_use').usage
  t.assert.strictEqual(k.preTokens >= full.input_tokens, true, JSON.stringify(k))
  t.assert.ok(k.postTokens > 0 && k.postTokens < full.input_tokens / 10, JSON.stringify(k))
  // No call measured the context after the compaction: the meter is its figure, marked an estimate.
  t.assert.strictEqual(r.contextInfo.source, 'estimate')
  t.assert.strictEqual(r.contextInfo.estimatedTokens, k.postTokens)
  const c = await manager.getSessionContext(r.sessionId, 'u')
  t.assert.deepStrictEqual([c.estimatedTokens, c.source], [k.postTokens, 'estimate'])
  await manager.close()
})

test('countTokens: tiktoken counts, both encodings, async variant, bad input', async (t) => {
  const { countTokens, countTokensAsync } = addon
  t.assert.strictEqual(countTokens('hello world'), 2)
  t.assert.strictEqual(countTokens(''), 0)
  t.assert.strictEqual(countTokens('hello world', { encoding: 'cl100k_base' }), 2)
  const big = 'The quick brown fox jumps over the lazy dog. '.repeat(20_000)
  t.assert.strictEqual(await countTokensAsync(big), countTokens(big))
  t.assert.throws(() => countTokens('x', { encoding: 'gpt2' }), (e) => e.code === 'INVALID_ARGUMENT')
  t.assert.throws(() => countTokens(42), (e) => e.code === 'INVALID_ARGUMENT')
  await rejectsWith(t, countTokensAsync('x', { encoding: 'p50k' }), 'INVALID_ARGUMENT')
  // The encoding as a plain string: the same counts as `{ encoding }`, the same checks.
  const code = 'fn main() {\n    println!("héllo, wörld");  \t\r\n}\n'.repeat(3)
  for (const encoding of ['o200k_base', 'cl100k_base']) {
    t.assert.strictEqual(countTokens(code, encoding), countTokens(code, { encoding }), encoding)
    t.assert.strictEqual(await countTokensAsync(big, encoding), countTokens(big, { encoding }), encoding)
  }
  t.assert.notStrictEqual(countTokens(code, 'cl100k_base'), countTokens(code, 'o200k_base'), 'the string picks the encoding')
  t.assert.throws(() => countTokens('x', 'gpt2'), (e) => e.code === 'INVALID_ARGUMENT' && /gpt2/.test(e.message))
  t.assert.throws(() => countTokens('x', { encoding: 'cl100k_base', extra: 1 }), (e) => e.code === 'INVALID_ARGUMENT')
  await rejectsWith(t, countTokensAsync('x', 'p50k'), 'INVALID_ARGUMENT')
})

test('history: getMessages replays the conversation after resume, fork and compaction', async (t) => {
  server.reset()
  const { manager, work, configDir } = makeManager({ server })
  const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  t.assert.deepStrictEqual((await manager.getMessages(session.id, 'u')).messages, [], 'a session that never ran has no history')
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: `${work}/h.txt`, content: 'x' } }, text: 'Let me write.' }, { text: 'Written.' })
  const a = await manager.executeTask({ prompt: 'first prompt', projectId: 'p', userId: 'u', sessionId: session.id, permissionMode: 'acceptEdits' })
  await manager.executeTask({ prompt: 'second prompt', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  const h = await manager.getMessages(a.sessionId, 'u')
  t.assert.deepStrictEqual(
    h.messages.map((m) => `${m.role}:${m.kind}:${m.blocks.map((b) => b.type).join('+')}`),
    ['user:prompt:text', 'assistant:assistant:text+toolUse', 'user:toolResults:toolResult', 'assistant:assistant:text', 'user:prompt:text', 'assistant:assistant:text'],
  )
  t.assert.strictEqual(h.messages[0].text.trim(), 'first prompt')
  t.assert.strictEqual(h.messages[1].blocks[1].name, 'Write')
  t.assert.strictEqual(h.messages[2].blocks[0].toolUseId, h.messages[1].blocks[1].id)
  t.assert.strictEqual(h.messages.at(-1).text, 'Echo #2: second prompt')
  t.assert.strictEqual(h.total, 6)
  const page = await manager.getMessages(a.sessionId, 'u', { limit: 2, offset: 1 })
  t.assert.deepStrictEqual(page.messages.map((m) => m.uuid), h.messages.slice(1, 3).map((m) => m.uuid))
  t.assert.strictEqual((await manager.getMessages(a.sessionId, 'u', { limit: 2 })).messages.at(-1).text, 'Echo #2: second prompt', 'newest by default')

  const fork = await manager.executeTask({ prompt: 'fork prompt', projectId: 'p', userId: 'u', sessionId: a.sessionId, forkSession: true })
  const fh = await manager.getMessages(fork.sessionId, 'u')
  t.assert.strictEqual(fh.total, 8)
  t.assert.strictEqual(fh.messages.at(-2).text.trim(), 'fork prompt')
  t.assert.strictEqual((await manager.getMessages(a.sessionId, 'u')).total, 6, 'the parent did not grow')

  await manager.compactSession({ sessionId: a.sessionId, userId: 'u' })
  await manager.executeTask({ prompt: 'after compaction', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  const ch = await manager.getMessages(a.sessionId, 'u', { limit: 1000 })
  t.assert.strictEqual(ch.compactions, 1)
  t.assert.strictEqual(ch.messages[ch.liveFrom].kind, 'compactSummary')
  t.assert.strictEqual(ch.messages[ch.liveFrom].compaction.trigger, 'manual')
  // The CLI's summary names the full transcript's path on the server: never returned.
  const summary = ch.messages[ch.liveFrom]
  t.assert.match(summary.text, /read the full transcript at: <transcript>/, 'control: the CLI wrote the sentence, its path hidden')
  const shown = JSON.stringify(ch)
  for (const folder of [configDir, os.homedir()].filter((f) => f.length > 1)) t.assert.ok(!shown.includes(folder), `getMessages names the server folder ${folder}`)
  t.assert.ok(!/\.jsonl/.test(shown), 'no transcript file is named')
  t.assert.strictEqual(ch.messages[0].text.trim(), 'first prompt', 'history before the compaction is still shown')
  t.assert.strictEqual(ch.messages.at(-1).text, 'Echo #2: after compaction', 'the model saw two user turns: the summary and the new prompt')
  await rejectsWith(t, manager.getMessages(a.sessionId, 'mallory'), 'SESSION_NOT_FOUND')
  await rejectsWith(t, manager.getMessages(a.sessionId, 'u', { limit: 0 }), 'INVALID_ARGUMENT')
  await manager.close()
})

test('estimate: estimatePromptTokens predicts the growth and whether a prompt fits', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, contextWindow: 200_000 })
  const a = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  const prompt = 'Please refactor the parser so that it handles nested quotes. '.repeat(50)
  const e = await manager.estimatePromptTokens(a.sessionId, 'u', prompt)
  t.assert.strictEqual(e.family, 'sonnet')
  t.assert.strictEqual(e.tiktokenTokens, addon.countTokens(prompt))
  t.assert.ok(e.factor > 0.8 && e.factor < 1.6, String(e.factor))
  t.assert.strictEqual(e.tokens, Math.round(e.tiktokenTokens * e.factor))
  t.assert.strictEqual(e.contextInfo.estimatedTokens, a.contextInfo.estimatedTokens)
  t.assert.strictEqual(e.contextInfo.canContinue, true)
  const huge = 'token '.repeat(1_200_000)
  const big = await manager.estimatePromptTokens(a.sessionId, 'u', huge)
  t.assert.strictEqual(big.contextInfo.canContinue, false)
  t.assert.strictEqual(big.contextInfo.shouldCompact, true)
  await rejectsWith(t, manager.estimatePromptTokens(a.sessionId, 'u', 'x', { threshold: 0 }), 'INVALID_ARGUMENT')
  // A prompt far over the window is refused before anything runs.
  const before = server.requests.length
  await rejectsWith(t, manager.executeTask({ prompt: 'token '.repeat(400_000), projectId: 'p', userId: 'u', sessionId: a.sessionId }), 'CONTEXT_OVERFLOW')
  t.assert.strictEqual(server.requests.length, before)
  await manager.close()
})
