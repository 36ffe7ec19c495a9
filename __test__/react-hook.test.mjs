// claude-session-manager/react: the hook itself, run in Node under a minimal React (useState,
// useRef, useCallback, useEffect with re-renders and dependency checks) against the real Next.js
// routes, the real CLI and the stand-in API. The hook's `fetch` option delays the history answer
// (the `messages` action): a prompt sent before it arrives must stay on screen, with its meter.
import { test, before, after } from 'node:test'
import Module, { createRequire } from 'node:module'
import { makeManager, startStandInServer } from './helpers.mjs'

const require = createRequire(import.meta.url)

/** Just enough React to run one hook: state, refs, memoised callbacks and effects, re-rendered
 * in a microtask after a state change. */
function fakeReact() {
  let current = null
  const changed = (a, b) => !a || !b || a.length !== b.length || a.some((x, k) => !Object.is(x, b[k]))
  const slot = () => {
    const i = current.i++
    return [current, i]
  }
  function renderHook(fn) {
    const inst = { hooks: [], i: 0, result: null, scheduled: false, unmounted: false, renders: 0 }
    const render = () => {
      current = inst
      inst.i = 0
      inst.effects = []
      inst.result = fn()
      inst.renders++
      current = null
      for (const { hook, effect } of inst.effects) {
        if (typeof hook.cleanup === 'function') hook.cleanup()
        hook.cleanup = effect()
      }
    }
    inst.rerender = () => {
      if (inst.scheduled || inst.unmounted) return
      inst.scheduled = true
      queueMicrotask(() => {
        inst.scheduled = false
        if (!inst.unmounted) render()
      })
    }
    inst.unmount = () => {
      inst.unmounted = true
      for (const h of inst.hooks) if (h && typeof h.cleanup === 'function') h.cleanup()
    }
    render()
    return inst
  }
  const useState = (init) => {
    const [inst, i] = slot()
    if (!inst.hooks[i]) {
      const h = { value: typeof init === 'function' ? init() : init }
      h.set = (v) => {
        const next = typeof v === 'function' ? v(h.value) : v
        if (Object.is(next, h.value)) return
        h.value = next
        inst.rerender()
      }
      inst.hooks[i] = h
    }
    return [inst.hooks[i].value, inst.hooks[i].set]
  }
  const useRef = (init) => {
    const [inst, i] = slot()
    if (!inst.hooks[i]) inst.hooks[i] = { current: init }
    return inst.hooks[i]
  }
  const useCallback = (fn, deps) => {
    const [inst, i] = slot()
    if (!inst.hooks[i] || changed(inst.hooks[i].deps, deps)) inst.hooks[i] = { fn, deps }
    return inst.hooks[i].fn
  }
  const useEffect = (effect, deps) => {
    const [inst, i] = slot()
    const h = (inst.hooks[i] ??= { deps: undefined, ran: false })
    if (!h.ran || changed(h.deps, deps)) {
      h.ran = true
      h.deps = deps
      inst.effects.push({ hook: h, effect })
    }
  }
  return { useState, useRef, useCallback, useEffect, renderHook }
}

// The hook runs its client code only where `window` and `document` exist, and requires 'react'.
const React = fakeReact()
globalThis.window ??= globalThis
globalThis.document ??= {}
const resolve = Module._resolveFilename
Module._resolveFilename = function (request, ...rest) {
  return request === 'react' ? 'fake-react' : resolve.call(this, request, ...rest)
}
require.cache['fake-react'] = { id: 'fake-react', filename: 'fake-react', loaded: true, exports: React }
const { useClaudeSession } = require('../react/index.js')
const { createClaudeRoutes } = require('../next/index.js')

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

/** A `fetch` for the hook that calls the routes directly, as `user`. The history answer (the
 * `messages` action) waits for `release()`: with `readLate`, its request reaches the server
 * only then (the transcript is read after what happened meanwhile); else at once (the answer
 * was read before, and arrives late). */
function routesFetch(routes, user, { readLate = false } = {}) {
  let release
  const released = new Promise((r) => (release = r))
  const seen = []
  const fetch = async (url, init) => {
    const request = new Request(`http://localhost${url}`, { ...init, headers: { ...init.headers, 'x-user': user } })
    const [name] = new URL(request.url).pathname.replace('/api/claude/', '').split('/')
    const body = init.body ? JSON.parse(init.body) : null
    const history = Boolean(body && body.action === 'messages')
    seen.push(body && body.action ? `${name}:${body.action}` : name)
    if (history && readLate) await released
    const response = await routes[name][request.method](request)
    if (history && !readLate) await released
    return response
  }
  return { fetch, release, seen }
}

async function until(what, check, ms = 30_000) {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Routes over a new manager, a session of alice's with one exchange, and the hook mounted on
 * it with its history answer held (see routesFetch). */
async function mountWithHeldHistory(t, fetchOptions) {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  const earlier = await manager.executeTask({ prompt: 'the earlier prompt', projectId: 'p', userId: 'alice' })
  t.assert.strictEqual(earlier.success, true, JSON.stringify(earlier.error))
  const net = routesFetch(routes, 'alice', fetchOptions)
  const hook = React.renderHook(() => useClaudeSession({ projectId: 'p', sessionId: earlier.sessionId, fetch: net.fetch }))
  t.after(() => hook.unmount())
  await until('the history request', () => net.seen.includes('session:messages'))
  t.assert.deepStrictEqual(hook.result.messages, [], 'no history yet')
  return { hook, net }
}

/** Releases the history and returns the roles and texts on screen once it is there. */
async function shownAfterRelease(hook, net) {
  net.release()
  await until('the history on screen', () => hook.result.messages.length >= 4)
  await new Promise((r) => setTimeout(r, 200))
  return hook.result.messages.map((m) => [m.role, m.content])
}

test('react hook: a prompt sent before the session history has loaded stays, after that history, with its meter', async (t) => {
  const { hook, net } = await mountWithHeldHistory(t)
  const result = await hook.result.send('the new prompt')
  t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
  await until('the reply on screen', () => hook.result.messages.some((m) => m.role === 'assistant' && m.status === 'done'))
  t.assert.ok(hook.result.context && hook.result.context.estimatedTokens > 0, 'the meter shows the task')
  const meter = hook.result.context

  // The history answer arrives late: it goes before the new exchange, which stays.
  const shown = await shownAfterRelease(hook, net)
  t.assert.deepStrictEqual(shown.map(([role]) => role), ['user', 'assistant', 'user', 'assistant'], JSON.stringify(shown))
  t.assert.strictEqual(shown[0][1], 'the earlier prompt')
  t.assert.strictEqual(shown[2][1], 'the new prompt')
  t.assert.match(shown[3][1], /the new prompt/)
  t.assert.strictEqual(hook.result.messages[3].status, 'done')
  t.assert.deepStrictEqual(hook.result.context, meter, 'the older meter answer did not replace the task\'s')
  t.assert.strictEqual(hook.result.error, null)
})

test('react hook: a history answer that already holds the prompt sent while it loaded shows the exchange once', async (t) => {
  const { hook, net } = await mountWithHeldHistory(t, { readLate: true })
  const result = await hook.result.send('the new prompt')
  t.assert.strictEqual(result.success, true, JSON.stringify(result.error))
  const shown = await shownAfterRelease(hook, net)
  t.assert.deepStrictEqual(shown.map(([role]) => role), ['user', 'assistant', 'user', 'assistant'], JSON.stringify(shown))
  t.assert.deepStrictEqual([shown[0][1], shown[2][1]], ['the earlier prompt', 'the new prompt'])
})

test('react hook: a reload mid-reply attaches to the running task, which was not stopped; stop() after a reload stops it; a dropped stream resumes from its last id', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  const words = 'one two three four five six seven eight nine ten'
  const tasks = async (sessionId) => manager.listTasks(sessionId, 'alice')
  const reply = (hook) => hook.result.messages.filter((m) => m.role === 'assistant').at(-1)
  const mount = (fetch) => {
    const hook = React.renderHook(() => useClaudeSession({ projectId: 'reload', fetch: fetch || routesFetch(routes, 'alice').fetch, loadHistory: false }))
    t.after(() => hook.unmount())
    return hook
  }

  // 1. A reply streams; the page reloads; the new page shows the rest of it, and it finishes.
  server.enqueue({ text: words, chunkDelayMs: 300 })
  const first = mount()
  await until('the session', () => first.result.sessionId)
  const sessionId = first.result.sessionId
  first.result.send('a long one')
  await until('some words on the first page', () => reply(first)?.content.length > 0)
  first.unmount()
  const second = mount()
  await until('the second page to attach', () => second.result.isStreaming)
  await until('the reply to finish on the second page', () => reply(second)?.status === 'done')
  t.assert.strictEqual(reply(second).content, words)
  t.assert.strictEqual((await tasks(sessionId)).at(-1).status, 'succeeded', 'the reload did not stop the task')

  // 2. stop() on a page that only attached (after a reload) stops the task on the server.
  server.enqueue({ text: 'slow '.repeat(60), chunkDelayMs: 150 })
  const before = second.result.messages.length
  second.result.send('another long one')
  await until('the task to run', () => second.result.messages.length > before && reply(second)?.content.length > 0)
  second.unmount()
  const third = mount()
  await until('the third page to attach', () => third.result.isStreaming)
  third.result.stop()
  for (let i = 0; i < 300 && (await tasks(sessionId)).at(-1).status === 'running'; i++) await new Promise((r) => setTimeout(r, 50))
  t.assert.strictEqual((await tasks(sessionId)).at(-1).status, 'aborted')
  third.unmount()

  // 3. The connection drops midway: the hook resumes from the last event id, every word once.
  server.enqueue({ text: words, chunkDelayMs: 100 })
  const inner = routesFetch(routes, 'alice').fetch
  let cut = false
  const flaky = async (url, init) => {
    const res = await inner(url, init)
    if (cut || init.method !== 'POST' || !url.endsWith('/stream')) return res
    cut = true
    const reader = res.body.getReader()
    let n = 0
    const body = new ReadableStream({
      async pull(c) {
        const { value, done } = await reader.read()
        if (done || ++n > 6) {
          reader.cancel()
          return c.error(new TypeError('network error'))
        }
        c.enqueue(value)
      },
    })
    return new Response(body, { status: res.status, headers: res.headers })
  }
  const fourth = mount(flaky)
  await until('the session', () => fourth.result.sessionId)
  const result = await fourth.result.send('once more')
  t.assert.ok(cut)
  t.assert.strictEqual(result?.success, true, JSON.stringify(result))
  t.assert.strictEqual(reply(fourth).content, words)
})

test('react hook: editMessage forks at the message before and switches; branches lead back; regenerate; rewind undoes a turn', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null })
  const net = routesFetch(routes, 'alice')
  net.release()
  const hook = React.renderHook(() => useClaudeSession({ projectId: 'p', fetch: net.fetch }))
  t.after(() => hook.unmount())
  await until('the session', () => hook.result.sessionId)
  for (const prompt of ['one', 'two']) t.assert.ok((await hook.result.send(prompt)).success)
  const original = hook.result.sessionId
  const second = hook.result.messages.filter((m) => m.role === 'user')[1]
  // Edit the second prompt (a local id: the hook finds it on the server by its place).
  const edited = await hook.result.editMessage(second.id, 'two, edited')
  t.assert.ok(edited && edited.success, JSON.stringify(hook.result.error))
  t.assert.strictEqual(edited.result, 'Echo #2: two, edited', 'the model saw the first exchange and the edited text')
  await until('the fork on screen', () => hook.result.sessionId === edited.sessionId && hook.result.messages.length === 4 && hook.result.branches.length === 1)
  t.assert.notStrictEqual(edited.sessionId, original)
  t.assert.deepStrictEqual(hook.result.messages.map((m) => m.content), ['one', 'Echo #1: one', 'two, edited', 'Echo #2: two, edited'])
  t.assert.deepStrictEqual(hook.result.branches.map((b) => [b.relation, b.sessionId]), [['parent', original]])

  // Back to the old branch: its messages, and the fork listed at the message it branched at.
  await hook.result.selectSession(original)
  await until('the old branch', () => hook.result.messages.length === 4 && hook.result.messages[2].content === 'two')
  const [fork] = hook.result.branches
  t.assert.deepStrictEqual([fork.relation, fork.sessionId, fork.atMessageId], ['fork', edited.sessionId, hook.result.messages[1].id])

  // regenerate: a new answer to the last prompt, in another fork.
  const again = await hook.result.regenerate()
  t.assert.ok(again && again.success)
  t.assert.strictEqual(again.result, 'Echo #2: two')
  t.assert.notStrictEqual(again.sessionId, original)

  // rewind: undo the last turn in place.
  await hook.result.selectSession(original)
  await until('the old branch again', () => hook.result.messages.length === 4)
  const undone = await hook.result.rewind(hook.result.messages[2].id)
  t.assert.ok(undone, JSON.stringify(hook.result.error))
  t.assert.strictEqual(undone.droppedMessages, 2)
  await until('the undone turn gone', () => hook.result.messages.length === 2)
  t.assert.strictEqual(hook.result.sessionId, original)
  t.assert.strictEqual(hook.result.error, null)
})
