// Runs the package's stand-in Anthropic API server in its own process, so that serving the
// CLIs' requests does not load the event loop being measured. Sends { url, env } to its parent
// over IPC and stops when the parent disconnects or sends 'close'; `{ enqueue }` scripts replies.
// With `CSM_STANDIN_DELAY_MS` set, every reply not scripted waits that long before it is sent (a
// model that takes time to answer; by default the stand-in answers at once).
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { startStandInServer } = require('../../testing/index.js')

const delayMs = Number(process.env.CSM_STANDIN_DELAY_MS || 0)
const server = await startStandInServer(delayMs > 0 ? { defaultReply: { delayMs } } : {})
process.send({ url: server.url, env: server.env() })
const stop = async () => {
  await server.close()
  process.exit(0)
}
process.on('message', (m) => {
  if (m === 'close') stop()
  // `{ enqueue: [reply, …] }`: scripted replies (streams.mjs).
  else if (m?.enqueue) server.enqueue(...m.enqueue)
})
process.on('disconnect', stop)
