// A typed use of `claude-session-manager/react` (checked by `tsc` in `npm run lint`).
import { useClaudeSession, contextLevel, readEventStream, type ClaudeMessage, type UseClaudeSessionResult } from '../../react/index.js'

export function useChat(): string {
  const session: UseClaudeSessionResult = useClaudeSession({ projectId: 'p', api: '/api/claude', onPermissionRequest: (r) => void r.requestId })
  const last: ClaudeMessage | undefined = session.messages[session.messages.length - 1]
  for (const request of session.permissionRequests) {
    void session.respondToPermission(request.requestId, { behavior: 'allow', remember: 'session' })
    void session.respondToPermission(request.requestId, { behavior: 'deny', message: 'no', interrupt: true })
  }
  void session.send('hello')
  const stop: () => void = session.stop
  if (session.isLoading) stop()
  return `${contextLevel(session.context, { warnAt: 50 })} ${last ? last.role : 'none'} ${session.isLoading}`
}

export async function read(body: ReadableStream<Uint8Array>): Promise<void> {
  await readEventStream(body, (event: string, data: unknown) => console.log(event, data))
}
