// A "node" of the scale-out tests: a Node process with its own SessionManager (working root,
// CLAUDE_CONFIG_DIR folders, state folder) on a shared PostgreSQL schema, driven over its
// stdin/stdout (fixtures/node-child.mjs). Used by nodes.test.mjs and nodes-budget.test.mjs.
import fs from 'node:fs'
import path from 'node:path'
import readline from 'node:readline'
import { spawn } from 'node:child_process'
import { PG_URL } from './helpers.mjs'

const FIXTURE = new URL('./fixtures/node-child.mjs', import.meta.url).pathname

/** `promise`, or a failure after `ms` (a node that never answers must not hang the run). */
export function within(promise, what, ms = 60000) {
  let timer
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)))
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** A node: a child process with a manager, and `call(method, ...args)` over its stdin/stdout. */
export async function startNode(name, { root, schema, server, ttl, databaseUrl = PG_URL, options: extra = {} }) {
  const dir = path.join(root, name)
  const work = path.join(dir, 'work')
  fs.mkdirSync(work, { recursive: true })
  fs.mkdirSync(path.join(dir, 'claude'), { recursive: true })
  fs.mkdirSync(path.join(dir, 'home'), { recursive: true })
  const options = {
    databaseUrl,
    databaseSchema: schema,
    workingDirectory: work,
    stateDirectory: path.join(dir, 'state'),
    tenantConfigRoot: path.join(dir, 'claude'),
    sandbox: 'none',
    nodeId: name,
    leaseTtlMs: ttl,
    // Cold tasks: this scenario follows each task's CLI by its argv across nodes (killed, frozen,
    // gone). Warm processes across nodes: warm.test.mjs ("another node", "warm on PostgreSQL").
    warmIdleMs: 0,
    // A HOME of its own: without the sandbox the CLI's Bash is a login shell, which would read
    // this machine's profile (e.g. a pyenv rehash waiting on its lock) as the server's user.
    env: { ...server.env(), HOME: path.join(dir, 'home') },
    ...extra,
  }
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const pending = new Map()
  const started = new Map()
  let ready
  let failed
  const isReady = new Promise((resolve, reject) => ((ready = resolve), (failed = reject)))
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const m = JSON.parse(line)
    if (m.ready) return ready()
    if (m.event === 'task_started') return started.get(m.id)?.(m.taskId)
    const p = pending.get(m.id)
    pending.delete(m.id)
    if (m.ok) p.resolve(m.value)
    else p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }))
  })
  child.on('exit', () => {
    failed(new Error(`node ${name} exited before it was ready`))
    for (const p of pending.values()) p.reject(new Error(`node ${name} exited`))
    pending.clear()
  })
  await isReady
  let next = 0
  const node = {
    name,
    child,
    work,
    configRoot: options.tenantConfigRoot,
    /** Calls a manager method; `onStart(taskId)` for executeTask's task_started. */
    call(method, args, onStart) {
      const id = next++
      if (onStart) started.set(id, onStart)
      const answer = new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject })
        child.stdin.write(JSON.stringify({ id, method, args }) + '\n')
      })
      return within(answer, `${name}.${method}`, 120000)
    },
    task(prompt, extra = {}, onStart) {
      return node.call('executeTask', [{ prompt, projectId: 'p', userId: 'u', ...extra }], onStart)
    },
  }
  return node
}

