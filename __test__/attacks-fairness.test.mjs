// M5 of the second attack round: tasks waiting for a permission answer nobody gives must not hold
// the process's task slots (`maxConcurrentTasks`) against other users.
import { test } from 'node:test'
import crypto from 'node:crypto'
import path from 'node:path'
import fs from 'node:fs'
import { makeManager, startStandInServer, until } from './helpers.mjs'

test("two of one user's tasks waiting on unanswered permission requests do not keep another user from running", async (t) => {
  // Every prompt of mallory's asks for a Bash run; the victim's is answered with text.
  const server = await startStandInServer({
    defaultReply: (req) =>
      JSON.stringify(req.body.messages).includes('mallory-') && !JSON.stringify(req.body.messages).includes('tool_result')
        ? { toolUse: { name: 'Bash', input: { command: `mkdir asked-folder`, description: "make it" } } }
        : { text: 'answered' },
  })
  const { manager, work } = makeManager({ server, warmIdleMs: 600_000, maxConcurrentTasks: 2, queueTimeoutMs: 8000, permissionTimeoutMs: 120_000 })
  t.after(async () => {
    await manager.close()
    await server.close()
  })
  const asked = []
  const never = (tool, input, { signal }) => {
    asked.push(tool)
    return new Promise((resolve) => signal.addEventListener('abort', () => resolve({ behavior: 'deny', message: 'gone' })))
  }
  const stuck = [1, 2].map((i) =>
    manager.executeTask({ prompt: `mallory-${i} ${crypto.randomUUID()}`, projectId: `p${i}`, userId: 'mallory', permissionMode: 'default' }, { canUseTool: never }),
  )
  stuck.forEach((p) => p.catch(() => {}))
  await until('both permission requests', () => asked.length >= 2 && asked)
  const r = await manager.executeTask({ prompt: 'hello', projectId: 'p', userId: 'victim' })
  t.assert.strictEqual(r.success, true, `the victim's task did not run: ${JSON.stringify(r.error)}`)
  t.assert.strictEqual(r.result, 'answered')
  t.assert.ok(fs.existsSync(work) && path.isAbsolute(work))
})
