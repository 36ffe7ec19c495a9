// A typed use of `claude-session-manager/testing` (checked by `tsc` in `npm run lint`).
import { startStandInServer, countInputTokens, summarizeUserTurns, echoReply, type StandInServer } from '../../testing/index.js'

export async function run(): Promise<number> {
  const server: StandInServer = await startStandInServer()
  server.enqueue({ toolUse: { name: 'Write', input: { file_path: '/tmp/x', content: 'x' } } }, { text: 'done' })
  server.enqueue({ text: 'held', after: new Promise<void>((resolve) => setTimeout(resolve, 10)) })
  const tokens = countInputTokens({ messages: [{ role: 'user', content: 'hi' }] })
  const { turns } = summarizeUserTurns({ messages: [] })
  const reply = echoReply({ body: {} })
  await server.close()
  return tokens + turns + reply.text.length
}
