'use client'

// The project's sessions: search (title and first prompt), rename, delete, and labels for forks
// and archived sessions.
import { useState } from 'react'
import type { Session } from 'claude-session-manager/react'

/** A session as the app's session route lists it (with the first prompt, for search). */
export type ListedSession = Session & { firstPrompt?: string }

const short = (id: string) => id.slice(0, 8)
const time = (ms: number) => new Date(ms).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' })

/**
 * Whether a session counts as archived for the user. The store keeps `archived` after a task
 * runs in an archived session (claude-session-manager does not reactivate it); a task sets
 * `lastActiveAt` and `updatedAt` together, while archiving sets only `updatedAt`, so an archived
 * session whose last activity is its last update was continued after it was archived.
 */
export function isArchived(s: Session): boolean {
  return s.status === 'archived' && !(s.taskCount > 0 && s.lastActiveAt >= s.updatedAt)
}

/** What the list shows as the session's name. */
export const sessionName = (s: ListedSession) => s.title || s.firstPrompt?.slice(0, 60) || `New conversation ${short(s.id)}`

export function SessionList({
  sessions,
  currentId,
  busy,
  onSelect,
  onRename,
  onDelete,
}: {
  sessions: ListedSession[]
  currentId: string | null
  busy: boolean
  onSelect: (id: string) => void
  onRename: (id: string, title: string) => Promise<void>
  onDelete: (id: string) => Promise<void>
}) {
  const [query, setQuery] = useState('')
  const [editing, setEditing] = useState<string | null>(null)
  const [draft, setDraft] = useState('')
  const [confirming, setConfirming] = useState<string | null>(null)
  const q = query.trim().toLowerCase()
  const shown = q ? sessions.filter((s) => [s.title, s.firstPrompt, s.id].some((f) => f && f.toLowerCase().includes(q))) : sessions
  const byId = new Map(sessions.map((s) => [s.id, s]))

  const saveRename = async (id: string) => {
    const title = draft.trim()
    setEditing(null)
    if (title) await onRename(id, title)
  }

  return (
    <>
      <input
        className="search"
        type="search"
        data-testid="session-search"
        placeholder="Search titles and first prompts…"
        value={query}
        onChange={(e) => setQuery(e.target.value)}
        aria-label="Search sessions"
      />
      <ul className="sessions" data-testid="session-list">
        {shown.map((s) => {
          const parent = s.parentId ? byId.get(s.parentId) : undefined
          const archived = isArchived(s)
          const current = s.id === currentId
          return (
            <li key={s.id} className={`session${current ? ' current' : ''}`} data-session-id={s.id} data-status={archived ? 'archived' : 'active'}>
              {editing === s.id ? (
                <form
                  className="rename"
                  onSubmit={(e) => {
                    e.preventDefault()
                    void saveRename(s.id)
                  }}
                >
                  <input data-testid="rename-input" value={draft} autoFocus maxLength={120} onChange={(e) => setDraft(e.target.value)} onKeyDown={(e) => e.key === 'Escape' && setEditing(null)} aria-label="New title" />
                  <button type="submit" data-testid="rename-save">
                    Save
                  </button>
                </form>
              ) : (
                <button type="button" className="session-open" data-testid="session-open" onClick={() => onSelect(s.id)} disabled={busy || current} title={s.firstPrompt ?? ''}>
                  <span className="sid" data-testid="session-title">{sessionName(s)}</span>
                </button>
              )}
              <span className="badges">
                {current && <span className="badge current">open</span>}
                <span className={`badge ${archived ? 'archived' : 'active'}`}>{archived ? 'archived' : 'active'}</span>
                {s.parentId && (
                  <span className="badge fork" title={s.parentId}>
                    fork of {parent ? sessionName(parent).slice(0, 24) : short(s.parentId)}
                  </span>
                )}
                {s.parentId && s.taskCount === 0 && <span className="badge unused">not used yet</span>}
              </span>
              <span className="meta">
                {s.taskCount} task{s.taskCount === 1 ? '' : 's'} · ${s.totalCostUsd.toFixed(4)} · {time(s.lastActiveAt)}
              </span>
              {confirming === s.id ? (
                <span className="row-actions confirm">
                  Delete this conversation and its history?
                  <button
                    type="button"
                    className="danger"
                    data-testid="delete-confirm"
                    onClick={() => {
                      setConfirming(null)
                      void onDelete(s.id)
                    }}
                  >
                    Delete
                  </button>
                  <button type="button" onClick={() => setConfirming(null)}>
                    Cancel
                  </button>
                </span>
              ) : (
                <span className="row-actions">
                  <button
                    type="button"
                    data-testid="rename"
                    onClick={() => {
                      setDraft(s.title || '')
                      setEditing(s.id)
                    }}
                  >
                    Rename
                  </button>
                  <button type="button" data-testid="delete" onClick={() => setConfirming(s.id)} disabled={busy && current}>
                    Delete
                  </button>
                </span>
              )}
            </li>
          )
        })}
        {shown.length === 0 && <li className="muted small">{q ? 'No conversation matches.' : 'No conversations yet.'}</li>}
      </ul>
    </>
  )
}
