// A session resumed after the prompt cache expired (its last turn hours or days old), with the real
// CLI and the stand-in. What CLI 2.1.331 does then, as found by these tests: nothing special. It
// neither compacts nor clears old tool results on its own (its after-idle tool-result clearing is
// behind a remote feature flag that is off without Anthropic's flag service, and it is done by the
// API through a `clear_tool_uses` context-management edit, not in the transcript; its idle
// compaction runs only in a long-lived CLI with a one-hour cache, before the cache expires, never
// on a resume). So the model is sent the whole history, and the meter stays what the API reported
// for the last call. If a later CLI starts compacting or clearing on such a resume, these tests
// fail and say what it sent.
import { test, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { makeManager, startStandInServer, filesUnder } from './helpers.mjs'

const server = await startStandInServer()
after(() => server.close())

const total = (u) => u.input_tokens + u.output_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens

function transcriptOf(configDir, sessionId) {
  const file = filesUnder(configDir).find((f) => f.endsWith(`${sessionId}.jsonl`))
  if (!file) throw new Error(`no transcript of ${sessionId} under ${configDir}`)
  return file
}

/** Moves every `timestamp` of a transcript (and the file's mtime) `ageMs` into the past: as if
 * the session's last turn were that old. Returns how many lines it moved. */
function ageTranscript(file, ageMs) {
  let moved = 0
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => {
    const entry = JSON.parse(line)
    if (typeof entry.timestamp !== 'string') return line
    entry.timestamp = new Date(Date.parse(entry.timestamp) - ageMs).toISOString()
    moved++
    return JSON.stringify(entry)
  })
  fs.writeFileSync(file, lines.join('\n') + '\n')
  const then = new Date(Date.now() - ageMs)
  fs.utimesSync(file, then, then)
  return moved
}

const messageCalls = () => server.requests.filter((r) => r.method === 'POST' && r.path === '/v1/messages')
const blocksOf = (body) => body.messages.flatMap((m) => (typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content))

for (const [label, ageMs] of [
  ['2 hours', 2 * 3600_000],
  ['2 days', 2 * 86400_000],
]) {
  test(`cache expiry: resumed ${label} after its last turn, the CLI neither compacts nor clears old tool results; the model gets the whole history and the meter is the API's last call`, async (t) => {
    server.reset()
    const { manager, work, configDir } = makeManager({ server, allowBypassPermissions: true })
    const base = { projectId: 'p', userId: 'u' }
    // A first task with two tool turns (a Read and a Bash), whose results a microcompact would clear.
    fs.writeFileSync(path.join(work, 'notes.txt'), 'READ_MARKER the notes of the first task\n'.repeat(60))
    server.enqueue(
      { toolUse: { name: 'Read', input: { file_path: path.join(work, 'notes.txt') } } },
      { toolUse: { name: 'Bash', input: { command: 'echo BASH_MARKER from the first task', description: 'echo' } } },
      { text: 'read and ran' },
    )
    const first = await manager.executeTask({ ...base, prompt: 'first task', permissionMode: 'bypassPermissions' })
    t.assert.strictEqual(first.success, true, JSON.stringify(first.error))
    const second = await manager.executeTask({ ...base, prompt: 'second task', sessionId: first.sessionId })
    t.assert.strictEqual(second.result, 'Echo #2: second task')
    // The history as the model had it in the last call before the pause.
    const before = messageCalls().at(-1).body
    const resultsBefore = blocksOf(before).filter((b) => b.type === 'tool_result')
    t.assert.strictEqual(resultsBefore.length, 2, 'control: both tool results were sent before the pause')
    t.assert.match(JSON.stringify(resultsBefore), /READ_MARKER[\s\S]*BASH_MARKER/, 'control: with their contents')

    const file = transcriptOf(configDir, first.sessionId)
    t.assert.ok(ageTranscript(file, ageMs) > 10, 'control: the transcript had timestamps to move')
    server.reset()
    // After the cache expired the API reads nothing from it and writes the prompt again.
    server.enqueue({ usage: { cache_read_input_tokens: 0, cache_creation_input_tokens: 777 } })
    const events = []
    const r = await manager.executeTask({ ...base, prompt: 'after the pause', sessionId: first.sessionId }, { onEvent: (e) => events.push(e) })
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))

    // One model call, no summary call before it; the three user turns reached the model.
    const calls = messageCalls()
    t.assert.strictEqual(calls.length, 1, `expected only the answer, got ${calls.length} calls: ${calls.map((c) => JSON.stringify(c.body.messages.at(-1)).slice(0, 120)).join(' / ')}`)
    t.assert.strictEqual(r.result, 'Echo #3: after the pause')
    // The whole history: each tool call and each tool result as sent before the pause, unchanged.
    const sent = calls[0].body
    const blocks = blocksOf(sent)
    t.assert.deepStrictEqual(
      blocks.filter((b) => b.type === 'tool_result').map((b) => [b.tool_use_id, b.content]),
      resultsBefore.map((b) => [b.tool_use_id, b.content]),
      'the tool results the model got after the pause are the ones it had before it',
    )
    t.assert.deepStrictEqual(
      blocks.filter((b) => b.type === 'tool_use').map((b) => [b.id, b.name]),
      blocksOf(before).filter((b) => b.type === 'tool_use').map((b) => [b.id, b.name]),
    )
    const edits = sent.context_management?.edits ?? []
    t.assert.ok(!edits.some((e) => /clear_tool_uses/.test(e.type)), `no tool-result clearing asked of the API: ${JSON.stringify(edits)}`)
    t.assert.ok(!/resumed after a long pause/.test(JSON.stringify(sent)), 'no after-pause notice')

    // Nothing compacted, in the stream, the result, the store or the transcript.
    const boundaries = events.filter((e) => e.type === 'system' && /compact_boundary/.test(e.subtype))
    t.assert.deepStrictEqual(boundaries, [])
    t.assert.strictEqual(r.compacted, false)
    t.assert.deepStrictEqual(r.compactions, [])
    t.assert.deepStrictEqual(await manager.listCompactions(first.sessionId, 'u'), [])
    const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
    t.assert.deepStrictEqual(lines.filter((l) => /compact_boundary/.test(l.subtype ?? '') || l.isCompactSummary), [])

    // The meter: exactly the usage the stand-in reported for that call (the new cache write included).
    const last = server.responses.filter((x) => x.kind === 'text' || x.kind === 'tool_use').at(-1).usage
    t.assert.strictEqual(last.cache_creation_input_tokens, 777)
    t.assert.strictEqual(r.contextInfo.source, 'api')
    t.assert.strictEqual(r.contextInfo.estimatedTokens, total(last))
    const ctx = await manager.getSessionContext(first.sessionId, 'u')
    t.assert.deepStrictEqual([ctx.estimatedTokens, ctx.source], [total(last), 'api'])
    await manager.close()
  })
}
