// Runs the package's stand-in Anthropic API server in its own process, so that serving the
// CLIs' requests does not load the event loop being measured. Sends { url, env } to its parent
// over IPC and stops when the parent disconnects or sends 'close'; `{ enqueue }` scripts replies.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { startStandInServer } = require('../../testing/index.js')

const server = await startStandInServer()
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
