// A spend cap on three nodes (the Budgets issue): three Node processes, each with its own manager
// and key proxy, share one PostgreSQL schema and one user's cap; two tasks on each node run tool
// loops of expensive model calls at once while PostgreSQL drops the nodes' connections twice. The
// ledger's total stays within the cap plus one call's reserve per concurrent task, and holds one
// row per call the stand-in served: nothing charged twice, nothing sent uncharged. Runs when
// CSM_TEST_DATABASE_URL is set (reported as skipped otherwise).
import { test } from 'node:test'
import { execFileSync } from 'node:child_process'
import { PG_URL, skipWithoutPostgres, startStandInServer, tempDir } from './helpers.mjs'
import { messageCalls } from './attack-helpers.mjs'
import { startNode } from './node-harness.mjs'

// Every scripted call reports 200,000 input tokens ($0.60 at Sonnet's list price); the CLI asks for
// max_tokens 128000, so a call's reserve is about $1.92 plus its input: $2 at most.
const RESERVE = 2
const BIG = { input_tokens: 200_000, output_tokens: 10 }
const tool = (i) => ({ toolUse: { name: 'Bash', input: { command: `echo step${i}`, description: `step ${i}` } }, usage: BIG, chunkDelayMs: 20 })

test('three nodes hammer one user cap at once while PostgreSQL drops their connections: the ledger stays within the cap plus one reserve per task, one row per call served', { timeout: 300_000 }, async (t) => {
  if (skipWithoutPostgres(t)) return
  const server = await startStandInServer()
  const root = tempDir('csm-nodes-budget-')
  const schema = `csm_nodes_budget_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const app = `csm_nb_${process.pid}`
  const sep = PG_URL.includes('?') ? '&' : '?'
  const sql = (q) => execFileSync('psql', [PG_URL, '-AtXqc', q], { encoding: 'utf8' }).trim()
  const nodes = []
  t.after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL')
    await server.close()
    try {
      sql(`SET client_min_messages = warning; DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
    } catch {}
  })
  const ctx = { root, schema, server, ttl: 5000, databaseUrl: `${PG_URL}${sep}application_name=${app}` }
  nodes.push(...(await Promise.all(['A', 'B', 'C'].map((name) => startNode(name, ctx)))))
  const [A] = nodes
  const cap = 10
  await A.call('setBudget', [{ scope: 'user', userId: 'spender', usd: cap, period: 'day' }])
  for (let i = 0; i < 80; i++) server.enqueue(tool(i))

  const run = (node, n) =>
    node.call('executeTask', [{ prompt: `run ${node.name}${n}`, projectId: 'p', userId: 'spender', allowedTools: ['Bash'], permissionMode: 'acceptEdits' }])
  const tasks = nodes.flatMap((node) => [run(node, 1), run(node, 2)])
  // Drop every connection of the three nodes twice while the tasks run.
  let drops = 0
  for (const after of [3, 8]) {
    while (messageCalls(server).length < after) await new Promise((r) => setTimeout(r, 20))
    drops += Number(sql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${app}'`))
  }
  const results = await Promise.all(tasks)
  t.diagnostic(`dropped ${drops} connections; ends: ${results.map((r) => r.error?.code ?? 'ok').join(' ')}`)
  t.assert.ok(drops >= 1, 'the nodes had connections to drop')
  for (const r of results) {
    t.assert.strictEqual(r.error?.code, 'BUDGET_EXCEEDED', JSON.stringify(r.error))
    t.assert.strictEqual(r.error.scope, 'user')
  }

  const rows = await A.call('getUsage', [{ userId: 'spender', groupBy: 'session' }])
  const spent = rows.reduce((s, r) => s + r.usd, 0)
  const charged = rows.reduce((s, r) => s + r.calls, 0)
  const served = messageCalls(server).length
  t.diagnostic(`${served} calls served, ${charged} in the ledger for $${spent.toFixed(4)} under a cap of $${cap}`)
  t.assert.ok(spent <= cap + results.length * RESERVE, `spend ${spent} within the cap plus one reserve per concurrent task`)
  t.assert.ok(spent > cap - results.length * RESERVE, `the tasks spent up to the cap: ${spent}`)
  t.assert.strictEqual(charged, served, 'one ledger row per call the stand-in served')
  const budget = await nodes[2].call('getBudget', [{ scope: 'user', userId: 'spender' }])
  t.assert.ok(Math.abs(budget.spentUsd - spent) < 1e-6, `every node reads the same spend: ${budget.spentUsd} vs ${spent}`)
})
