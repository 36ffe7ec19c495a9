// Spend caps enforced at the key proxy (the Budgets issue): every model call made with a task's
// token is metered from upstream's reported usage and checked against the caps before it is
// forwarded, so neither the CLI nor the agent can spend past them.
import { test, before, after } from 'node:test'
import crypto from 'node:crypto'
import { backendTag, makeManager, startStandInServer, testBackends } from './helpers.mjs'
import { messageCalls } from './attack-helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const total = (rows) => rows.reduce((s, r) => s + r.usd, 0)
const calls = (rows) => rows.reduce((s, r) => s + r.calls, 0)
// Every scripted call reports 200,000 input tokens: $0.60 at Sonnet's list price. The CLI asks for
// max_tokens 128000, so each call's reserve is about $1.92 + its input (about $0.04): $2 at most.
const RESERVE = 2
const BIG = { input_tokens: 200_000, output_tokens: 10 }
const tool = (i) => ({ toolUse: { name: 'Bash', input: { command: `echo step${i}`, description: `step ${i}` } }, usage: BIG })

for (const backend of testBackends()) {
  test(`a session cap: the call that would cross it is never forwarded, the task ends BUDGET_EXCEEDED, a raised cap lets the conversation go on${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ server, backend })
    t.after(() => manager.close())
    // The session exists (a first cheap task), then gets a cap.
    const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    const sessionId = first.sessionId
    const spentBefore = total(await manager.getUsage({ sessionId, groupBy: 'session' }))
    const cap = spentBefore + 4
    await manager.setBudget({ scope: 'session', userId: 'u', sessionId, usd: cap })
    const marker = `MARK_${crypto.randomBytes(4).toString('hex')}`
    server.reset()
    const since = Date.now() - 1
    for (let i = 0; i < 8; i++) server.enqueue(tool(i))
    server.enqueue({ text: 'finished' })
    const r = await manager.executeTask({ prompt: `remember ${marker}; run the steps`, sessionId, projectId: 'p', userId: 'u', allowedTools: ['Bash'], permissionMode: 'acceptEdits' })
    t.assert.strictEqual(r.success, false)
    t.assert.strictEqual(r.error?.code, 'BUDGET_EXCEEDED', JSON.stringify(r.error))
    t.assert.match(r.error.message, /session/, 'the error names the scope')
    t.assert.strictEqual(r.error.scope, 'session')
    const paused = await manager.getSession(sessionId, 'u')
    t.assert.deepStrictEqual([paused.status, paused.pausedBy], ['paused', 'session'], 'the session is paused, not failed')
    const ledger = await manager.getUsage({ sessionId, groupBy: 'session', since })
    const forwarded = messageCalls(server).length
    t.diagnostic(`forwarded ${forwarded} model calls; the ledger has ${calls(ledger)} for $${total(ledger).toFixed(4)} under a cap of $${cap.toFixed(4)}`)
    t.assert.ok(forwarded >= 2 && forwarded < 9, `a few calls went through, not all: ${forwarded}`)
    // The ledger has exactly the calls upstream served: the refused one never reached it.
    t.assert.strictEqual(calls(ledger), forwarded)
    const all = total(await manager.getUsage({ sessionId, groupBy: 'session' }))
    t.assert.ok(all <= cap + RESERVE, `spend ${all} within the cap ${cap} plus one call's reserve`)
    // One task, one call at a time: a call is sent only when its reserve fits (and each call here
    // costs less than its reserve), so the spend never crosses the cap at all.
    t.assert.ok(all <= cap + 1e-9, `spend ${all} crossed the cap ${cap}: a call was sent whose reserve did not fit`)
    const budget = await manager.getBudget({ scope: 'session', userId: 'u', sessionId })
    t.assert.ok(budget.spentUsd > spentBefore + 1, `the cap's spend counts the task's calls: ${budget.spentUsd}`)
    t.assert.ok(budget.remainingUsd < RESERVE, `less than one reserve is left: ${budget.remainingUsd}`)

    // Raised: a follow-up goes on with the same conversation.
    await manager.setBudget({ scope: 'session', userId: 'u', sessionId, usd: 1000 })
    server.reset()
    server.enqueue({ text: 'carrying on' })
    const next = await manager.executeTask({ prompt: 'and now?', sessionId, projectId: 'p', userId: 'u' })
    t.assert.strictEqual(next.success, true, JSON.stringify(next.error))
    t.assert.strictEqual(next.sessionId, sessionId)
    const resumed = await manager.getSession(sessionId, 'u')
    t.assert.deepStrictEqual([resumed.status, resumed.pausedBy], ['active', undefined], 'the pause ended with the task')
    const sent = JSON.stringify(messageCalls(server).map((q) => q.body?.messages))
    t.assert.ok(sent.includes(marker), 'the model sees the earlier turns')
  })

  test(`a session cap covers the session's lineage: a fork's spend counts, a fork's fork is refused and paused, another session of the user is not${backendTag(backend)}`, async (t) => {
    server.reset()
    const { manager } = makeManager({ server, backend })
    t.after(() => manager.close())
    const first = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    const root = first.sessionId
    // Room for one call's reserve (about $2), not two: the fork's call ($0.60) leaves less.
    const cap = total(await manager.getUsage({ sessionId: root, groupBy: 'session' })) + 2.2
    await manager.setBudget({ scope: 'session', userId: 'u', sessionId: root, usd: cap })
    const fork = await manager.fork({ sessionId: root, userId: 'u' })
    server.reset()
    server.enqueue({ text: 'paid in the fork', usage: BIG })
    const inFork = await manager.executeTask({ prompt: 'go on', sessionId: fork.id, projectId: 'p', userId: 'u' })
    t.assert.strictEqual(inFork.success, true, `control: the fork had room for one call: ${JSON.stringify(inFork.error)}`)
    const lineage = await manager.getBudget({ scope: 'session', userId: 'u', sessionId: root })
    t.assert.ok(lineage.spentUsd >= cap - 2.2 + 0.6 - 1e-9, `the root's cap counts the fork's spend: ${JSON.stringify(lineage)}`)
    // The fork's fork: no cap of its own, but the lineage's leaves no room for a call.
    const fork2 = await manager.fork({ sessionId: fork.id, userId: 'u' })
    server.reset()
    server.enqueue({ text: 'paid in the fork of the fork', usage: BIG })
    const inFork2 = await manager.executeTask({ prompt: 'go on', sessionId: fork2.id, projectId: 'p', userId: 'u' })
    t.assert.strictEqual(inFork2.error?.code, 'BUDGET_EXCEEDED', `the fork's fork spent on: ${JSON.stringify(inFork2)}`)
    t.assert.strictEqual(inFork2.error.scope, 'session')
    t.assert.strictEqual(messageCalls(server).length, 0, 'the refused call was never forwarded')
    const paused = await manager.getSession(fork2.id, 'u')
    t.assert.deepStrictEqual([paused.status, paused.pausedBy], ['paused', 'session'])
    const read = await manager.getBudget({ scope: 'session', userId: 'u', sessionId: fork2.id })
    t.assert.deepStrictEqual([read.usd, read.sessionId, read.spentUsd], [cap, fork2.id, lineage.spentUsd], 'read on the fork\'s fork: the lineage\'s cap')
    // A fork of the paused one starts paused; the user's other conversation is not in the lineage.
    const fork3 = await manager.fork({ sessionId: fork2.id, userId: 'u' })
    t.assert.deepStrictEqual([fork3.status, fork3.pausedBy], ['paused', 'session'])
    server.reset()
    server.enqueue({ text: 'another conversation', usage: BIG })
    const apart = await manager.executeTask({ prompt: 'something else', projectId: 'p', userId: 'u' })
    t.assert.strictEqual(apart.success, true, `another session of the user was stopped: ${JSON.stringify(apart.error)}`)
    t.assert.strictEqual(apart.result, 'another conversation')
    t.assert.strictEqual((await manager.getSession(apart.sessionId, 'u')).status, 'active')
    t.assert.strictEqual(await manager.getBudget({ scope: 'session', userId: 'u', sessionId: apart.sessionId }), null)
    t.assert.strictEqual((await manager.fork({ sessionId: apart.sessionId, userId: 'u' })).status, 'active')
    // Raised on the fork's fork, the lineage's cap lets the root go on.
    await manager.setBudget({ scope: 'session', userId: 'u', sessionId: fork2.id, usd: 1000 })
    server.reset()
    server.enqueue({ text: 'the root goes on' })
    const again = await manager.executeTask({ prompt: 'and now?', sessionId: root, projectId: 'p', userId: 'u' })
    t.assert.strictEqual(again.success, true, JSON.stringify(again.error))
    t.assert.strictEqual((await manager.getBudget({ scope: 'session', userId: 'u', sessionId: root })).usd, 1000)
  })

  test(`a user cap is shared by the user's sessions running at once${backendTag(backend)}`, async (t) => {
    server.reset()
    const cap = 6
    const { manager } = makeManager({ server, backend, budgets: { perUser: { usd: cap, period: 'day' } } })
    t.after(() => manager.close())
    for (let i = 0; i < 40; i++) server.enqueue(tool(i))
    const run = (n) => manager.executeTask({ prompt: `run ${n}`, projectId: `p${n}`, userId: 'shared', allowedTools: ['Bash'], permissionMode: 'acceptEdits' })
    const [a, b] = await Promise.all([run(1), run(2)])
    const rows = await manager.getUsage({ userId: 'shared', groupBy: 'session' })
    t.diagnostic(`sessions: ${JSON.stringify(rows.map((x) => [x.calls, x.usd]))}; ${a.error?.code} ${b.error?.code}`)
    for (const x of [a, b]) {
      t.assert.strictEqual(x.error?.code, 'BUDGET_EXCEEDED', JSON.stringify(x.error))
      t.assert.match(x.error.message, /user/)
      t.assert.strictEqual(x.error.scope, 'user')
    }
    // Each of the two tasks may have one call in flight past the check: at most two reserves over.
    t.assert.ok(total(rows) <= cap + 2 * RESERVE, `user spend ${total(rows)}`)
    t.assert.ok(total(rows) > cap - 2 * RESERVE, `the two sessions together spent up to the cap: ${total(rows)}`)
    const budget = await manager.getBudget({ scope: 'user', userId: 'shared' })
    t.assert.strictEqual(budget.usd, cap)
    t.assert.strictEqual(budget.period, 'day')
  })
}

test('a project cap without a user is the project\'s across its users: two users\' tasks share it, another project does not count', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const project = `shared-${crypto.randomBytes(3).toString('hex')}`
  const cap = 3
  const b = await manager.setBudget({ scope: 'project', projectId: project, usd: cap, period: 'month' })
  t.assert.deepStrictEqual([b.scope, b.userId, b.projectId, b.usd, b.spentUsd], ['project', undefined, project, cap, 0])
  // alice spends in the project; bob's first call there no longer fits.
  server.enqueue({ text: 'one', usage: BIG })
  const a = await manager.executeTask({ prompt: 'hello', projectId: project, userId: 'alice' })
  t.assert.strictEqual(a.success, true, JSON.stringify(a.error))
  server.enqueue({ text: 'elsewhere', usage: BIG })
  const other = await manager.executeTask({ prompt: 'hello', projectId: `${project}-other`, userId: 'bob' })
  t.assert.strictEqual(other.success, true, 'another project is not capped')
  const spent = (await manager.getBudget({ scope: 'project', projectId: project })).spentUsd
  t.assert.ok(spent > 0.5 && spent < 1, `alice's task is charged to the project: ${spent}`)
  server.reset()
  for (let i = 0; i < 8; i++) server.enqueue(tool(i))
  const runs = await Promise.all(['alice', 'bob'].map((u) => manager.executeTask({ prompt: 'run the steps', projectId: project, userId: u, allowedTools: ['Bash'], permissionMode: 'acceptEdits' })))
  for (const r of runs) {
    t.assert.strictEqual(r.error?.code, 'BUDGET_EXCEEDED', JSON.stringify(r.error))
    t.assert.strictEqual(r.error.scope, 'project')
    t.assert.match(r.error.message, /project \(all users\)/)
  }
  const rows = await manager.getUsage({ projectId: project, groupBy: 'session' })
  t.assert.ok(total(rows) <= cap + 2 * RESERVE, `project spend ${total(rows)} within the cap plus one reserve per task`)
  // A user's own project cap is another cap; a user cap may not leave out the user.
  const code = async (p) => p.then(() => 'ok', (e) => e.code)
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'user', usd: 1 })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'session', sessionId: a.sessionId, usd: 1 })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await manager.getBudget({ scope: 'project', userId: 'alice', projectId: project }), null)
})

test('a streamed response is charged from message_start and message_delta usage, cache reads and writes priced as such', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, modelPrices: [{ model: 'claude', input: 1, output: 2, cacheWrite: 4, cacheRead: 0.5 }] })
  t.after(() => manager.close())
  server.enqueue({ text: 'streamed', usage: { input_tokens: 1000, output_tokens: 500, cache_read_input_tokens: 2000, cache_creation_input_tokens: 3000 } })
  const r = await manager.executeTask({ prompt: 'stream please', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const streamed = server.responses.filter((x) => x.kind !== 'count_tokens' && x.stream)
  t.assert.ok(streamed.length >= 1, 'the CLI streamed its call')
  const rows = await manager.getUsage({ sessionId: r.sessionId, groupBy: 'model' })
  const sum = rows.reduce((s, x) => ({ i: s.i + x.inputTokens, o: s.o + x.outputTokens, cr: s.cr + x.cacheReadInputTokens, cw: s.cw + x.cacheCreationInputTokens, usd: s.usd + x.usd }), { i: 0, o: 0, cr: 0, cw: 0, usd: 0 })
  const served = server.responses.filter((x) => x.kind !== 'count_tokens' && x.usage).reduce((s, x) => ({ i: s.i + (x.usage.input_tokens ?? 0), o: s.o + (x.usage.output_tokens ?? 0), cr: s.cr + (x.usage.cache_read_input_tokens ?? 0), cw: s.cw + (x.usage.cache_creation_input_tokens ?? 0) }), { i: 0, o: 0, cr: 0, cw: 0 })
  t.assert.deepStrictEqual({ i: sum.i, o: sum.o, cr: sum.cr, cw: sum.cw }, served, 'the ledger has what upstream reported')
  const want = (served.i * 1 + served.o * 2 + served.cr * 0.5 + served.cw * 4) / 1e6
  t.assert.ok(Math.abs(sum.usd - want) < 1e-9, `priced at modelPrices: ${sum.usd} vs ${want}`)
})

test('bad budget input is refused before anything is stored; another user\'s session answers as a missing one', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const r = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'u' })
  const code = async (p) => p.then(() => 'ok', (e) => e.code)
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'user', userId: 'u', usd: -1 })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'user', userId: 'u', usd: NaN })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'user', userId: 'u', usd: Infinity })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'team', userId: 'u', usd: 1 })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'user', userId: 'u', usd: 1, period: 'week' })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'project', userId: 'u', usd: 1 })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await code(manager.setBudget({ scope: 'session', userId: 'other', sessionId: r.sessionId, usd: 1 })), 'SESSION_NOT_FOUND')
  t.assert.strictEqual(await code(manager.getUsage({ groupBy: 'week' })), 'INVALID_ARGUMENT')
  t.assert.strictEqual(await manager.getBudget({ scope: 'user', userId: 'u' }), null, 'nothing was stored')
  t.assert.throws(() => makeManager({ server, exposeApiKeyToAgent: true, budgets: { perUser: { usd: 1 } } }), (e) => e.code === 'INVALID_ARGUMENT' && /exposeApiKeyToAgent/.test(e.message))
  t.assert.throws(() => makeManager({ server, budgets: { perSession: { usd: -5 } } }), (e) => e.code === 'INVALID_ARGUMENT')
})
