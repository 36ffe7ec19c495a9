// Section 6: pathological inputs — one "word" of megabytes (no whitespace, one character class,
// so the pre-tokenizer returns a single piece and BPE merges all of it at once), through
// countTokens, countTokensAsync and executeTask (whose prompt check counts a prompt longer than
// the context window before anything is stored or spawned). 4 MiB is the largest prompt
// executeTask takes; 64 MiB the largest text countTokensAsync takes. 4 MiB of prose is the
// reference. With `--baseline=<.node>` an older build runs the same inputs, interleaved.
import { createRequire } from 'node:module'
import { args, median, writeJson, machineLoad } from '../lib/stats.mjs'
import { addon, workspace } from '../lib/harness.mjs'
import { brownProse, cut } from '../lib/corpus.mjs'

const require = createRequire(import.meta.url)
const opt = args()
const quick = Boolean(opt.quick)
const ROUNDS = Number(opt.rounds ?? (quick ? 1 : 3))
const MiB = 1024 * 1024

const impls = [['addon', addon]]
if (opt.baseline) impls.push(['addon before', require(opt.baseline)])
for (const [, a] of impls) a.countTokens('warm up the vocabulary')

let seed = 12345
const letters = (n) => {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0
    b[i] = 97 + ((seed >>> 16) % 26)
  }
  return b.toString('latin1')
}
const inputs = [
  { name: '4 MiB word: one letter repeated', text: 'a'.repeat(4 * MiB), sync: true },
  { name: '4 MiB word: random lowercase letters', text: letters(4 * MiB), sync: true },
  { name: '4 MiB prose (reference)', text: cut(brownProse(), 4 * MiB), sync: true },
  { name: '64 MiB word: one letter repeated', text: 'a'.repeat(64 * MiB), sync: false, rounds: 1 },
]

const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6
const rows = []
for (const input of inputs) {
  const times = {}
  const tokens = {}
  for (let round = 0; round < (input.rounds ?? ROUNDS); round++) {
    for (const [name, a] of round % 2 ? [...impls].reverse() : impls) {
      const calls = input.sync ? [['countTokens', (t) => a.countTokens(t)], ['countTokensAsync', (t) => a.countTokensAsync(t)]] : [['countTokensAsync', (t) => a.countTokensAsync(t)]]
      for (const [call, f] of calls) {
        const t0 = process.hrtime.bigint()
        const n = await f(input.text)
        const key = `${name} ${call}`
        ;(times[key] ??= []).push(ms(t0))
        tokens[key] = n
      }
    }
  }
  rows.push({ input: input.name, bytes: Buffer.byteLength(input.text), tokens, ms: Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)])) })
  console.error(`[pathological] ${input.name}: ${JSON.stringify(rows.at(-1).ms)}`)
}

// executeTask with the 4 MiB one-letter word: the prompt check counts it and rejects it with
// CONTEXT_OVERFLOW (524,288 tokens > the 200,000-token window) before a session or a CLI exists.
const prompt = inputs[0].text
const task = {}
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, a] of round % 2 ? [...impls].reverse() : impls) {
    const ws = workspace('csm-bench-patho-')
    const m = new a.SessionManager({ databasePath: ws.db, workingDirectory: ws.work, sandbox: 'none' })
    const t0 = process.hrtime.bigint()
    let code = 'resolved'
    try {
      await m.executeTask({ prompt, projectId: 'bench', userId: 'u' })
    } catch (e) {
      code = e.code
    }
    ;(task[name] ??= { ms: [], code }).ms.push(ms(t0))
    await m.close()
  }
}
const executeTask = Object.fromEntries(Object.entries(task).map(([k, v]) => [k, { ms: median(v.ms), code: v.code }]))
console.error(`[pathological] executeTask 4 MiB word: ${JSON.stringify(executeTask)}`)
writeJson(opt.json, { rounds: ROUNDS, impls: impls.map(([n]) => n), rows, executeTask, load: machineLoad() })
