// Attacks on the API-key proxy and on what the agent's environment holds, with the real CLI
// against the stand-in API: what the proxy forwards, how long a token answers, the background
// scheduling tools, the server's other credentials.
import { test, before, after } from 'node:test'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { eventually, makeManager, processesMentioning, startStandInServer } from './helpers.mjs'
import { messageCalls, runBash, toolResults } from './attack-helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const mark = (name) => `${name}_${crypto.randomBytes(6).toString('hex')}`
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const MODEL_PATHS = ['/v1/messages', '/v1/messages/count_tokens']

/** Skips when the manager does not put a key proxy between the CLI and the API. */
function requireProxy(t, manager) {
  if (manager.info().apiKeyProxy) return true
  t.skip('the key proxy is off for this manager: nothing to attack')
  return false
}

test('proxy: an agent holding its task token reaches only the model calls (no Files, Batches, Models, admin or dot-segment paths)', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  if (!requireProxy(t, manager)) return
  const before = manager.info().proxyRefused
  const curl = (method, target) =>
    `echo "${method} ${target} -> $(curl -s --path-as-is -o /dev/null -w '%{http_code}' -X ${method} -H "x-api-key: $ANTHROPIC_API_KEY" -H 'content-type: application/json' --data-binary '{}' "$ANTHROPIC_BASE_URL${target}")"`
  const attempts = [
    ['GET', '/v1/models'],
    ['GET', '/v1/files'],
    ['DELETE', '/v1/files/file_0123'],
    ['POST', '/v1/messages/batches'],
    ['GET', '/v1/organizations/api_keys'],
    ['POST', '/v1/messages/../models'],
    ['POST', '/v1/messages/%2e%2e/models'],
    ['POST', '//v1/messages'],
    ['GET', '/v1/messages'],
  ]
  const { r, output } = await runBash(manager, server, [...attempts.map(([m, p]) => curl(m, p)), 'echo END'].join('; '))
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.match(output, /END/, 'the command ran')
  for (const [m, p] of attempts) {
    t.assert.match(output, new RegExp(`${m} ${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} -> (403|404)`), `${m} ${p} was not refused:\n${output}`)
  }
  const reached = server.requests.filter((q) => !MODEL_PATHS.includes(q.path))
  t.assert.deepStrictEqual(reached.map((q) => `${q.method} ${q.url}`), [], 'requests other than model calls reached the upstream')
  t.assert.ok(manager.info().proxyRefused >= before + attempts.length, `proxyRefused: ${manager.info().proxyRefused}`)
})

test('proxy: a warm CLI\'s token is refused between tasks: a call the agent left running in the background after its task is not served', async (t) => {
  server.reset()
  const { manager, work } = makeManager({ server, warmIdleMs: 600_000 })
  t.after(() => manager.close())
  if (!requireProxy(t, manager)) return
  const marker = mark('LATE_CALL')
  const body = path.join(work, 'late-body.json')
  const out = path.join(work, 'late.out')
  fs.writeFileSync(body, JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 5, messages: [{ role: 'user', content: marker }] }))
  // The call waits for a file the test makes once the task has ended (not a fixed time).
  const go = path.join(work, 'late-go')
  t.after(() => fs.writeFileSync(go, '')) // (the waiting call ends even if an assertion fails first)
  const late = `i=0; while [ ! -e ${go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; [ -e ${go} ] || exit 0; curl -s -o /dev/null -w '%{http_code}' -X POST -H "x-api-key: $ANTHROPIC_API_KEY" -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' --data-binary @${body} "$ANTHROPIC_BASE_URL/v1/messages" > ${out}.tmp 2>&1; mv ${out}.tmp ${out}`
  const { r, output } = await runBash(manager, server, `setsid -f sh -c '${late.replace(/'/g, `'\\''`)}' < /dev/null > /dev/null 2>&1; echo SCHEDULED`)
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.match(output, /SCHEDULED/)
  t.assert.ok(processesMentioning(r.sessionId).length > 0, 'the warm CLI (and so its token) outlives the task')
  fs.writeFileSync(go, '')
  t.assert.ok(await eventually(() => fs.existsSync(out), 20_000), 'the delayed call ran')
  const status = fs.readFileSync(out, 'utf8').trim()
  t.assert.strictEqual(status, '401', `the delayed call got ${status}`)
  await sleep(200)
  t.assert.ok(!messageCalls(server).some((q) => JSON.stringify(q.body).includes(marker)), 'the delayed call reached the upstream')
  t.assert.ok(processesMentioning(r.sessionId).length > 0, 'the CLI was still warm when the call was refused')
  // The next task on the same CLI is served again.
  const second = await manager.executeTask({ prompt: 'two', projectId: 'p', userId: 'mallory', sessionId: r.sessionId })
  t.assert.strictEqual(second.success, true, JSON.stringify(second.error))
  t.assert.strictEqual(second.result, 'Echo #2: two')
})

test('proxy: the background scheduling tools (CronCreate, ScheduleWakeup, RemoteTrigger) are disallowed unless allowBackgroundTools', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  const prompt = mark('CRON_PROMPT')
  server.enqueue({ toolUse: { name: 'CronCreate', input: { cron: '* * * * *', prompt, recurring: true } } }, { text: 'done' })
  const r = await manager.executeTask({ prompt: 'schedule it', projectId: 'p', userId: 'mallory', allowedTools: ['CronCreate', 'ScheduleWakeup'] })
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  const offered = messageCalls(server)[0].body.tools.map((x) => x.name)
  for (const name of ['CronCreate', 'ScheduleWakeup', 'RemoteTrigger']) t.assert.ok(!offered.includes(name), `${name} is offered to the model`)
  const [result] = toolResults(server)
  t.assert.ok(result !== undefined, 'the CLI answered the tool call')
  t.assert.doesNotMatch(result, /Scheduled|cron job|job id/i, `CronCreate ran:\n${result}`)
  t.assert.match(result, /No such tool|not available|disallowed|denied/i, result)

  // Opted in: the same call schedules a job (CronCreate is a deferred tool: callable by name,
  // not in the first request's list; ScheduleWakeup is listed).
  server.reset()
  const { manager: opted } = makeManager({ server, allowBackgroundTools: true })
  t.after(() => opted.close())
  server.enqueue({ toolUse: { name: 'CronCreate', input: { cron: '* * * * *', prompt, recurring: true } } }, { text: 'done' })
  await opted.executeTask({ prompt: 'schedule it', projectId: 'p', userId: 'mallory' })
  t.assert.ok(messageCalls(server)[0].body.tools.map((x) => x.name).includes('ScheduleWakeup'), 'allowBackgroundTools: true offers ScheduleWakeup')
  t.assert.match(toolResults(server)[0] ?? '', /Scheduled/, 'allowBackgroundTools: true lets CronCreate schedule a job')
})

/** Sets process environment variables (what the addon reads as the server's environment) for one test. */
function withProcessEnv(t, vars) {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  Object.assign(process.env, vars)
  t.after(() => {
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  })
}

test("proxy: the server's other credentials (admin key, Foundry key, OAuth token, custom headers) never reach the agent; the custom headers reach the API", async (t) => {
  server.reset()
  const secrets = {
    ANTHROPIC_ADMIN_KEY: mark('ADMINKEY'),
    ANTHROPIC_FOUNDRY_API_KEY: mark('FOUNDRYKEY'),
    CLAUDE_CODE_OAUTH_TOKEN: mark('OAUTHTOKEN'),
    CLAUDE_CODE_SESSION_ACCESS_TOKEN: mark('SESSIONTOKEN'),
  }
  const gateway = mark('GATEWAYSECRET')
  withProcessEnv(t, { ...secrets, ANTHROPIC_CUSTOM_HEADERS: `X-Gateway-Secret: ${gateway}` })
  const { manager } = makeManager({ server })
  t.after(() => manager.close())
  if (!requireProxy(t, manager)) return
  const pattern = [...Object.values(secrets), gateway, 'ADMIN_KEY', 'FOUNDRY', 'OAUTH', 'CUSTOM_HEADERS', 'SESSION_ACCESS'].join('|')
  const { r, output } = await runBash(
    manager,
    server,
    [
      `echo "dump works: $(env | grep -c '^ANTHROPIC_BASE_URL=')"`,
      `{ env; tr '\\0' '\\n' < /proc/self/environ; tr '\\0' '\\n' < /proc/$PPID/environ; for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done; } 2>/dev/null | grep -E '${pattern}' | sed 's/^/LEAK /'`,
      'echo END',
    ].join('; '),
  )
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.match(output, /dump works: 1/, output)
  t.assert.match(output, /END/)
  t.assert.doesNotMatch(output, /LEAK/, `credentials in the agent's environment:\n${output}`)
  for (const v of [...Object.values(secrets), gateway]) t.assert.ok(!output.includes(v))
  const calls = messageCalls(server)
  t.assert.ok(calls.length >= 2 && calls.every((q) => q.headers['x-gateway-secret'] === gateway), 'the custom header reached the API on every model call')
})

test('proxy: with only an OAuth token the CLI still goes through the proxy (Bearer and the OAuth beta upstream, a task token in the agent)', async (t) => {
  server.reset()
  const apiKey = server.env().ANTHROPIC_API_KEY
  const { manager } = makeManager({ server, env: { ...server.env(), ANTHROPIC_API_KEY: '', CLAUDE_CODE_OAUTH_TOKEN: apiKey } })
  t.after(() => manager.close())
  t.assert.strictEqual(manager.info().apiKeyProxy, true, 'the proxy is on with an OAuth token')
  const { r, output } = await runBash(manager, server, `env | grep -E '^(ANTHROPIC|CLAUDE_CODE)_' | grep -c '${apiKey}'; echo "oauth var: \${CLAUDE_CODE_OAUTH_TOKEN:-none}"; echo END`)
  t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  t.assert.match(output, /^0$/m, `the OAuth token is in the agent's environment:\n${output}`)
  t.assert.match(output, /oauth var: none/)
  const calls = messageCalls(server)
  t.assert.ok(calls.length >= 2)
  for (const q of calls) {
    t.assert.strictEqual(q.headers.authorization, `Bearer ${apiKey}`)
    t.assert.match(q.headers['anthropic-beta'] ?? '', /oauth-2025-04-20/)
    t.assert.strictEqual(q.headers['x-api-key'], undefined)
  }
})
