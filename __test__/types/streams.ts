// A typed use of the event log (`streamEvents`, `getRunningTask`, `abortTask`) of the addon's
// generated typings (checked by `tsc` in `npm run lint`).
import { SessionManager, type EventStream, type RunningTask, type StreamedEvent } from '../../index.js'

export async function follow(manager: SessionManager, sessionId: string, userId: string, signal: AbortSignal): Promise<number> {
  const running: RunningTask | null = await manager.getRunningTask({ sessionId, userId })
  const stream: EventStream = await manager.streamEvents({ sessionId, userId, after: running ? running.lastSeq : 0, follow: true }, { signal })
  let last = 0
  for await (const e of stream) {
    const event: StreamedEvent = e
    if (event.event.type === 'events_truncated') last = event.event.firstSeq - 1
    else last = event.seq
  }
  const stopped: boolean = await manager.abortTask({ sessionId, userId })
  return stopped ? last : -last
}
