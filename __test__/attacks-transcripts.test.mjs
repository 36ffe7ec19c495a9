// Attacks on the files the agent can write and the server reads: the CLI's transcripts in the
// tenant's configuration folder (`CLAUDE_CONFIG_DIR/projects/<slug>/<id>.jsonl`). The agent
// plants links there (to another tenant's transcript, to a host file or folder) or makes its
// transcript huge; the server must not follow the links and must read in bounded memory.
// Real CLI, stand-in API; each attack runs sandboxed (skipped without bubblewrap) and with
// `sandbox: 'none'`. The PostgreSQL ones run when CSM_TEST_DATABASE_URL is set.
import { test, before, after } from 'node:test'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { PG_URL, skipWithoutPostgres, addon, makeManager, rejectsWith, startStandInServer, tempDir } from './helpers.mjs'
import { runBash, transcripts } from './attack-helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const mark = (name) => `${name}_${crypto.randomBytes(6).toString('hex')}`
const SANDBOXES = ['bubblewrap', 'none']

/** A manager with `sandbox` (the default is bubblewrap); false (skipped) when that cannot run. */
function managerFor(t, sandbox, opts = {}) {
  const made = makeManager({ server, ...(sandbox === 'none' ? { sandbox: 'none' } : {}), ...opts })
  if (sandbox === 'bubblewrap' && made.manager.info().sandbox !== 'bubblewrap') {
    t.skip(`agent sandbox is '${made.manager.info().sandbox}', not 'bubblewrap': the sandboxed attack cannot be checked`)
    made.manager.close()
    return null
  }
  return made
}

/** The tenant folders under the manager's tenant root, by user. */
function tenantDir(manager, user) {
  const root = path.join(manager.info().stateDirectory, 'claude-config')
  return path.join(root, fs.readdirSync(root).find((n) => n.startsWith(`user-${user}-`)))
}

/** A shell line that finds the agent's own transcript (its only one) into $F. The CLI writes
 *  its transcript in batches, so on a loaded machine the file may not exist yet when the
 *  first tool runs: wait up to 15 s for it. */
const OWN =
  'for i in $(seq 75); do F=$(ls "$CLAUDE_CONFIG_DIR"/projects/*/*.jsonl 2>/dev/null | head -1); [ -n "$F" ] && break; sleep 0.2; done; echo "OWN=$F"'

/** A JSON-lines conversation with `secret` in it, as a transcript would hold it. */
function conversation(secret) {
  const u = crypto.randomUUID()
  const a = crypto.randomUUID()
  return (
    [
      { type: 'user', uuid: u, parentUuid: null, isSidechain: false, message: { role: 'user', content: `host line ${secret}` } },
      {
        type: 'assistant',
        uuid: a,
        parentUuid: u,
        isSidechain: false,
        message: { id: `msg_${secret}`, role: 'assistant', model: 'x', content: [{ type: 'text', text: `reply ${secret}` }] },
      },
    ]
      .map((l) => JSON.stringify(l))
      .join('\n') + '\n'
  )
}

for (const sandbox of SANDBOXES) {
  test(`T1. SQLite: an agent that links its transcript to another tenant's gets no conversation of hers from getMessages (sandbox: ${sandbox})`, async (t) => {
    server.reset()
    const made = managerFor(t, sandbox)
    if (!made) return
    const { manager } = made
    const secret = mark('VICTIM_SECRET')
    const a = await manager.executeTask({ prompt: `remember ${secret}`, projectId: 'p', userId: 'alice' })
    t.assert.strictEqual(a.success, true, JSON.stringify(a.error))
    const [victim] = transcripts(tenantDir(manager, 'alice'))
    t.assert.ok(fs.readFileSync(victim, 'utf8').includes(secret), 'the target exists on the host')
    // The path is computable (tenant folder name, slug, session id assumed known): passed in.
    const { r, output } = await runBash(manager, server, `${OWN}; ln -sf ${victim} "$F.l" && mv -f "$F.l" "$F" && echo LINKED`)
    t.assert.match(output, /LINKED/, `the agent planted its link:\n${output}`)
    const own = transcripts(tenantDir(manager, 'mallory'))
    t.assert.ok(own.some((f) => fs.lstatSync(f).isSymbolicLink()), 'the link is on the host')
    let page
    try {
      page = await manager.getMessages(r.sessionId, 'mallory')
    } catch (e) {
      t.assert.strictEqual(e.code, 'TRANSCRIPT_UNSAFE', e.message)
    }
    t.assert.ok(!JSON.stringify(page ?? {}).includes(secret), "the victim's conversation came back through the attacker's session")
    await rejectsWith(t, manager.getMessages(r.sessionId, 'mallory'), 'TRANSCRIPT_UNSAFE')
    // Deleting the session removes the link, not the victim's transcript.
    await manager.deleteSession(r.sessionId, 'mallory')
    t.assert.ok(fs.readFileSync(victim, 'utf8').includes(secret), "the victim's transcript survived the delete")
    t.assert.ok(!transcripts(tenantDir(manager, 'mallory')).some((f) => f.includes(r.sessionId)), 'the link is gone')
    await manager.close()
  })

  test(`T2. a 300 MB transcript fails getMessages with TRANSCRIPT_TOO_LARGE and a 50 MB line is skipped, in bounded memory (sandbox: ${sandbox})`, async (t) => {
    server.reset()
    const made = managerFor(t, sandbox)
    if (!made) return
    const { manager } = made
    const secret = mark('HUGE_LINE')
    // One 50 MB user message (a valid line) first: skipped, the rest of the conversation reads.
    const py = (lines, size, text) =>
      `python3 -c 'import sys,json; l=json.dumps({"type":"user","uuid":"x","parentUuid":None,"message":{"role":"user","content":"${text.slice(0, 4)}"+"${text.slice(4)}"+"x"*${size}}})+"\\n"; f=open(sys.argv[1],"a"); [f.write(l) for _ in range(${lines})]' "$F"`
    const { r, output } = await runBash(manager, server, `${OWN}; ${py(1, 50_000_000, secret)} && echo GREW`)
    t.assert.match(output, /GREW/, output)
    const [own] = transcripts(tenantDir(manager, 'mallory'))
    t.assert.ok(fs.statSync(own).size > 50_000_000)
    const page = await manager.getMessages(r.sessionId, 'mallory')
    t.assert.ok(page.total >= 2, `the conversation reads: ${page.total}`)
    t.assert.ok(!JSON.stringify(page).includes(secret), 'the 50 MB line was returned')
    // Then 300 lines of 1 MB (the whole file over the 256 MiB default).
    await runBash(manager, server, `${OWN}; ${py(300, 1_000_000, 'pad')} && echo GREW`, { sessionId: r.sessionId })
    t.assert.ok(fs.statSync(own).size > 300_000_000, 'the transcript is huge')
    const base = process.memoryUsage().rss
    let peak = base
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5)
    let code
    try {
      await manager.getMessages(r.sessionId, 'mallory')
    } catch (e) {
      code = e.code
    } finally {
      clearInterval(sampler)
      peak = Math.max(peak, process.memoryUsage().rss)
    }
    t.assert.ok(peak - base < 200 * 1024 * 1024, `getMessages grew the server by ${((peak - base) / 1048576).toFixed(0)} MB`)
    t.assert.strictEqual(code, 'TRANSCRIPT_TOO_LARGE')
    fs.rmSync(own, { force: true })
    await manager.close()
  })
}

/** A PostgreSQL manager (a node) and a second one on the same schema with its own folders. */
function pgNodes(t, sandbox) {
  if (skipWithoutPostgres(t)) return null
  const a = managerFor(t, sandbox, { backend: 'postgres' })
  if (!a) return null
  const dir = tempDir()
  fs.mkdirSync(path.join(dir, 'work'), { recursive: true })
  const b = new addon.SessionManager({ ...a.options, stateDirectory: path.join(dir, 'state'), workingDirectory: path.join(dir, 'work') })
  return { a, b }
}

/** Stored lines of session `sid` that contain `text`. */
const storedWith = (schema, sid, text) =>
  Number(
    execFileSync(
      'psql',
      [PG_URL, '-Atqc', `SELECT count(*) FROM "${schema}".transcript_entries WHERE session_id = '${sid}' AND line LIKE '%${text}%'`],
      { encoding: 'utf8' },
    ).trim(),
  )

for (const sandbox of SANDBOXES) {
  test(`T3. PostgreSQL: a transcript linked (after padding) to a host JSON-lines file or another tenant's transcript is not imported after the CLI exits (sandbox: ${sandbox})`, async (t) => {
    server.reset()
    const nodes = pgNodes(t, sandbox)
    if (!nodes) return
    const { a, b } = nodes
    const schema = a.options.databaseSchema
    const alice = mark('ALICE_SECRET')
    const v = await a.manager.executeTask({ prompt: `remember ${alice}`, projectId: 'p', userId: 'alice' })
    t.assert.strictEqual(v.success, true, JSON.stringify(v.error))
    const [aliceTranscript] = transcripts(tenantDir(a.manager, 'alice'))
    const host = mark('HOST_LOG')
    const hostFile = path.join(tempDir(), 'app.jsonl')
    fs.writeFileSync(hostFile, conversation(host))
    for (const [target, secret] of [
      [hostFile, host],
      [aliceTranscript, alice],
    ]) {
      // Task 1 pads the transcript past the target's length; task 2 links it.
      const pad = `python3 -c 'import sys,json; open(sys.argv[1],"a").write(json.dumps({"type":"summary","pad":"p"*200000})+"\\n")' "$F"`
      const { r, output } = await runBash(a.manager, server, `${OWN}; ${pad} && echo PADDED`)
      t.assert.match(output, /PADDED/, output)
      const sid = r.sessionId
      const linked = await runBash(a.manager, server, `${OWN}; ln -sf ${target} "$F.l" && mv -f "$F.l" "$F" && echo LINKED`, { sessionId: sid })
      t.assert.match(linked.output, /LINKED/, linked.output)
      // A third task on the session waits for the second one's CLI to exit and its reconcile.
      server.enqueue({ text: 'ok' })
      await a.manager.executeTask({ prompt: 'next', projectId: 'p', userId: 'mallory', sessionId: sid })
      t.assert.strictEqual(storedWith(schema, sid, secret), 0, "the target's lines were stored in the attacker's session")
      const page = await b.getMessages(sid, 'mallory').catch((e) => ({ error: e.code }))
      t.assert.ok(!JSON.stringify(page).includes(secret), `another node serves the target's lines: ${JSON.stringify(page).slice(0, 300)}`)
    }
    await b.close()
    await a.manager.close()
  })

  test(`T4. PostgreSQL: with projects/<slug> linked to a host folder, the refresh before the next task writes nothing there (sandbox: ${sandbox})`, async (t) => {
    server.reset()
    const nodes = pgNodes(t, sandbox)
    if (!nodes) return
    const { a, b } = nodes
    const hostDir = path.join(tempDir(), 'host-folder')
    fs.mkdirSync(hostDir)
    // A first task puts the conversation in the store (sandboxed CLIs are mirrored from their
    // file after they exit); its prompt's line is written again only by a refresh from the store
    // (the unsandboxed CLI itself appends its later lines through the link).
    const prompt = mark('FIRST_PROMPT')
    server.enqueue({ text: 'hi' })
    const first = await a.manager.executeTask({ prompt, projectId: 'p', userId: 'mallory' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    // The CLI writes its transcript meanwhile and may create the folder again between the move
    // and the link (the link then lands inside it): tried until the folder is the link.
    const plant = `D=$(dirname "$F"); for i in $(seq 20); do [ -L "$D" ] && break; rm -rf "$D.old"; mv "$D" "$D.old"; ln -sT ${hostDir} "$D"; done; [ -L "$D" ] && echo LINKED`
    const { r, output } = await runBash(a.manager, server, `${OWN}; ${plant}`, {
      sessionId: first.sessionId,
    })
    t.assert.match(output, /LINKED/, `${output} ${JSON.stringify(r.error)}`)
    const projects = path.join(tenantDir(a.manager, 'mallory'), 'projects')
    t.assert.ok(
      fs.readdirSync(projects).some((n) => fs.lstatSync(path.join(projects, n)).isSymbolicLink()),
      `the planted link is there: ${fs.readdirSync(projects)}`,
    )
    server.enqueue({ text: 'ok' })
    const next = await a.manager.executeTask({ prompt: 'next', projectId: 'p', userId: 'mallory', sessionId: r.sessionId })
    const promptLine = (l) => {
      try {
        const v = JSON.parse(l)
        return v.type === 'user' && JSON.stringify(v.message?.content ?? '').includes(prompt)
      } catch {
        return false
      }
    }
    const written = fs
      .readdirSync(hostDir)
      .filter((f) => fs.lstatSync(path.join(hostDir, f)).isFile())
      .filter((f) => fs.readFileSync(path.join(hostDir, f), 'utf8').split('\n').some(promptLine))
    t.assert.deepStrictEqual(written, [], `the refresh wrote the stored conversation into the linked host folder: ${fs.readdirSync(hostDir)}`)
    t.assert.strictEqual(next.error?.code, 'TRANSCRIPT_UNSAFE', JSON.stringify(next.error))
    await b.close()
    await a.manager.close()
  })
}
