// maxBudgetUsd holds before a tool runs, warm mode included (finding M4): the first model call
// already costs more than the budget and asks for a Bash tool; the tool must not run.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { makeManager, startStandInServer } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})


for (const [label, warmIdleMs, withCallback] of [
  ['cold', 0, false],
  ['warm (default)', undefined, false],
  ['warm with canUseTool allowing everything', undefined, true],
]) {
  // With canUseTool the CLI runs with --permission-prompt-tool=stdio; CLI 2.1.331 running as a
  // user other than root (as every sandboxed agent now does) then runs the first call's tool
  // before it stops at the budget. Not guaranteed yet (README, "Not guaranteed"): a todo, so the
  // run shows it without failing; the key proxy's spend caps are the fix (the Budgets issue).
  const todo = withCallback ? 'the CLI runs the first tool with canUseTool as a non-root user' : false
  test(`budget: a first call over maxBudgetUsd does not run its tool — ${label}`, { todo }, async (t) => {
    server.reset()
    const { manager, work } = makeManager({ server, ...(warmIdleMs === undefined ? { warmIdleMs: undefined } : { warmIdleMs }) })
    t.after(() => manager.close())
    const made = path.join(work, 'spent.txt')
    // 1,000,000 input tokens cost dollars on any Claude model: far over one cent.
    server.enqueue(
      { toolUse: { name: 'Bash', input: { command: `touch ${made}`, description: 'spend' } }, usage: { input_tokens: 1_000_000 } },
      { text: 'after the tool' },
    )
    const asked = []
    const r = await manager.executeTask(
      { prompt: 'spend', projectId: 'p', userId: 'u', maxBudgetUsd: 0.01, allowedTools: ['Bash'], permissionMode: 'acceptEdits' },
      withCallback ? { canUseTool: async (name) => (asked.push(name), { behavior: 'allow' }) } : {},
    )
    t.assert.strictEqual(r.success, false)
    t.assert.strictEqual(r.error?.code, 'BUDGET_EXCEEDED', JSON.stringify(r.error))
    t.assert.strictEqual(fs.existsSync(made), false, 'the tool did not run')
    t.assert.deepStrictEqual(asked, [], 'no permission was asked for the tool')
  })
}
