// Three nodes, one PostgreSQL: three Node processes (A, B, C), each with its own working root,
// CLAUDE_CONFIG_DIR folders and state folder, share one database schema. The conversation follows
// the session from node to node (the real CLI, the stand-in API: it answers `Echo #<user turns>:
// <text>`, so the number says how much history the model saw); a killed node's session is taken
// over once its lease expires; a frozen node that lost its lease writes nothing; a compaction on
// one node is what the others continue from. Runs when
// CSM_TEST_DATABASE_URL is set (reported as skipped otherwise).
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { PG_URL, addon, filesUnder, skipWithoutPostgres, startStandInServer, tempDir, processesMentioning, until, workDir } from './helpers.mjs'
import { startNode as startNodeWith, within } from './node-harness.mjs'

const { SessionManager } = addon

// Long enough that a node starved for a second or two on a loaded machine keeps its lease.
const TTL = 4000
const startNode = (name, ctx) => startNodeWith(name, { ...ctx, ttl: TTL })

/** The local transcript files of `sessionId` under a node's configuration folders. */
const localTranscripts = (node, sessionId) => filesUnder(node.configRoot).filter((f) => path.basename(f) === `${sessionId}.jsonl`)

const echo = (n, text) => `Echo #${n}: ${text}`

/** Every key at any depth of a JSON value (for a key order that does not depend on the writer). */
function flatKeys(v, out = {}) {
  if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      out[k] = true
      flatKeys(x, out)
    }
  }
  return out
}

test('three nodes share sessions through PostgreSQL: resume, stale copy, fork, take-over after SIGKILL, a frozen node fenced, compaction', async (t) => {
  if (skipWithoutPostgres(t)) return
  const server = await startStandInServer()
  const root = tempDir('csm-nodes-')
  const schema = `csm_nodes_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const sql = (q) => execFileSync('psql', [PG_URL, '-AtXqc', q.replaceAll('{S}', `"${schema}"`)], { encoding: 'utf8' }).trim()
  const nodes = []
  const toolNeedles = []
  t.after(async () => {
    for (const n of nodes) {
      try {
        n.child.kill('SIGCONT')
        n.child.kill('SIGKILL')
      } catch {}
    }
    for (const pid of toolNeedles.flatMap((n) => processesMentioning(n))) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {}
    }
    await server.close()
    try {
      sql(`DROP SCHEMA IF EXISTS {S} CASCADE`)
    } catch {}
  })
  const ctx = { root, schema, server }
  const start = async (name) => {
    const n = startNode(name, ctx)
    n.then((node) => nodes.push(node)).catch(() => {})
    return n
  }
  const [A, B, C] = await Promise.all(['A', 'B', 'C'].map(start))
  const results = []
  // A task on `node` whose model calls a Bash tool that never ends; resolves once the tool runs.
  const stuckTask = async (node, prompt, tool) => {
    toolNeedles.push(tool)
    server.enqueue({ toolUse: { name: 'Bash', input: { command: `(exec -a ${tool} tail -f /dev/null)` } } })
    let started
    const taskId = new Promise((r) => (started = r))
    const done = node.task(prompt, { sessionId: S, allowedTools: ['Bash'] }, (id) => started(id))
    const id = await within(Promise.race([taskId, done.then(() => Promise.reject(new Error(`${prompt} ended early`)))]), `${prompt} to start`)
    await until(`the tool of ${prompt} on ${node.name}`, () => processesMentioning(`${tool}\u0000`).length > 0, 30000)
    t.assert.ok(processesMentioning(`--resume=${S}\u0000`).length > 0, 'the CLI is found by its argv')
    // The prompt's line reaches the store a little after the CLI writes it (its mirror frame), and
    // on a loaded machine that may be after the tool started: what a node killed or frozen now
    // leaves is what it stored, so the test waits for the line.
    await until(`the prompt of ${prompt} stored`, () => Number(sql(`SELECT count(*) FROM {S}.transcript_entries WHERE task_id = '${id}' AND line::jsonb -> 'message' ->> 'content' = '${prompt}'`)) > 0, 30000)
    return { taskId: id, tool, done }
  }
  let S
  const run = async (node, prompt, extra, onStart) => {
    const r = await node.task(prompt, extra, onStart)
    results.push(r)
    return r
  }

  // A starts the session.
  const r1 = await run(A, 'one')
  t.assert.strictEqual(r1.result, echo(1, 'one'), JSON.stringify(r1.error))
  S = r1.sessionId
  t.assert.ok(Number(sql(`SELECT count(*) FROM {S}.transcript_entries WHERE session_id = '${S}'`)) > 0, 'A mirrored its lines')
  t.assert.strictEqual(sql(`SELECT working_directory FROM {S}.sessions WHERE id = '${S}'`), '.', 'stored relative to the root')

  // B resumes it: the model saw A's turn. B has its own file, under its own folder's slug.
  t.assert.deepStrictEqual(localTranscripts(B, S), [], 'B starts without a copy')
  const r2 = await run(B, 'two', { sessionId: S })
  t.assert.strictEqual(r2.result, echo(2, 'two'), JSON.stringify(r2.error))
  t.assert.strictEqual(r2.sessionId, S)
  const bFiles = localTranscripts(B, S)
  t.assert.strictEqual(bFiles.length, 1)
  t.assert.ok(bFiles[0].includes(B.work.replace(/[^A-Za-z0-9]/g, '-')), `B's copy is under the slug of B's folder: ${bFiles[0]}`)

  // A again: its own copy is stale (it lacks B's turn); it must be refreshed from the store.
  const r3 = await run(A, 'three', { sessionId: S })
  t.assert.strictEqual(r3.result, echo(3, 'three'), JSON.stringify(r3.error))

  // C forks: the fork sees the whole history; the parent is unchanged.
  const r4 = await run(C, 'four', { sessionId: S, forkSession: true })
  t.assert.strictEqual(r4.result, echo(4, 'four'), JSON.stringify(r4.error))
  const S2 = r4.sessionId
  t.assert.notStrictEqual(S2, S)
  const r5 = await run(B, 'five', { sessionId: S })
  t.assert.strictEqual(r5.result, echo(4, 'five'), 'the parent did not get the fork turn')
  // A has no copy of the fork, and reads it from the store.
  t.assert.deepStrictEqual(localTranscripts(A, S2), [])
  const forkOnA = await A.call('getMessages', [S2, 'u'])
  t.assert.deepStrictEqual(
    forkOnA.messages.map((m) => m.text),
    ['one', echo(1, 'one'), 'two', echo(2, 'two'), 'three', echo(3, 'three'), 'four', echo(4, 'four')],
  )
  const estimate = await A.call('estimatePromptTokens', [S2, 'u', 'hello'])
  t.assert.ok(estimate.tokens > 0)

  // A is killed (SIGKILL) in the middle of a task (a Bash tool that never ends). B's next task on
  // the session starts only once A's lease has expired by the database clock, and A's task is
  // `interrupted`.
  const { taskId: slowId, tool: tool1, done: slow } = await stuckTask(A, 'slow', `csm-nodes-kill-${process.pid}`)
  slow.catch(() => {})
  A.child.kill('SIGKILL')
  await new Promise((r) => A.child.once('exit', r))
  await until('the killed node\'s CLI gone with it', () => processesMentioning(`--resume=${S}\u0000`).length === 0)
  const leaseUntil = sql(`SELECT (floor(extract(epoch from expires_at) * 1000))::bigint FROM {S}.leases WHERE session_id = '${S}' AND task_id = '${slowId}'`)
  t.assert.ok(leaseUntil, 'the dead node still holds the lease')
  const r6 = await run(B, 'six', { sessionId: S, queueTimeoutMs: 30000 })
  t.assert.strictEqual(r6.result, echo(6, 'six'), `the interrupted prompt is in the history: ${JSON.stringify(r6.error)}`)
  const tasksOfS = () => sql(`SELECT id, status, coalesce(error_code, ''), node_id, fence, started_at FROM {S}.tasks WHERE session_id = '${S}' ORDER BY fence`).split('\n').map((l) => l.split('|'))
  const killedRow = tasksOfS().find((r) => r[0] === slowId)
  t.assert.deepStrictEqual(killedRow.slice(1, 4), ['interrupted', 'INTERRUPTED', 'A'])
  const sixRow = tasksOfS().find((r) => r[0] === r6.taskId)
  t.assert.strictEqual(Number(sixRow[4]), Number(killedRow[4]) + 1, 'B took the lease over under the next fence')
  t.assert.ok(Number(sixRow[5]) >= Number(leaseUntil), 'B started no earlier than the dead node\'s lease expired')
  for (const pid of processesMentioning(tool1)) process.kill(pid, 'SIGKILL')

  // A comes back, runs a task, and is frozen (SIGSTOP) with its CLI mid-tool. B takes the
  // session over once A's lease expires. When A resumes (SIGCONT) it has lost the lease: its CLI
  // is stopped, its task says LEASE_LOST, and nothing it writes is stored.
  const A2 = await start('A')
  const { taskId: frozenId, tool: tool2, done: frozen } = await stuckTask(A2, 'frozen', `csm-nodes-stop-${process.pid}`)
  const entriesOfFrozen = () => sql(`SELECT count(*) FROM {S}.transcript_entries WHERE task_id = '${frozenId}'`)
  A2.child.kill('SIGSTOP')
  const r7 = await run(B, 'seven', { sessionId: S, queueTimeoutMs: 30000 })
  t.assert.strictEqual(r7.result, echo(8, 'seven'), JSON.stringify(r7.error))
  const frozenRowBefore = sql(`SELECT status, error_code, fence FROM {S}.tasks WHERE id = '${frozenId}'`)
  t.assert.strictEqual(frozenRowBefore.split('|').slice(0, 2).join('|'), 'interrupted|INTERRUPTED')
  const storedBefore = entriesOfFrozen()
  A2.child.kill('SIGCONT')
  const rFrozen = await within(frozen, 'the frozen node\'s task to end')
  t.assert.strictEqual(rFrozen.success, false)
  t.assert.strictEqual(rFrozen.error?.code, 'LEASE_LOST', rFrozen.error?.message)
  await until('the frozen node\'s CLI and tool stopped', () => processesMentioning(tool2).length === 0 && processesMentioning(`--resume=${S}\u0000`).length === 0, 30000)
  t.assert.strictEqual(entriesOfFrozen(), storedBefore, 'no line of the frozen node was stored after it lost the lease')
  t.assert.strictEqual(sql(`SELECT status, error_code, fence FROM {S}.tasks WHERE id = '${frozenId}'`), frozenRowBefore, 'its row was not rewritten')
  // A's next task answers with B's history.
  const r8 = await run(A2, 'eight', { sessionId: S })
  t.assert.strictEqual(r8.result, echo(9, 'eight'), JSON.stringify(r8.error))

  // B compacts the session (its copy is stale again: A ran last); C sees the compaction, and the
  // conversation continues from the summary on A.
  const compacted = await B.call('compactSession', [{ sessionId: S, userId: 'u' }])
  results.push(compacted)
  t.assert.strictEqual(compacted.success, true, JSON.stringify(compacted.error))
  t.assert.strictEqual((await C.call('listCompactions', [S, 'u'])).length, 1)
  const afterCompaction = await C.call('getMessages', [S, 'u'])
  t.assert.ok(afterCompaction.messages.some((m) => m.kind === 'compactSummary'), 'C reads the summary B wrote')
  const r9 = await run(A2, 'nine', { sessionId: S })
  t.assert.strictEqual(r9.success, true, JSON.stringify(r9.error))
  t.assert.match(r9.result, /: nine$/)

  // Invariants of the whole run.
  await until('every lease released', () => sql(`SELECT count(*) FROM {S}.leases WHERE task_id IS NOT NULL`) === '0', 30000)
  t.assert.strictEqual(sql(`SELECT count(*) FROM {S}.tasks WHERE status = 'running'`), '0')
  const calls = results.length + 2 // + the killed and the frozen task
  t.assert.strictEqual(sql(`SELECT count(*) FROM {S}.tasks`), String(calls), 'one task row per call')
  t.assert.strictEqual(sql(`SELECT count(*) FROM {S}.sessions s WHERE task_count != (SELECT count(*) FROM {S}.tasks t WHERE t.session_id = s.id)`), '0')
  t.assert.strictEqual(
    sql(`SELECT count(*) FROM (SELECT 1 FROM {S}.transcript_entries WHERE uuid IS NOT NULL GROUP BY session_id, subpath, uuid HAVING count(*) > 1) d`),
    '0',
    'no line stored twice',
  )
  // The store's copy holds every line of the last writer's file, once (less the request
  // bookkeeping the CLI does not mirror), the conversation's lines in the file's order. (State
  // lines the CLI writes without a mirror frame when it resumes are stored after the others.)
  const aFile = localTranscripts(A2, S)
  t.assert.strictEqual(aFile.length, 1)
  const local = fs
    .readFileSync(aFile[0], 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((v) => !String(v.type).startsWith('api-request'))
  const stored = sql(`SELECT line FROM {S}.transcript_entries WHERE session_id = '${S}' AND subpath = '' ORDER BY seq`).split('\n').map((l) => JSON.parse(l))
  const canonical = (v) => JSON.stringify(v, Object.keys(flatKeys(v)).sort())
  t.assert.deepStrictEqual(stored.map(canonical).sort(), local.map(canonical).sort())
  const uuids = (lines) => lines.filter((v) => v.uuid).map((v) => v.uuid)
  t.assert.deepStrictEqual(uuids(stored), uuids(local))
  const costs = sql(`SELECT s.id, s.total_cost_usd, (SELECT sum(cost_usd) FROM {S}.tasks t WHERE t.session_id = s.id) FROM {S}.sessions s`).split('\n').map((l) => l.split('|').map((x, i) => (i ? Number(x) : x)))
  for (const [id, total, sum] of costs) {
    const returned = results.filter((r) => r.sessionId === id).reduce((a, r) => a + r.cost, 0)
    t.assert.ok(Math.abs(total - sum) < 1e-9 && Math.abs(total - returned) < 1e-9, `costs of ${id}: total ${total}, rows ${sum}, results ${returned}`)
    t.assert.ok(total > 0)
  }
})

test('nodeId and leaseTtlMs are checked: bad values are INVALID_ARGUMENT naming the option', async (t) => {
  const dir = tempDir()
  const make = (options) => () => new SessionManager({ databasePath: path.join(dir, 'sessions.db'), workingDirectory: workDir(dir), ...options })
  for (const [options, name] of [
    [{ nodeId: '' }, /nodeId/],
    [{ nodeId: 'a\nb' }, /nodeId/],
    [{ nodeId: 'x'.repeat(201) }, /nodeId/],
    [{ leaseTtlMs: 0 }, /leaseTtlMs/],
    [{ leaseTtlMs: 299 }, /leaseTtlMs/],
    [{ leaseTtlMs: 1.5 }, /leaseTtlMs/],
  ]) {
    t.assert.throws(make(options), (e) => e.code === 'INVALID_ARGUMENT' && name.test(e.message), JSON.stringify(options))
  }
  const ok = make({ nodeId: 'web-1', leaseTtlMs: 300 })()
  await ok.close()
})
