// A TCP proxy in front of PostgreSQL that counts round trips, for the benchmark (section 6) and
// the round-trip test (__test__/pg-round-trips.test.mjs).
//
// A round trip is a flight of client bytes that follows bytes from the server on its connection
// (or opens it): statements the client pipelines before the server answers are one flight, as
// they cost one network wait; a server's unasked bytes (a NOTIFY on a listening connection) are
// no flight. Each flight is stamped with process.hrtime.bigint() (CLOCK_MONOTONIC nanoseconds,
// the lifetime wrapper's clock), so flights can be counted between two moments of a task.
//
// The proxy runs on a worker thread: the addon's constructor connects synchronously, blocking the
// main thread's event loop.
import net from 'node:net'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'

if (!isMainThread && workerData?.pgProxy) {
  const { host, port } = workerData
  const flights = []
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host)
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    // Whether the server spoke since the client's last bytes (a new flight starts then).
    let answered = true
    client.on('data', (b) => {
      if (answered) {
        flights.push(process.hrtime.bigint())
        answered = false
      }
      upstream.write(b)
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
    if (m === 'flights') parentPort.postMessage({ flights: flights.slice() })
  })
}

/** Starts the proxy in front of the database at `url`; its `url` goes through it. */
export async function startPgProxy(url) {
  const target = new URL(url)
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { pgProxy: true, host: target.hostname || '127.0.0.1', port: Number(target.port || 5432) },
  })
  const next = () => new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject))
  const { port } = await next()
  const proxied = new URL(url)
  proxied.hostname = '127.0.0.1'
  proxied.port = String(port)
  return {
    url: proxied.toString(),
    /** The flights' times so far (hrtime nanoseconds), in order. */
    async flights() {
      const answer = next()
      worker.postMessage('flights')
      return (await answer).flights
    },
    /** How many flights were stamped in [from, to] (hrtime nanoseconds, inclusive). */
    async between(from, to) {
      return (await this.flights()).filter((t) => t >= from && t <= to).length
    },
    async close() {
      await worker.terminate()
    },
  }
}
