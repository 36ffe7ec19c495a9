// onEvent is the caller's code, called on the JavaScript thread while a task runs elsewhere. A
// throw or a rejected promise from it must not end the Node process: the task goes on, later
// events still arrive, and the result's warnings say what went wrong. The scenarios run in a child
// `node` with default flags, so an uncaught exception or an unhandled rejection shows as its exit.
import { test, before, after } from 'node:test'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { makeManager, rejectsWith, startStandInServer } from './helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

/**
 * Runs `body` in a child Node process with `manager` (over the test's database) and `count` (the
 * onEvent calls so far) in scope; `body` ends in a TaskResult, printed with the event count.
 */
async function runChild(dir, work, configDir, body) {
  const options = { databasePath: path.join(dir, 'sessions.db'), workingDirectory: work, env: { ...server.env(), CLAUDE_CONFIG_DIR: configDir } }
  const script = `
    const { SessionManager } = require(${JSON.stringify(path.resolve('index.js'))});
    const manager = new SessionManager(${JSON.stringify(options)});
    globalThis.count = 0;
    globalThis.types = [];
    (async () => {
      const result = await (async () => { ${body} })();
      await manager.close();
      // Give a late uncaught exception or unhandled rejection the chance to end the process.
      await new Promise((r) => setTimeout(r, 300));
      console.log('RESULT ' + JSON.stringify({ result, count, types }));
    })();`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stderr.on('data', (d) => (stderr += d))
  const code = await new Promise((resolve) => child.on('exit', (c, signal) => resolve(signal ?? c)))
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '))
  return { code, stderr, out: line ? JSON.parse(line.slice('RESULT '.length)) : null }
}

function setup() {
  const { manager, dir, work, configDir } = makeManager({ server })
  return { manager, run: (body) => runChild(dir, work, configDir, body) }
}

test('callbacks: an onEvent that throws on every event neither crashes Node nor stops the task; warnings say so once', async (t) => {
  server.reset()
  const { manager, run } = setup()
  const { code, stderr, out } = await run(`
    return manager.executeTask({ prompt: 'hello despite throws', projectId: 'p', userId: 'u' },
      { onEvent: (e) => { count++; types.push(e.type); throw new Error('onEvent bug') } })`)
  t.assert.strictEqual(code, 0, `the child died: ${stderr}`)
  t.assert.ok(out, `no result printed: ${stderr}`)
  const r = out.result
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.strictEqual(r.result, 'Echo #1: hello despite throws')
  // Every event was still delivered, the last one being the result.
  t.assert.ok(out.count >= 4, `only ${out.count} events`)
  t.assert.strictEqual(out.types[0], 'task_queued')
  t.assert.strictEqual(out.types.at(-1), 'result')
  // One entry for the one distinct failure, with how often it happened.
  const mine = r.warnings.filter((w) => w.includes('onEvent'))
  t.assert.deepStrictEqual(mine, [`onEvent threw: onEvent bug (${out.count} times)`])
  const [task] = await manager.listTasks(r.sessionId, 'u')
  t.assert.strictEqual(task.status, 'succeeded')
  await manager.close()
})

test('callbacks: an async onEvent whose promise rejects causes no unhandled rejection; warnings say so', async (t) => {
  server.reset()
  const { manager, run } = setup()
  const { code, stderr, out } = await run(`
    return manager.executeTask({ prompt: 'hello despite rejections', projectId: 'p', userId: 'u' },
      { onEvent: async (e) => {
          count++; types.push(e.type);
          await new Promise((r) => setTimeout(r, 5));
          throw new Error('async bug in ' + e.type);
      } })`)
  t.assert.strictEqual(code, 0, `the child died: ${stderr}`)
  t.assert.ok(out, `no result printed: ${stderr}`)
  const r = out.result
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.strictEqual(r.result, 'Echo #1: hello despite rejections')
  t.assert.strictEqual(out.types.at(-1), 'result')
  // One entry per distinct failure (the message names the event type), up to ten, then a sum.
  const mine = r.warnings.filter((w) => w.includes('onEvent'))
  t.assert.ok(mine.includes('onEvent rejected: async bug in task_queued'), JSON.stringify(mine))
  t.assert.ok(mine.some((w) => w.startsWith('onEvent rejected: async bug in result')), JSON.stringify(mine))
  t.assert.ok(mine.length <= 11, JSON.stringify(mine))
  await manager.close()
})

test('callbacks: an onEvent that throws on the first event only still receives all the later ones', async (t) => {
  server.reset()
  const { manager, run } = setup()
  // The same task with a well-behaved onEvent, for the number of events to expect.
  const plain = await run(`
    return manager.executeTask({ prompt: 'count me', projectId: 'p', userId: 'u' }, { onEvent: (e) => { count++; types.push(e.type) } })`)
  t.assert.strictEqual(plain.code, 0, plain.stderr)
  server.reset()
  const { code, stderr, out } = await run(`
    return manager.executeTask({ prompt: 'count me', projectId: 'p', userId: 'u' },
      { onEvent: (e) => { count++; types.push(e.type); if (count === 1) throw new TypeError('first one fails') } })`)
  t.assert.strictEqual(code, 0, `the child died: ${stderr}`)
  t.assert.ok(out, `no result printed: ${stderr}`)
  t.assert.strictEqual(out.result.success, true, JSON.stringify(out.result.error))
  t.assert.strictEqual(out.count, plain.out.count, `${JSON.stringify(out.types)} vs ${JSON.stringify(plain.out.types)}`)
  t.assert.ok(out.count >= 4)
  t.assert.deepStrictEqual(out.types, plain.out.types)
  t.assert.deepStrictEqual(
    out.result.warnings.filter((w) => w.includes('onEvent')),
    ['onEvent threw: first one fails'],
  )
  t.assert.ok(!plain.out.result.warnings.some((w) => w.includes('onEvent')), 'no warning without a failure')
  await manager.close()
})

test('callbacks: compactSession with a throwing onEvent completes and reports it', async (t) => {
  server.reset()
  const { manager, run } = setup()
  const a = await manager.executeTask({ prompt: 'one', projectId: 'p', userId: 'u' })
  await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'u', sessionId: a.sessionId })
  await manager.close()
  const { code, stderr, out } = await run(`
    return manager.compactSession({ sessionId: ${JSON.stringify(a.sessionId)}, userId: 'u' },
      { onEvent: (e) => { count++; types.push(e.type); throw 'a string, not an Error' } })`)
  t.assert.strictEqual(code, 0, `the child died: ${stderr}`)
  t.assert.ok(out, `no result printed: ${stderr}`)
  t.assert.strictEqual(out.result.success, true, JSON.stringify(out.result.error))
  t.assert.strictEqual(out.result.compactions.length, 1)
  t.assert.ok(out.count >= 2)
  t.assert.deepStrictEqual(
    out.result.warnings.filter((w) => w.includes('onEvent')),
    [out.count > 1 ? `onEvent threw: a string, not an Error (${out.count} times)` : 'onEvent threw: a string, not an Error'],
  )
})

test('callbacks: more than ten distinct failures are listed up to ten, then summed up', async (t) => {
  server.reset()
  const { manager, run } = setup()
  const { code, stderr, out } = await run(`
    return manager.executeTask({ prompt: 'many failures', projectId: 'p', userId: 'u', includePartialMessages: true },
      { onEvent: (e) => { count++; types.push(e.type); throw new Error('failure #' + count) } })`)
  t.assert.strictEqual(code, 0, `the child died: ${stderr}`)
  t.assert.ok(out.count > 11, `only ${out.count} events`)
  const mine = out.result.warnings.filter((w) => w.includes('onEvent'))
  t.assert.strictEqual(mine.length, 11, JSON.stringify(mine))
  t.assert.deepStrictEqual(mine.slice(0, 10), Array.from({ length: 10 }, (_, i) => `onEvent threw: failure #${i + 1}`))
  t.assert.strictEqual(mine[10], `… and ${out.count - 10} more onEvent failures`)
  await manager.close()
})

test('callbacks: a signal whose addEventListener throws rejects with INVALID_ARGUMENT and a readable message', async (t) => {
  const { manager } = makeManager({ server })
  const signal = { aborted: false, addEventListener() { throw new Error('listener bug') }, removeEventListener() {} }
  await rejectsWith(t, () => manager.executeTask({ prompt: 'x', projectId: 'p', userId: 'u' }, { signal }), 'INVALID_ARGUMENT', /signal\.addEventListener threw: listener bug/)
  // A throwing `aborted` getter is refused the same way, and nothing is left pending on the env.
  const getter = { get aborted() { throw new Error('aborted bug') }, addEventListener() {}, removeEventListener() {} }
  await rejectsWith(t, () => manager.compactSession({ sessionId: 'x', userId: 'u' }, { signal: getter }), 'INVALID_ARGUMENT', /signal\.aborted threw: aborted bug/)
  // The manager still works afterwards.
  server.reset()
  const ok = await manager.executeTask({ prompt: 'after', projectId: 'p', userId: 'u' })
  t.assert.strictEqual(ok.success, true, JSON.stringify(ok.error))
  await manager.close()
})
