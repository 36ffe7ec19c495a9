// The Next.js stream route and the turns a warm CLI runs by itself (a background job finishing):
// their lines reach the browser inside a `background_activity` event, and must be made public
// like every other event (second test audit, M11). The real CLI against the stand-in API.
import { test, before, after } from 'node:test'
import { createRequire } from 'node:module'
import { eventually, makeManager, parseSse, startStandInServer } from './helpers.mjs'

const require = createRequire(import.meta.url)
const { createClaudeRoutes } = require('../next/index.js')

const BASE = 'http://localhost/api/claude'
/** What the route must not send the browser (next/index.js SERVER_DETAIL_FIELDS). */
const SERVER_DETAIL_FIELDS = ['cwd', 'memory_paths', 'messaging_socket_path', 'transcript_path', 'output_file', 'plugins', 'tools', 'mcp_servers', 'slash_commands', 'skills', 'agents', 'claude_code_version', 'apiKeySource', 'output_style']
const INIT_EVENT_FIELDS = ['type', 'subtype', 'session_id', 'model', 'permissionMode', 'uuid']

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

function post(body) {
  return new Request(`${BASE}/stream`, { method: 'POST', headers: { 'x-user': 'alice', 'content-type': 'application/json' }, body: JSON.stringify(body) })
}

test('next background: the lines of a turn the warm CLI ran by itself reach the browser without server details (M11)', async (t) => {
  server.reset()
  const made = makeManager({ server, warmIdleMs: 600_000 })
  const { manager, configDir } = made
  t.after(() => manager.close())
  const routes = createClaudeRoutes({ getUserId: (req) => req.headers.get('x-user'), manager, onError: null, taskDefaults: { allowedTools: ['Bash'] } })
  const stream = async (body) => parseSse(await (await routes.stream.POST(post({ projectId: 'bg', ...body }))).text()).filter((e) => e.event === 'message').map((e) => e.data)

  // Task 1 starts a background job; the CLI runs a turn of its own when it finishes.
  server.enqueue(
    { toolUse: { name: 'Bash', input: { command: `python3 -c "import time; time.sleep(1.5)" # bg-${process.pid}`, run_in_background: true, description: 'wait' } } },
    { text: 'started it' },
  )
  const first = await stream({ prompt: 'start a background job' })
  const sessionId = first.find((e) => e.type === 'task_started')?.sessionId
  t.assert.ok(sessionId, JSON.stringify(first.map((e) => e.type)))
  const calls = () => server.requests.filter((x) => x.path === '/v1/messages')
  const before = calls().length
  const refusedBefore = manager.info().proxyRefused
  server.enqueue({ text: 'the answer to two', delayMs: 2500 })
  const second = await stream({ prompt: 'two', sessionId })
  const notified = () => calls().slice(before).some((c) => JSON.stringify(c.body.messages).includes('SYSTEM NOTIFICATION'))
  t.assert.ok(await eventually(() => notified() || manager.info().proxyRefused > refusedBefore, 10_000), 'control: a notification turn ran')
  const third = await stream({ prompt: 'three', sessionId })

  const activity = [...second, ...third].filter((e) => e.type === 'background_activity')
  t.assert.ok(activity.length > 0, `control: a background_activity event reached the browser: ${JSON.stringify([...second, ...third].map((e) => e.type))}`)
  const lines = activity.flatMap((e) => e.events)
  t.assert.ok(lines.length > 0, 'control: it carries the CLI\'s lines')
  for (const line of lines) {
    if (line.type === 'system' && line.subtype === 'init') {
      const extra = Object.keys(line).filter((k) => !INIT_EVENT_FIELDS.includes(k))
      t.assert.deepStrictEqual(extra, [], `an init line inside background_activity carries ${extra.join(', ')}`)
      continue
    }
    const leaked = Object.keys(line).filter((k) => SERVER_DETAIL_FIELDS.includes(k))
    t.assert.deepStrictEqual(leaked, [], `a ${line.type}/${line.subtype ?? ''} line inside background_activity carries ${leaked.join(', ')}`)
  }
  const text = JSON.stringify(activity)
  const { stateDirectory } = manager.info()
  for (const p of [stateDirectory, configDir]) t.assert.ok(!text.includes(p), `background_activity names ${p}`)
})
