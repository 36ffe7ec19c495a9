// The session route of this app: the package's `routes.session`, plus what the page needs on top.
//
// - GET (one session or the list): each session with the title the user gave it and its first
//   prompt (for the list's search), from lib/session-notes.ts.
// - POST { action: 'messages' }: the history as the page shows it (lib/history.ts): no CLI
//   command lines or compaction summary as user messages, tool results with their calls, no
//   server paths. A fork that has not run yet shows its parent's history (`inheritedFrom`).
// - POST { action: 'rename', sessionId, title }: renames a session (the app's own data).
// - Everything else goes to the package's route unchanged.
import type { Session } from 'claude-session-manager'
import { getUserId } from './demo-auth'
import { manager, routes } from './claude'
import { firstPrompt, toThread, type ThreadPage } from './history'
import { dropNote, notesOf, setNote } from './session-notes'

type PublicSession = Omit<Session, 'workingDirectory'> & { firstPrompt?: string }

const json = (data: unknown, status = 200) => Response.json(data, { status, headers: { 'cache-control': 'no-store' } })
const fail = (status: number, code: string, message: string) => json({ error: { code, message } }, status)

/** A POST to the package's session route with another body, as the same user. */
function libraryPost(request: Request, body: unknown): Promise<Response> {
  const headers = new Headers(request.headers)
  headers.delete('content-length')
  headers.set('content-type', 'application/json')
  return routes.session.POST(new Request(request.url, { method: 'POST', headers, body: JSON.stringify(body) }))
}

/** An error of the manager as the package's routes answer it. */
function fromError(e: unknown): Response {
  const code = (e as { code?: string })?.code
  if (code === 'SESSION_NOT_FOUND') return fail(404, code, (e as Error).message)
  if (code === 'INVALID_ARGUMENT') return fail(400, code, (e as Error).message)
  console.error('[session route]', e)
  return fail(500, code || 'INTERNAL', 'something went wrong on the server')
}

/** The sessions with their titles and first prompts (computed once, then kept in the notes). */
async function decorate(userId: string, sessions: PublicSession[]): Promise<PublicSession[]> {
  const m = await manager()
  const notes = await notesOf(userId, sessions.map((s) => s.id))
  const promptOf = async (s: PublicSession): Promise<string | undefined> => {
    if (notes[s.id]?.firstPrompt) return notes[s.id].firstPrompt
    if (s.taskCount === 0) return undefined // (an unused fork: its parent's, below)
    try {
      const fp = firstPrompt(await m.getMessages(s.id, userId, { offset: 0, limit: 20 }))
      if (fp) await setNote(userId, s.id, { firstPrompt: fp })
      return fp ?? undefined
    } catch {
      return undefined
    }
  }
  const prompts = await Promise.all(sessions.map(promptOf))
  const byId = new Map(sessions.map((s, i) => [s.id, prompts[i]]))
  return sessions.map((s, i) => {
    const fp = prompts[i] ?? (s.parentId ? byId.get(s.parentId) : undefined)
    const title = notes[s.id]?.title
    return { ...s, ...(title ? { title } : {}), ...(fp ? { firstPrompt: fp } : {}) }
  })
}

async function GET(request: Request): Promise<Response> {
  const res = await routes.session.GET(request)
  const userId = await getUserId(request)
  if (!res.ok || !userId) return res
  const body = (await res.json()) as { session?: PublicSession; sessions?: PublicSession[] }
  if (body.sessions) return json({ ...body, sessions: await decorate(userId, body.sessions) })
  if (body.session) return json({ ...body, session: (await decorate(userId, [body.session]))[0] })
  return json(body)
}

async function POST(request: Request): Promise<Response> {
  let body: Record<string, unknown>
  try {
    body = await request.clone().json()
  } catch {
    return routes.session.POST(request) // (the package answers malformed JSON)
  }
  const userId = await getUserId(request)
  if (!userId || !body || typeof body !== 'object') return routes.session.POST(request)

  if (body.action === 'rename') {
    const { sessionId, title } = body
    if (typeof sessionId !== 'string' || typeof title !== 'string') return fail(400, 'INVALID_ARGUMENT', 'rename: sessionId and title must be strings')
    const clean = title.replace(/\s+/g, ' ').trim()
    if (!clean || clean.length > 120) return fail(400, 'INVALID_ARGUMENT', 'rename: the title must have 1 to 120 characters')
    try {
      const session = await (await manager()).getSession(sessionId, userId) // the user's, or a 404
      await setNote(userId, sessionId, { title: clean })
      const { workingDirectory: _wd, ...pub } = session
      return json({ session: (await decorate(userId, [pub]))[0] })
    } catch (e) {
      return fromError(e)
    }
  }

  if (body.action === 'messages') {
    const res = await libraryPost(request, { limit: 200, ...body })
    if (!res.ok) return res
    const stateDirectory = (await manager()).info().stateDirectory
    const raw = await res.json()
    const page: ThreadPage = { ...toThread(raw, stateDirectory), branches: raw.branches, forkedAt: raw.forkedAt }
    if (page.messages.length === 0 && body.offset === undefined && typeof body.sessionId === 'string') {
      // A fork that has not run a task has no transcript yet: its first task continues from its
      // parent's conversation, so that is what it shows (marked as inherited).
      try {
        const m = await manager()
        let s = await m.getSession(body.sessionId, userId)
        for (let depth = 0; s.parentId && s.taskCount === 0 && depth < 8; depth++) {
          const parent = await libraryPost(request, { action: 'messages', sessionId: s.parentId, limit: 200 })
          if (!parent.ok) break
          const inherited = toThread(await parent.json(), stateDirectory)
          if (inherited.messages.length > 0) return json({ ...inherited, inheritedFrom: s.parentId })
          s = await m.getSession(s.parentId, userId)
        }
      } catch {
        // (the parent may be gone: then there is nothing to show)
      }
    }
    return json(page)
  }

  const res = await routes.session.POST(request)
  if (res.ok && body.action === 'delete' && typeof body.sessionId === 'string') await dropNote(body.sessionId)
  return res
}

export const sessionRoutes = { GET, POST }
