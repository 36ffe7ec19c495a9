// Section 1: token counting — the addon's countTokens / countTokensAsync against gpt-tokenizer,
// js-tiktoken and tiktoken (WASM), same encoding, on short prompts, 100 KB and 1 MB+ texts.
// Every implementation is run in the same rounds, interleaved, so machine noise hits them alike;
// the figure reported is the median over rounds. Counts are compared exactly.
import { createRequire } from 'node:module'
import { args, median, writeJson, machineLoad } from '../lib/stats.mjs'
import { brownProse, cut, rustSources, largestTranscript, shortPrompts } from '../lib/corpus.mjs'

const require = createRequire(import.meta.url)
const opt = args()
const quick = Boolean(opt.quick)
const ROUNDS = Number(opt.rounds ?? (quick ? 2 : 7))
const ROUND_MS = quick ? 40 : 120 // each implementation runs at least this long per round (at least one call)

// BENCH_ADDON=<.node> measures that build instead of index.js's, as in every other section.
const addon = require(process.env.BENCH_ADDON || '../../index.js')
const baseline = opt.baseline ? require(opt.baseline) : null

const t0 = performance.now()
const gptO200k = await import('gpt-tokenizer/encoding/o200k_base')
const gptCl100k = await import('gpt-tokenizer/encoding/cl100k_base')
const { Tiktoken } = require('js-tiktoken/lite')
const jsRanks = {
  o200k_base: require('js-tiktoken/ranks/o200k_base'),
  cl100k_base: require('js-tiktoken/ranks/cl100k_base'),
}
const wasm = require('tiktoken')

// Cold start: the first count in a fresh process, set-up included.
const cold = {}
const timeIt = (f) => {
  const s = performance.now()
  f()
  return performance.now() - s
}
cold['addon countTokens'] = timeIt(() => addon.countTokens('hello world'))
cold['addon countTokens (cl100k_base)'] = timeIt(() => addon.countTokens('hello world', { encoding: 'cl100k_base' }))
if (baseline) cold['addon before'] = timeIt(() => baseline.countTokens('hello world'))
const gptCold = {
  o200k_base: timeIt(() => gptO200k.countTokens('hello world')),
  cl100k_base: timeIt(() => gptCl100k.countTokens('hello world')),
}
const js = {}
const jsCold = {}
for (const e of ['o200k_base', 'cl100k_base']) {
  jsCold[e] = timeIt(() => {
    js[e] = new Tiktoken(jsRanks[e].default ?? jsRanks[e])
    js[e].encode('hello world')
  })
}
const w = {}
const wCold = {}
for (const e of ['o200k_base', 'cl100k_base']) wCold[e] = timeIt(() => (w[e] = wasm.get_encoding(e)).encode_ordinary('hello world'))
const setupMs = performance.now() - t0

function implementations(enc) {
  const o = { encoding: enc }
  const gpt = enc === 'o200k_base' ? gptO200k : gptCl100k
  const noSpecial = { disallowedSpecial: new Set() } // special-token text counts as ordinary text, as in the addon
  // The addon as documented: the default encoding with no second argument, the other one named
  // by a string. The `{ encoding }` form checks the object's keys, which costs more on short texts:
  // it is measured on its own row.
  const fast = enc === 'o200k_base' ? (t) => addon.countTokens(t) : (t) => addon.countTokens(t, enc)
  const fastAsync = enc === 'o200k_base' ? (t) => addon.countTokensAsync(t) : (t) => addon.countTokensAsync(t, enc)
  const list = [
    { name: 'addon countTokens', ours: true, count: fast },
    { name: 'addon countTokensAsync', ours: true, async: true, count: fastAsync },
    { name: 'addon countTokens { encoding }', ours: true, shortOnly: true, count: (t) => addon.countTokens(t, o) },
  ]
  if (baseline) list.push({ name: 'addon before', before: true, count: (t) => baseline.countTokens(t, o) })
  list.push(
    { name: 'gpt-tokenizer', peer: true, count: (t) => gpt.countTokens(t, noSpecial) },
    { name: 'js-tiktoken', peer: true, count: (t) => js[enc].encode(t, [], []).length },
    { name: 'tiktoken (WASM)', peer: true, count: (t) => w[enc].encode_ordinary(t).length },
  )
  return list
}

const prose = brownProse()
const code = rustSources()
const transcript = largestTranscript()
const prompts = shortPrompts(prose, 1000, 90)
const inputs = [
  { name: 'short prompts', kind: 'short', texts: prompts },
  { name: 'prose 100 KB', kind: 'large', text: cut(prose, 100_000) },
  { name: 'code 100 KB', kind: 'large', text: cut(code, 100_000) },
  transcript && { name: 'transcript 100 KB', kind: 'large', text: cut(transcript.text, 100_000) },
  { name: 'prose 1.2 MB', kind: 'large', big: true, text: cut(prose, 1_200_000) },
  { name: `code ${(Buffer.byteLength(code) * 4 / 1e6).toFixed(1)} MB (src/ ×4)`, kind: 'large', big: true, text: [code, code, code, code].join('\n') },
  transcript && { name: `transcript ${(Buffer.byteLength(transcript.text) / 1e6).toFixed(1)} MB`, kind: 'large', big: true, text: transcript.text },
].filter(Boolean)

const bytes = (s) => Buffer.byteLength(s, 'utf8')

async function runOnce(impl, input) {
  // One timed batch: calls until ROUND_MS has passed; returns ms per call (per text).
  const texts = input.kind === 'short' ? input.texts : [input.text]
  let calls = 0
  let cpu0 = process.cpuUsage()
  const start = performance.now()
  let elapsed = 0
  do {
    if (impl.async) {
      for (const t of texts) await impl.count(t)
    } else {
      for (const t of texts) impl.count(t)
    }
    calls += texts.length
    elapsed = performance.now() - start
  } while (elapsed < ROUND_MS)
  const cpu = process.cpuUsage(cpu0)
  return { msPerCall: elapsed / calls, cores: (cpu.user + cpu.system) / 1000 / elapsed }
}

async function countsOf(impl, input) {
  if (input.kind === 'short') {
    const out = []
    for (const t of input.texts) out.push(await impl.count(t))
    return out
  }
  return [await impl.count(input.text)]
}

const results = {}
for (const enc of ['o200k_base', 'cl100k_base']) {
  const rows = []
  for (const input of inputs) {
    const impls = implementations(enc).filter((i) => !i.shortOnly || input.kind === 'short')
    const totalBytes = input.kind === 'short' ? input.texts.reduce((a, t) => a + bytes(t), 0) : bytes(input.text)
    const perCallBytes = input.kind === 'short' ? totalBytes / input.texts.length : totalBytes
    // Exact agreement first (also warms every implementation up).
    const counts = {}
    for (const impl of impls) counts[impl.name] = await countsOf(impl, input)
    const ref = counts['tiktoken (WASM)']
    const disagreements = {}
    for (const impl of impls) {
      const bad = counts[impl.name].map((c, i) => (c === ref[i] ? -1 : i)).filter((i) => i >= 0)
      if (bad.length) {
        disagreements[impl.name] = bad.length
        const i = bad[0]
        const t = input.kind === 'short' ? input.texts[i] : input.text
        console.error(`[tokens] ${enc} ${input.name}: ${impl.name} counts ${counts[impl.name][i]}, tiktoken (WASM) ${ref[i]} (text #${i}, ${t.length} chars)`)
      }
    }
    const samples = Object.fromEntries(impls.map((i) => [i.name, []]))
    const cores = Object.fromEntries(impls.map((i) => [i.name, []]))
    const rounds = input.big && enc === 'cl100k_base' && !opt.rounds ? Math.max(2, Math.ceil(ROUNDS / 2)) : ROUNDS
    for (let r = 0; r < rounds; r++) {
      // Rotate the order each round so no implementation always runs right after the same one.
      for (let k = 0; k < impls.length; k++) {
        const impl = impls[(k + r) % impls.length]
        const s = await runOnce(impl, input)
        samples[impl.name].push(s.msPerCall)
        cores[impl.name].push(s.cores)
      }
    }
    const perImpl = {}
    for (const impl of impls) {
      const ms = median(samples[impl.name])
      perImpl[impl.name] = {
        msPerCall: ms,
        usPerCall: ms * 1000,
        mbPerSec: perCallBytes / 1e6 / (ms / 1000),
        callsPerSec: 1000 / ms,
        cores: median(cores[impl.name]),
        samples: samples[impl.name],
      }
    }
    const peers = impls.filter((i) => i.peer)
    const fastestPeer = peers.reduce((best, i) => (perImpl[i.name].msPerCall < perImpl[best.name].msPerCall ? i : best), peers[0])
    const ratio = (name) => perImpl[fastestPeer.name].msPerCall / perImpl[name].msPerCall
    const bar = input.kind === 'short' ? 5 : 3
    rows.push({
      input: input.name,
      kind: input.kind,
      bytes: totalBytes,
      texts: input.kind === 'short' ? input.texts.length : 1,
      avgChars: input.kind === 'short' ? input.texts.reduce((a, t) => a + t.length, 0) / input.texts.length : input.text.length,
      tokens: input.kind === 'short' ? ref.reduce((a, b) => a + b, 0) : ref[0],
      agree: Object.keys(disagreements).length === 0,
      disagreements,
      results: perImpl,
      fastestPeer: fastestPeer.name,
      ratioSync: ratio('addon countTokens'),
      ratioAsync: ratio('addon countTokensAsync'),
      ratioBefore: baseline ? ratio('addon before') : null,
      bar,
      barMet: ratio('addon countTokens') >= bar,
    })
    console.error(
      `[tokens] ${enc} ${input.name}: addon ${perImpl['addon countTokens'].usPerCall.toFixed(2)} µs/call, fastest peer ${fastestPeer.name} ${perImpl[fastestPeer.name].usPerCall.toFixed(2)} µs/call, ×${ratio('addon countTokens').toFixed(2)}${baseline ? `, before ×${ratio('addon before').toFixed(2)}` : ''}`,
    )
  }
  results[enc] = rows
}

const out = {
  rounds: ROUNDS,
  roundMs: ROUND_MS,
  setupMs,
  cold: {
    ...cold,
    'gpt-tokenizer (o200k_base)': gptCold.o200k_base,
    'js-tiktoken (o200k_base)': jsCold.o200k_base,
    'tiktoken WASM (o200k_base)': wCold.o200k_base,
  },
  baseline: opt.baseline || null,
  transcript: transcript?.name ?? null,
  results,
  load: machineLoad(),
}
for (const e of Object.values(w)) e.free()
writeJson(opt.json, out)
