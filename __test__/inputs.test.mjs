// How request values are read and checked (an adversarial review's findings on inputs): only own properties,
// hostile objects reject instead of throwing, no two different strings become one id, invisible
// ids and unprintable titles, model names and budgets, and a size cap on token counting. Every
// case here is refused before anything is spawned (the manager has no stand-in server).
import { test } from 'node:test'
import path from 'node:path'
import { addon, makeManager, rejectsWith, workDir } from './helpers.mjs'

const I = 'INVALID_ARGUMENT'

/** `call()` must return a promise (not throw) that rejects with INVALID_ARGUMENT. */
async function rejectsInvalid(t, call, label, messagePart) {
  let p
  try {
    p = call()
  } catch (e) {
    t.assert.fail(`${label}: threw synchronously (${e?.code}): ${e?.message}`)
  }
  t.assert.ok(p instanceof Promise, `${label}: no promise returned`)
  return rejectsWith(t, p, I, messagePart, `${label}:`)
}

async function setUp() {
  const { manager, dir } = makeManager()
  const { session } = await manager.getOrCreateSession({ projectId: 'p', userId: 'u' })
  return { manager, dir, session, base: { prompt: 'hi', projectId: 'p', userId: 'u' } }
}

test('F19: only own enumerable properties are request fields', async (t) => {
  const { manager, dir, session, base } = await setUp()
  // An inherited prompt is no prompt (maxBudgetUsd -1 would be named if the prompt were read).
  const inherited = Object.assign(Object.create({ prompt: 'inherited' }), { projectId: 'p', userId: 'u', maxBudgetUsd: -1 })
  await rejectsInvalid(t, () => manager.executeTask(inherited), 'inherited prompt', /prompt/)
  await rejectsInvalid(t, () => manager.listSessions(Object.create({ userId: 'u' })), 'inherited userId', /userId/)
  // Non-enumerable own properties are not read either.
  const hidden = Object.defineProperty({ userId: 'u' }, 'bogus', { value: 1, enumerable: false })
  t.assert.strictEqual((await manager.listSessions(hidden)).length, 1)

  const polluted = { permissionMode: 'acceptEdits', title: 'POLLUTED TITLE', bogusField: 1, encoding: 'cl100k_base' }
  const text = 'Die Straßenbahn fährt über die Brücke: 東京都の天気予報 ✓ {"a": [1, 2, 3]}'
  const o200k = addon.countTokens(text)
  t.assert.notStrictEqual(addon.countTokens(text, 'cl100k_base'), o200k, 'the two encodings count this text differently')
  try {
    Object.assign(Object.prototype, polluted)
    // An inherited unknown key does not make every call fail.
    t.assert.strictEqual((await manager.listSessions({ userId: 'u' })).length, 1)
    const child = await manager.fork({ sessionId: session.id, userId: 'u' })
    // (`child.title` itself would read the polluted prototype: the result has no own title.)
    t.assert.strictEqual(Object.hasOwn(child, 'title') ? child.title : null, null, 'an inherited title is not stored')
    const other = new addon.SessionManager({ databasePath: path.join(dir, 'other.db'), workingDirectory: workDir(dir) })
    await other.close()
    t.assert.strictEqual(addon.countTokens(text, {}), o200k, 'an inherited encoding is not an option')
    t.assert.strictEqual(await addon.countTokensAsync(text, {}), o200k)
    // An inherited permissionMode is not the task's: the error names the task's own bad field.
    Object.prototype.permissionMode = 'bypassPermissions'
    await rejectsInvalid(t, () => manager.executeTask({ ...base, maxBudgetUsd: -1 }), 'polluted permissionMode', /maxBudgetUsd/)
  } finally {
    for (const k of Object.keys(polluted)) delete Object.prototype[k]
  }
  await manager.close()
})

test('F21: throwing getters, throwing Proxy traps and revoked Proxies reject with INVALID_ARGUMENT', async (t) => {
  const { manager, session } = await setUp()
  const sid = session.id
  const hostile = () => {
    const revocable = Proxy.revocable({ userId: 'u' }, {})
    revocable.revoke()
    return [
      ['a throwing getter', Object.defineProperty({ userId: 'u' }, 'projectId', { enumerable: true, get: () => { throw new Error('getter boom') } }), /getter boom/],
      ['a throwing ownKeys trap', new Proxy({}, { ownKeys: () => { throw new Error('ownKeys boom') } }), /ownKeys boom/],
      ['a throwing get trap', new Proxy({ userId: 'u' }, { get: () => { throw new Error('get boom') } }), /get boom/],
      ['a revoked Proxy', revocable.proxy, /revoked/],
      ['a throwing getter deeper down', { userId: 'u', nested: { get x() { throw new Error('deep boom') } } }, /deep boom/],
      ['a thrown non-Error', Object.defineProperty({}, 'userId', { enumerable: true, get: () => { throw 'plain string boom' } }), /plain string boom/],
    ]
  }
  const methods = {
    listSessions: (h) => manager.listSessions(h),
    getOrCreateSession: (h) => manager.getOrCreateSession(h),
    startFresh: (h) => manager.startFresh(h),
    cleanupSessions: (h) => manager.cleanupSessions(h),
    fork: (h) => manager.fork(h),
    executeTask: (h) => manager.executeTask(h),
    compactSession: (h) => manager.compactSession(h),
    'deleteSession options': (h) => manager.deleteSession(sid, 'u', h),
    'getSessionContext options': (h) => manager.getSessionContext(sid, 'u', h),
    'getMessages options': (h) => manager.getMessages(sid, 'u', h),
    'estimatePromptTokens options': (h) => manager.estimatePromptTokens(sid, 'u', 'hi', h),
    'getSession sessionId': (h) => manager.getSession(h, 'u'),
    'getSession userId': (h) => manager.getSession(sid, h),
    'archiveSession userId': (h) => manager.archiveSession(sid, h),
    'listTasks userId': (h) => manager.listTasks(sid, h),
    'listCompactions sessionId': (h) => manager.listCompactions(h, 'u'),
    'estimatePromptTokens prompt': (h) => manager.estimatePromptTokens(sid, 'u', h),
    'countTokensAsync options': (h) => addon.countTokensAsync('hi', h),
    'countTokensAsync text': (h) => addon.countTokensAsync(h),
  }
  for (const [name, call] of Object.entries(methods)) {
    for (const [what, h, message] of hostile()) {
      await rejectsInvalid(t, () => call(h), `${name} with ${what}`, message)
    }
  }
  // Synchronous functions throw, with the code.
  for (const [what, h, message] of hostile()) {
    t.assert.throws(() => addon.countTokens('hi', h), (e) => e.code === I && message.test(e.message), `countTokens with ${what}`)
    t.assert.throws(
      () => new addon.SessionManager(h),
      (e) => e instanceof Error && e.code === I && message.test(e.message),
      `constructor with ${what}`,
    )
  }
  // Nothing was left pending: the manager still works.
  t.assert.strictEqual((await manager.listSessions({ userId: 'u' })).length, 1)
  await manager.close()
})

test('F21: executeTask/compactSession options ({ onEvent, signal }) that throw reject with INVALID_ARGUMENT', async (t) => {
  const { manager, session, base } = await setUp()
  const revocable = Proxy.revocable({}, {})
  revocable.revoke()
  const cases = [
    ['a throwing onEvent getter', Object.defineProperty({}, 'onEvent', { enumerable: true, get: () => { throw new Error('hook boom') } }), /onEvent/],
    ['a throwing signal getter', Object.defineProperty({}, 'signal', { enumerable: true, get: () => { throw new Error('hook boom') } }), /signal/],
    // Options are read as own properties: the trap that runs is getOwnPropertyDescriptor.
    ['a throwing getOwnPropertyDescriptor trap', new Proxy({}, { getOwnPropertyDescriptor: () => { throw new Error('hook boom') } }), /options/],
    ['a revoked Proxy', revocable.proxy, /options/],
  ]
  for (const [what, options, message] of cases) {
    await rejectsInvalid(t, () => manager.executeTask({ ...base, maxTurns: 0 }, options), `executeTask with ${what}`, message)
    await rejectsInvalid(t, () => manager.compactSession({ sessionId: session.id, userId: 'u' }, options), `compactSession with ${what}`, message)
  }
  await manager.close()
})

test('F20: strings with unpaired surrogates are refused, never merged into U+FFFD', async (t) => {
  const { manager, session } = await setUp()
  const { session: alice } = await manager.getOrCreateSession({ projectId: 'p', userId: 'alice\uFFFD' })
  for (const bad of ['alice\uD800', 'alice\uDBFF', 'alice\uDC00', '\uDFFFalice', 'a\uDC00\uD800']) {
    await rejectsInvalid(t, () => manager.getOrCreateSession({ projectId: 'p', userId: bad }), `userId ${escape(bad)}`, /userId.*surrogate/)
    await rejectsInvalid(t, () => manager.listSessions({ userId: bad }), `listSessions ${escape(bad)}`, /userId.*surrogate/)
    await rejectsInvalid(t, () => manager.getSession(alice.id, bad), `getSession ${escape(bad)}`, /userId.*surrogate/)
    await rejectsInvalid(t, () => manager.getOrCreateSession({ projectId: `p${bad}`, userId: 'u' }), `projectId ${escape(bad)}`, /projectId.*surrogate/)
    await rejectsInvalid(t, () => manager.fork({ sessionId: session.id, userId: 'u', title: `t ${bad}` }), `title ${escape(bad)}`, /title.*surrogate/)
    await rejectsInvalid(t, () => manager.getSession(`${session.id}${bad}`, 'u'), `sessionId ${escape(bad)}`, /sessionId/)
  }
  // Well-formed strings, including a real U+FFFD and a surrogate pair, are fine.
  t.assert.strictEqual((await manager.getSession(alice.id, 'alice\uFFFD')).id, alice.id)
  const rocket = await manager.getOrCreateSession({ projectId: 'p\u{1F680}', userId: 'u\u{1F680}' })
  t.assert.strictEqual(rocket.session.userId, 'u\u{1F680}')
  // Free text keeps TextEncoder's reading (U+FFFD).
  const estimate = await manager.estimatePromptTokens(session.id, 'u', 'half a pair \uD83D')
  t.assert.ok(estimate.tokens > 0)
  t.assert.strictEqual(addon.countTokens('x\uD800', { encoding: undefined }), addon.countTokens('x\uFFFD'))
  await manager.close()
})

test('F22: ids need a visible character; titles are one line with no bidi controls', async (t) => {
  const { manager, session, base } = await setUp()
  const invisible = ['\u200B', '\uFEFF', '\u00AD', '\u2060\u200D', ' \u200B ', '\u200E\u200F', '\u2061\u2062\u2063\u2064', '\u200C\t']
  for (const bad of invisible) {
    await rejectsInvalid(t, () => manager.getOrCreateSession({ projectId: 'p', userId: bad }), `userId ${escape(bad)}`, /userId/)
    await rejectsInvalid(t, () => manager.getOrCreateSession({ projectId: bad, userId: 'u' }), `projectId ${escape(bad)}`, /projectId/)
    await rejectsInvalid(t, () => manager.listSessions({ userId: bad }), `listSessions ${escape(bad)}`, /userId/)
    await rejectsInvalid(t, () => manager.executeTask({ ...base, userId: bad, forkSession: true }), `executeTask userId ${escape(bad)}`, /userId/)
  }
  const badTitles = ['two\nlines', 'cr\rhere', 'tab\there', '\u001b[31mred\u001b[0m', 'bell\u0007', 'c1\u0085', 'abc\u202Efdp.exe', '\u202Aembedded', '\u2066isolate\u2069', 'x\u2068']
  for (const title of badTitles) {
    await rejectsInvalid(t, () => manager.fork({ sessionId: session.id, userId: 'u', title }), `fork title ${escape(title)}`, /title/)
    await rejectsInvalid(t, () => manager.executeTask({ ...base, title, forkSession: true }), `executeTask title ${escape(title)}`, /title/)
  }
  for (const title of ['Résumé — v2 🚀', '日本語のタイトル', 'a\u200Bb']) {
    t.assert.strictEqual((await manager.fork({ sessionId: session.id, userId: 'u', title })).title, title)
  }
  // Visible ids with a bidi control, a zero-width character or a BOM are refused too, as titles are.
  for (const bad of ['\u200Bp', 'p\uFEFF', 'bob\u202Eexe', '\u202Ax', 'x\u2066y\u2069', 'a\u200Db', 'a\u200E']) {
    await rejectsInvalid(t, () => manager.getOrCreateSession({ projectId: bad, userId: 'u' }), `projectId ${escape(bad)}`, /projectId .*U\+/)
    await rejectsInvalid(t, () => manager.getOrCreateSession({ projectId: 'p', userId: bad }), `userId ${escape(bad)}`, /userId .*U\+/)
    await rejectsInvalid(t, () => manager.executeTask({ ...base, projectId: bad }), `executeTask projectId ${escape(bad)}`, /projectId/)
  }
  t.assert.strictEqual((await manager.getOrCreateSession({ projectId: 'p\u2060q', userId: 'u' })).session.projectId, 'p\u2060q')
  await manager.close()
})

test('F22/§5: model names and maxBudgetUsd', async (t) => {
  const { manager, dir, base } = await setUp()
  // The field after them (maxTurns / compactThreshold) is invalid: the error names the first
  // field refused, so a good value shows as the later field's error.
  const models = ['claude-sonnet-4-5-20250929', 'sonnet', 'us.anthropic.claude-3-7-sonnet-20250219-v1:0', 'claude-opus-4-1[1m]', 'a'.repeat(128)]
  for (const model of models) {
    await rejectsInvalid(t, () => manager.executeTask({ ...base, model, fallbackModel: model, maxTurns: 0 }), `model ${model}`, /maxTurns/)
  }
  const badModels = ['sonnet --print', 'opus\tX', '-x', '--dangerously-skip-permissions', ' sonnet', 'sonnet\n', 'sönnet', 'a'.repeat(129), '.', 'x;rm']
  for (const model of badModels) {
    await rejectsInvalid(t, () => manager.executeTask({ ...base, model, maxTurns: 0 }), `model ${escape(model)}`, /^model must be a model name/)
    await rejectsInvalid(t, () => manager.executeTask({ ...base, fallbackModel: model, maxTurns: 0 }), `fallbackModel ${escape(model)}`, /^fallbackModel must be a model name/)
  }
  for (const defaultModel of ['sonnet --print', 'opus\tX']) {
    t.assert.throws(
      () => new addon.SessionManager({ databasePath: path.join(dir, 'm.db'), workingDirectory: workDir(dir), defaultModel }),
      (e) => e.code === I && /defaultModel/.test(e.message),
      `defaultModel ${escape(defaultModel)}`,
    )
  }
  const ok = new addon.SessionManager({ databasePath: path.join(dir, 'm.db'), workingDirectory: workDir(dir), defaultModel: 'claude-opus-4-1[1m]' })
  await ok.close()

  for (const maxBudgetUsd of [0.0001, 0.25, 10000]) {
    await rejectsInvalid(t, () => manager.executeTask({ ...base, maxBudgetUsd, compactThreshold: 0 }), `budget ${maxBudgetUsd}`, /compactThreshold/)
  }
  for (const maxBudgetUsd of [1e-300, 5e-324, 0.00009, 0, -0, -1, 10000.01, 1e300]) {
    await rejectsInvalid(t, () => manager.executeTask({ ...base, maxBudgetUsd, compactThreshold: 0 }), `budget ${maxBudgetUsd}`, /maxBudgetUsd/)
  }
  await manager.close()
})

test('F23: countTokens refuses texts over 64 MiB before counting', async (t) => {
  const MiB = 1024 * 1024
  const ascii = 'x'.repeat(65 * MiB) // 65 Mi UTF-16 units and bytes
  const wide = '\u20AC'.repeat(23 * MiB) // 23 Mi units, 69 MiB of UTF-8
  for (const [name, text] of [['65 MiB of ASCII', ascii], ['69 MiB of UTF-8 in 23 Mi units', wide]]) {
    for (const options of [undefined, 'cl100k_base', { encoding: 'o200k_base' }, { encoding: undefined }]) {
      const label = `${name}, options ${JSON.stringify(options)}`
      await rejectsInvalid(t, () => addon.countTokensAsync(text, options), label, /64 MiB/)
      t.assert.throws(() => addon.countTokens(text, options), (e) => e.code === I && /64 MiB/.test(e.message), label)
    }
  }
  // Below the cap, large texts are still counted.
  const big = 'hello world '.repeat(MiB / 12)
  t.assert.strictEqual(await addon.countTokensAsync(big), addon.countTokens(big))
})
