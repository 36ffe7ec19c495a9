// The app's own data about sessions: titles the user gave them (rename) and each session's first
// prompt (for search). claude-session-manager has no rename call and stores no first prompt, so
// the app keeps these itself — here in one small JSON file beside the session database. A real
// app keeps them in its own database (one row per session id, with the user id).
import fs from 'node:fs/promises'
import path from 'node:path'

interface Note {
  userId: string
  title?: string
  firstPrompt?: string
}

type Notes = Record<string, Note>

let file: string | null = null
let cache: Notes | null = null
let writing: Promise<void> = Promise.resolve()

/** Where the notes live: `EXAMPLE_NOTES_FILE`, else `nextjs-example-notes.json` in `folder`. */
export function setNotesFolder(folder: string) {
  if (!file) file = process.env.EXAMPLE_NOTES_FILE || path.join(folder, 'nextjs-example-notes.json')
}

async function load(): Promise<Notes> {
  if (cache) return cache
  if (!file) throw new Error('session notes: setNotesFolder was not called')
  try {
    cache = JSON.parse(await fs.readFile(/*turbopackIgnore: true*/ file, 'utf8')) as Notes
  } catch {
    cache = {}
  }
  return cache
}

async function save() {
  const data = JSON.stringify(cache)
  const target = file as string
  // One write at a time, through a temporary file: a crash never leaves half a file.
  writing = writing.then(async () => {
    await fs.mkdir(/*turbopackIgnore: true*/ path.dirname(target), { recursive: true })
    await fs.writeFile(/*turbopackIgnore: true*/ `${target}.tmp`, data, { mode: 0o600 })
    await fs.rename(/*turbopackIgnore: true*/ `${target}.tmp`, target)
  })
  await writing
}

/** The notes of the user's sessions among `ids` (another user's are never returned). */
export async function notesOf(userId: string, ids: string[]): Promise<Record<string, Note>> {
  const all = await load()
  const out: Record<string, Note> = {}
  for (const id of ids) if (all[id] && all[id].userId === userId) out[id] = all[id]
  return out
}

/** Sets fields of a session's note (the caller has checked the session is the user's). */
export async function setNote(userId: string, sessionId: string, patch: Partial<Omit<Note, 'userId'>>) {
  const all = await load()
  const before = all[sessionId]?.userId === userId ? all[sessionId] : { userId }
  all[sessionId] = { ...before, ...patch, userId }
  await save()
}

/** Forgets a deleted session. */
export async function dropNote(sessionId: string) {
  const all = await load()
  if (!(sessionId in all)) return
  delete all[sessionId]
  await save()
}
