// A TCP proxy in front of PostgreSQL that counts round trips, for the benchmark (section 6) and
// the round-trip test (__test__/pg-round-trips.test.mjs).
//
// A round trip is a flight of client bytes that follows bytes from the server on its connection
// (or opens it): statements the client pipelines before the server answers are one flight, as
// they cost one network wait; a server's unasked bytes (a NOTIFY on a listening connection) are
// no flight. Each flight is stamped with process.hrtime.bigint() (CLOCK_MONOTONIC nanoseconds,
// the lifetime wrapper's clock), so flights can be counted between two moments of a task. The
// proxy reads the client's messages enough to tell the flights of work beside a task (the event
// log's writer, the poll of stop requests) from the task's own, so that they can be counted apart.
//
// The proxy runs on a worker thread: the addon's constructor connects synchronously, blocking the
// main thread's event loop.
import net from 'node:net'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'

/**
 * What a statement is for: `events`, an append to the event log (its writer runs beside the task,
 * and only the task's end waits for it); `watch`, the poll of a task's stop requests (beside the
 * task, nothing waits for it); `release`, a lease kept while the last task's CLI exited released
 * (the next task of the same manager takes it over instead of waiting); else `task`.
 */
function kindOf(sql) {
  if (/^\s*WITH s AS \(UPDATE\b/.test(sql) && /\.task_events\b/.test(sql)) return 'events'
  if (/abort_requested_at IS NOT NULL/.test(sql) && /^\s*SELECT 1 FROM\b/.test(sql)) return 'watch'
  if (/^\s*UPDATE \S+\.leases SET task_id = NULL\b/.test(sql)) return 'release'
  if (/\.begin_task\(/.test(sql)) return 'start'
  return 'task'
}

if (!isMainThread && workerData?.pgProxy) {
  const { host, port } = workerData
  /** Per flight: when, and what runs in it (see `kindOf`). */
  const flights = []
  /** While set, flights with a statement of this kind wait (with everything after them on their connection). */
  let hold = null
  /** What `hold` keeps back: per connection, a function that sends it on. */
  const held = new Set()
  /** While set, a flight with a statement of this kind closes its connection instead (a lost connection). */
  let cut = null
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host)
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    // Whether the server spoke since the client's last bytes (a new flight starts then).
    let answered = true
    let flight = null
    // The client's messages, parsed to tell which statements a flight runs (prepared statement
    // names to their SQL, from Parse messages).
    let buf = Buffer.alloc(0)
    let started = false
    const statements = new Map()
    const cstr = (b, at) => {
      const end = b.indexOf(0, at)
      return [b.toString('utf8', at, end), end + 1]
    }
    const parse = () => {
      for (;;) {
        if (!started) {
          if (buf.length < 8) return
          const len = buf.readInt32BE(0)
          const code = buf.readInt32BE(4)
          if (buf.length < len) return
          buf = buf.subarray(len)
          if (code !== 80877103) started = true // SSLRequest, else the startup message
          continue
        }
        if (buf.length < 5) return
        const type = String.fromCharCode(buf[0])
        const len = buf.readInt32BE(1)
        if (buf.length < 1 + len) return
        const body = buf.subarray(5, 1 + len)
        buf = buf.subarray(1 + len)
        if (type === 'P') {
          const [name, at] = cstr(body, 0)
          statements.set(name, cstr(body, at)[0])
        }
        if (flight && (type === 'B' || type === 'Q')) {
          const sql = type === 'Q' ? cstr(body, 0)[0] : statements.get(cstr(body, cstr(body, 0)[1])[0]) ?? ''
          const kind = kindOf(sql)
          flight.sql.push(sql.replace(/\s+/g, ' ').trim().slice(0, 100))
          flight.kind = flight.kind === undefined || flight.kind === kind ? kind : 'task'
          flight.kinds.add(kind)
        }
        if (flight && type === 'P') flight.kind = 'task'
      }
    }
    // Bytes kept back by `hold` on this connection, in order.
    let waiting = null
    const flush = () => {
      held.delete(flush)
      const bytes = waiting
      waiting = null
      for (const b of bytes) upstream.write(b)
    }
    client.on('data', (b) => {
      if (answered) {
        flight = { t: process.hrtime.bigint(), kind: undefined, kinds: new Set(), sql: [] }
        flights.push(flight)
        answered = false
      }
      buf = buf.length ? Buffer.concat([buf, b]) : b
      parse()
      if (cut && flight?.kinds.has(cut)) {
        flight.cut = true
        client.destroy()
        upstream.destroy()
        return
      }
      if (!waiting && hold && flight?.kinds.has(hold)) {
        waiting = []
        held.add(flush)
      }
      if (waiting) waiting.push(b)
      else upstream.write(b)
    })
    upstream.on('data', (b) => {
      answered = true
      client.write(b)
    })
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  server.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: server.address().port }))
  parentPort.on('message', (m) => {
    if (m === 'flights') parentPort.postMessage({ flights: flights.map((f) => ({ t: f.t, kind: f.kind ?? 'task', sql: f.sql, cut: Boolean(f.cut) })) })
    if (m?.cut !== undefined) {
      cut = m.cut
      parentPort.postMessage({ cut: true })
    }
    if (m?.hold !== undefined) {
      hold = m.hold
      if (!hold) for (const f of held) f() // each deletes itself: a Set goes on past a deleted entry
      parentPort.postMessage({ held: true })
    }
  })
}

/** Starts the proxy in front of the database at `url`; its `url` goes through it. */
export async function startPgProxy(url) {
  const target = new URL(url)
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { pgProxy: true, host: target.hostname || '127.0.0.1', port: Number(target.port || 5432) },
  })
  let failed = null
  worker.once('error', (e) => (failed = e))
  const next = () => (failed ? Promise.reject(failed) : new Promise((resolve) => worker.once('message', resolve)))
  const { port } = await next()
  const proxied = new URL(url)
  proxied.hostname = '127.0.0.1'
  proxied.port = String(port)
  return {
    url: proxied.toString(),
    /**
     * The flights so far, in order: `t` when (hrtime nanoseconds), `kind` what runs in it:
     * `events` (only appends to the event log), `watch` (only polls for stop requests), `task`;
     * `sql` the statements it ran (whitespace folded, each cut at 100 characters); `cut` whether
     * `cut` closed its connection instead.
     */
    async flights() {
      const answer = next()
      worker.postMessage('flights')
      return (await answer).flights
    },
    /**
     * Keeps flights with a statement of `kind` (see `flights`) from the server, each with
     * everything after it on its connection, until `hold(null)` sends them on.
     */
    async hold(kind) {
      const answer = next()
      worker.postMessage({ hold: kind })
      await answer
    },
    /**
     * Closes the connection of each flight with a statement of `kind` (see `flights`) instead of
     * sending it on, as a connection lost to the server would be, until `cut(null)`.
     */
    async cut(kind) {
      const answer = next()
      worker.postMessage({ cut: kind })
      await answer
    },
    async close() {
      await worker.terminate()
    },
  }
}
