// A typed use of branching (`fork` at a message, `rewind`, `executeTask` with `atMessageId`, the
// hook's `editMessage`/`regenerate`/`branches`), checked by `tsc` in `npm run lint`.
import { SessionManager, type MessagesPage, type RewindResult, type Session } from '../../index.js'
import { useClaudeSession, type ClaudeBranch } from '../../react/index.js'

export async function branch(manager: SessionManager, sessionId: string, userId: string): Promise<string> {
  const page: MessagesPage = await manager.getMessages(sessionId, userId)
  const at = page.messages[0].uuid
  const fork: Session = await manager.fork({ sessionId, userId, atMessageId: at, title: 'B' })
  const r = await manager.executeTask({ projectId: 'p', userId, sessionId, atMessageId: at, prompt: 'instead' })
  const rw: RewindResult = await manager.rewind({ sessionId, userId, toMessageId: at })
  const forks = page.branches.map((b) => `${b.sessionId}@${b.atMessageId ?? 'end'}`)
  return `${fork.id} ${r.parentSessionId ?? ''} ${rw.droppedMessages} ${rw.contextInfo.estimatedTokens} ${forks.join()} ${page.forkedAt ?? ''}`
}

export function useBranches(): ClaudeBranch[] {
  const s = useClaudeSession({ projectId: 'p' })
  const firstUser = s.messages.find((m) => m.role === 'user')
  if (firstUser) void s.editMessage(firstUser.id, 'edited')
  void s.regenerate()
  if (firstUser) void s.rewind(firstUser.id)
  void s.send('x', { atMessageId: 'u' })
  return s.branches
}
