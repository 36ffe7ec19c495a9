'use client'

import { Fragment, useCallback, useEffect, useMemo, useRef, useState } from 'react'
import { contextLevel, useClaudeSession } from 'claude-session-manager/react'
import type { ClaudeMessage, ClaudeStreamEvent, ContextUsageView } from 'claude-session-manager/react'
import { DEMO_USERS } from '@/lib/demo-auth'
import type { ThreadEntry, ThreadPage } from '@/lib/history'
import { explainError } from './errors'
import { SessionList, isArchived, sessionName, type ListedSession } from './session-list'
import { Message, PermissionCard, type ThreadMessage, type ToolResultView } from './thread'

const API = '/api/claude'
/** The window the store assumes before any measurement (`contextWindow`'s default). */
const STORE_DEFAULT_WINDOW = 200000
const fmt = (n: number) => n.toLocaleString('en-US')

/** POST JSON to the API; the parsed answer, or throws an Error with the API's `code`. */
async function post<T>(route: string, body: unknown): Promise<T> {
  const res = await fetch(`${API}/${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), cache: 'no-store' })
  const data = await res.json().catch(() => null)
  if (!res.ok) throw Object.assign(new Error(data?.error?.message || `HTTP ${res.status}`), { code: data?.error?.code || 'HTTP_ERROR', status: res.status })
  return data as T
}

/** A history entry as a message of the thread. */
function fromHistory(e: ThreadEntry): ThreadMessage {
  return {
    id: e.id,
    role: e.role,
    content: e.text,
    status: 'done',
    createdAt: e.createdAt,
    kind: e.kind,
    ...(e.toolUses && e.toolUses.length ? { toolUses: e.toolUses.map(({ id, name, input }) => ({ id, name, input })) } : {}),
    ...(e.compaction ? { compaction: { preTokens: e.compaction.preTokens, summary: e.compaction.summary } } : {}),
  }
}

/** The text of a tool result's content (a string or content blocks). */
function resultText(content: unknown): string {
  if (typeof content === 'string') return content
  if (Array.isArray(content)) return content.map((b) => (b && typeof b === 'object' && typeof b.text === 'string' ? b.text : '')).join('\n')
  return ''
}

interface Account {
  userId: string
  budget: { usd: number; spentUsd: number; remainingUsd: number; period: 'day' | 'month' | null } | null
}

export function Chat({ projectId, userId, mode }: { projectId: string; userId: string; mode: string }) {
  // Tool results: from the history, and from the stream as the tools finish.
  const [results, setResults] = useState<Record<string, ToolResultView>>({})
  const onEvent = useCallback((event: ClaudeStreamEvent) => {
    if (event.type !== 'user' || event.parent_tool_use_id || !Array.isArray(event.message?.content)) return
    const found: Record<string, ToolResultView> = {}
    for (const b of event.message.content) {
      if (b && b.type === 'tool_result' && typeof b.tool_use_id === 'string') found[b.tool_use_id] = { content: resultText(b.content), isError: b.is_error === true }
    }
    if (Object.keys(found).length) setResults((r) => ({ ...r, ...found }))
  }, [])
  // The app loads the history itself (loadHistory: false): its session route gives it as the
  // page shows it (see lib/history.ts), with tool results and compaction notes.
  const chat = useClaudeSession({ projectId, loadHistory: false, onEvent })
  const sessions = chat.sessions as ListedSession[]
  const [input, setInput] = useState('')
  const [inheritedFrom, setInheritedFrom] = useState<string | null>(null)
  const [appError, setAppError] = useState<{ code?: string; message?: string } | null>(null)
  const [note, setNote] = useState<string | null>(null)
  const [answered, setAnswered] = useState<Set<string>>(new Set())
  const [account, setAccount] = useState<Account | null>(null)
  const [busy, setBusy] = useState(false)
  const bottom = useRef<HTMLDivElement>(null)
  useEffect(() => {
    bottom.current?.scrollIntoView({ block: 'end' }) // (a block body: scrollIntoView may return a promise)
  }, [chat.messages, chat.permissionRequests])

  const loadAccount = useCallback(async () => {
    try {
      const res = await fetch('/api/account', { cache: 'no-store' })
      if (res.ok) setAccount(await res.json())
    } catch {}
  }, [])
  useEffect(() => {
    void loadAccount()
  }, [loadAccount])

  // The history of the session on screen, loaded when the session changes. Messages sent before
  // it arrives stay (after it): nothing typed vanishes when a slow history answer lands.
  const loadedFor = useRef<string | null>(null)
  const currentId = useRef<string | null>(null)
  currentId.current = chat.sessionId
  const { setMessages } = chat
  // Bumped to load the history of the same session again (after an undo).
  const [reloads, setReloads] = useState(0)
  const streaming = chat.isStreaming
  useEffect(() => {
    const id = chat.sessionId
    // A session switched to while a task streams (an edit runs in a new fork) loads once it ended.
    if (!id || loadedFor.current === id || streaming) return
    loadedFor.current = id
    setInheritedFrom(null)
    const requestedAt = Date.now()
    post<ThreadPage>('session', { action: 'messages', sessionId: id })
      .then((page) => {
        if (currentId.current !== id) return
        const found: Record<string, ToolResultView> = {}
        for (const e of page.messages) for (const t of e.toolUses ?? []) if (t.result) found[t.id] = t.result
        setResults((r) => ({ ...r, ...found }))
        setInheritedFrom(page.inheritedFrom ?? null)
        setMessages((ms: ClaudeMessage[]) => {
          // What was added on this page after the request (a prompt sent meanwhile) stays; what
          // was on screen before (e.g. the parent's messages kept by a fork) is replaced.
          const newer = ms.filter((m) => (m.createdAt ?? 0) >= requestedAt && !page.messages.some((e) => e.id === m.id))
          const older = page.messages.filter((e) => !(newer.length && (e.createdAt ?? 0) >= requestedAt)).map(fromHistory)
          return [...older, ...newer]
        })
      })
      .catch((e) => currentId.current === id && setAppError(e))
  }, [chat.sessionId, setMessages, reloads, streaming])

  // Branching: edit one of your messages (a fork from the message before it), undo a turn with
  // its file changes (a rewind of this session), switch between the branches.
  const [editing, setEditing] = useState<{ id: string; text: string } | null>(null)
  const { editMessage, rewind } = chat
  const saveEdit = (e: React.FormEvent) => {
    e.preventDefault()
    if (!editing || !editing.text.trim()) return
    const { id, text } = editing
    setEditing(null)
    void editMessage(id, text.trim())
  }
  const undoTurn = (messageId: string) =>
    act(async () => {
      const out = await rewind(messageId, { files: true })
      if (!out) return
      loadedFor.current = null
      setReloads((n) => n + 1)
      const changed = out.files?.changed ?? []
      setNote(`Turn undone: ${out.droppedMessages} messages dropped${changed.length ? `, files restored: ${changed.join(', ')}` : ''}.`)
      await chat.refresh()
    })

  // When a task ends (also by Stop), the server records it a moment later: wait for that, then
  // reload the list, the meter and the panel together so they agree.
  const prevStatus = useRef(chat.status)
  const { refresh } = chat
  useEffect(() => {
    const was = prevStatus.current
    prevStatus.current = chat.status
    if (was !== 'streaming' || chat.status !== 'idle' || !chat.sessionId) return
    const id = chat.sessionId
    let cancelled = false
    void (async () => {
      for (let i = 0; i < 50 && !cancelled; i++) {
        try {
          const { tasks } = await post<{ tasks: Array<{ status: string }> }>('session', { action: 'tasks', sessionId: id })
          if (!tasks.some((t) => t.status === 'running')) break
        } catch {
          break
        }
        await new Promise((r) => setTimeout(r, 200))
      }
      if (!cancelled) {
        await refresh()
        void loadAccount()
      }
    })()
    return () => {
      cancelled = true
    }
  }, [chat.status, chat.sessionId, refresh, loadAccount])

  // The model's context window. A session not measured yet gets the window the server learned
  // for its model from earlier sessions, or the store's default (200,000) when the server has not
  // seen the model yet: that would show "/ 200,000" and then jump to the model's real window. So
  // an unmeasured session uses a window measured for the model in the list, else the server's
  // number unless it is the default, else it says the window comes with the first reply.
  const ctx = chat.context
  const knownWindow = useMemo(() => {
    const model = chat.session?.model
    const measured = sessions.filter((s) => s.context && s.context.window > 0 && s.taskCount > 0)
    return (measured.find((s) => s.model === model) ?? measured[0])?.context?.window ?? null
  }, [sessions, chat.session?.model])
  const unmeasured = !!ctx && ctx.estimatedTokens === 0 && !chat.session?.context
  const windowTokens = ctx ? (unmeasured ? (knownWindow ?? (ctx.maxTokens !== STORE_DEFAULT_WINDOW ? ctx.maxTokens : null)) : ctx.maxTokens) : null
  const level = contextLevel(ctx)
  const pct = ctx ? ctx.usagePercentage : 0

  const canSend = (!chat.isLoading || chat.isStreaming) && !busy
  const submit = (e: React.FormEvent) => {
    e.preventDefault()
    const prompt = input.trim()
    if (!prompt || !canSend) return
    setInput('')
    setAppError(null)
    void (chat.isStreaming ? chat.sendMessage(prompt) : chat.send(prompt))
  }

  /** Runs a list action; its failure shows as an error. */
  const act = async (f: () => Promise<unknown>) => {
    setAppError(null)
    setBusy(true)
    try {
      await f()
    } catch (e) {
      setAppError(e as Error)
    } finally {
      setBusy(false)
    }
  }

  // "Start fresh": this conversation is archived and a new one opens. Only this one: forks and
  // other conversations of the project stay as they are (the package's startFresh archives every
  // active session of the project).
  const startFresh = () =>
    act(async () => {
      if (chat.sessionId) await post('session', { action: 'archive', sessionId: chat.sessionId })
      const { session } = await post<{ session: { id: string } }>('session', { action: 'getOrCreate', projectId, preferActive: false })
      await chat.selectSession(session.id)
      await chat.refresh()
    })

  const rename = (id: string, title: string) =>
    act(async () => {
      await post('session', { action: 'rename', sessionId: id, title })
      await chat.refresh()
    })

  const remove = (id: string) =>
    act(async () => {
      await post('session', { action: 'delete', sessionId: id })
      if (id === chat.sessionId) {
        const next = sessions.find((s) => s.id !== id && !isArchived(s))
        const nextId = next ? next.id : (await post<{ session: { id: string } }>('session', { action: 'getOrCreate', projectId, preferActive: false })).session.id
        await chat.selectSession(nextId)
      }
      await chat.refresh()
    })

  /** "Always allow for this session": the answer with `remember: 'session'`; the server turns it
   * into a rule for this tool in this session (it never changes the CLI's settings). A server
   * without that field answers 400: the tool is then allowed once, and the card says so. */
  const allowAlways = async (requestId: string, sessionId: string) => {
    setAnswered((a) => new Set(a).add(requestId))
    try {
      await post('permission', { sessionId, requestId, behavior: 'allow', remember: 'session' })
    } catch (e) {
      if ((e as { code?: string }).code !== 'INVALID_ARGUMENT') return setAppError(e as Error)
      setNote('This server cannot remember approvals: allowed once.')
      await chat.respondToPermission(requestId, { behavior: 'allow' })
    }
  }

  const shownError = appError ?? chat.error
  const explained = shownError ? explainError(shownError) : null
  const pending = chat.permissionRequests.filter((r) => !answered.has(r.requestId))
  const awaiting = new Set(pending.map((r) => r.toolUseID).filter((id): id is string => typeof id === 'string'))
  const parent = chat.session?.parentId ? sessions.find((s) => s.id === chat.session?.parentId) : undefined
  const budget = account?.budget

  return (
    <div className="app">
      <aside className="sidebar">
        <h2>Sessions</h2>
        <p className="muted small">
          project <code>{projectId}</code>
        </p>
        <SessionList sessions={sessions} currentId={chat.sessionId} busy={chat.isLoading || busy} onSelect={(id) => void chat.selectSession(id)} onRename={rename} onDelete={remove} />

        {budget && (
          <section className="budget" data-testid="budget" data-spent={budget.spentUsd} data-cap={budget.usd}>
            <h3>Spending {budget.period === 'day' ? 'today' : budget.period === 'month' ? 'this month' : ''}</h3>
            <div className="budget-track">
              <div className={`budget-fill ${budget.remainingUsd <= 0 ? 'critical' : budget.spentUsd / budget.usd > 0.8 ? 'warning' : 'ok'}`} style={{ width: `${Math.min(100, (100 * budget.spentUsd) / (budget.usd || 1))}%` }} />
            </div>
            <p className="muted small">
              ${budget.spentUsd.toFixed(2)} of ${budget.usd.toFixed(2)} · ${budget.remainingUsd.toFixed(2)} left
            </p>
          </section>
        )}

        <ContextPanel usage={chat.contextUsage} meterWindow={windowTokens} onRefresh={() => void chat.refreshContextUsage()} disabled={!chat.sessionId} />

        <section className="demo-user">
          <label className="small">
            Demo user{' '}
            <select
              data-testid="user-switcher"
              value={userId}
              onChange={(e) => {
                const here = window.location.pathname + window.location.search
                window.location.href = `/api/demo-login?user=${encodeURIComponent(e.target.value)}&next=${encodeURIComponent(here)}`
              }}
            >
              {[...new Set([userId, ...DEMO_USERS])].map((u) => (
                <option key={u} value={u}>
                  {u}
                </option>
              ))}
            </select>
          </label>
          <p className="muted small">Demo only: anyone can switch users here, no password. A real app uses its own sign-in (see lib/demo-auth.ts).</p>
        </section>
        <p className="muted small">{mode}</p>
      </aside>

      <main className="main">
        <header className="toolbar">
          <div className="meter" data-testid="meter" data-level={level} data-percentage={pct} data-tokens={ctx?.estimatedTokens ?? 0} data-window={windowTokens ?? 0}>
            <div className="meter-track">
              <div className={`meter-fill ${level}`} style={{ width: `${Math.min(100, Math.max(pct, ctx && ctx.estimatedTokens > 0 ? 0.5 : 0))}%` }} />
            </div>
            <span className="meter-label" data-testid="meter-label">
              {!ctx
                ? 'context: …'
                : windowTokens
                  ? `${fmt(ctx.estimatedTokens)} / ${fmt(windowTokens)} tokens · ${pct}%${ctx.shouldCompact ? ' · compact recommended' : ''}`
                  : `${fmt(ctx.estimatedTokens)} tokens · the window shows after the first reply`}
            </span>
          </div>
          <div className="actions">
            <button type="button" data-testid="compact" onClick={() => chat.compact()} disabled={chat.isLoading || busy || !chat.sessionId}>
              {chat.status === 'compacting' ? 'Compacting…' : 'Compact'}
            </button>
            <button type="button" data-testid="fork" onClick={() => chat.fork()} disabled={chat.isLoading || busy || !chat.sessionId}>
              Fork
            </button>
            {chat.branches.length > 0 && (
              <select
                data-testid="branches"
                value={chat.sessionId ?? ''}
                onChange={(e) => void chat.selectSession(e.target.value)}
                disabled={chat.isLoading || busy}
                title="Switch between this conversation and its branches"
              >
                <option value={chat.sessionId ?? ''}>this branch</option>
                {chat.branches.map((b) => (
                  <option key={b.sessionId} value={b.sessionId} data-relation={b.relation}>
                    {b.relation === 'parent' ? 'branched from: ' : 'branch: '}
                    {sessionName((sessions.find((s) => s.id === b.sessionId) ?? { id: b.sessionId }) as ListedSession)}
                  </option>
                ))}
              </select>
            )}
            <button type="button" data-testid="start-fresh" onClick={() => void startFresh()} disabled={chat.isLoading || busy} title="Archive this conversation and start a new one">
              Start fresh
            </button>
          </div>
        </header>

        <p className="muted small session-line" data-testid="current-session">
          {chat.sessionId ? (
            <>
              {chat.session ? <strong data-testid="current-title">{sessionName(chat.session as ListedSession)}</strong> : null} <code>{chat.sessionId}</code>
              {chat.session?.parentId && <> · fork of {parent ? `“${sessionName(parent)}”` : <code>{chat.session.parentId.slice(0, 8)}</code>}</>}
              {chat.session && isArchived(chat.session) && <> · archived (sending a message continues it)</>}
            </>
          ) : (
            'opening session…'
          )}
        </p>

        {explained && (
          <div className="error" role="alert" data-testid="error" data-code={shownError?.code}>
            <strong data-testid="error-title">{explained.title}</strong>
            {explained.detail && <span> {explained.detail}</span>}
            <span className="muted small"> ({shownError?.code})</span>
            <button
              type="button"
              className="link"
              onClick={() => {
                setAppError(null)
                chat.clearError()
              }}
            >
              dismiss
            </button>
          </div>
        )}
        {note && (
          <div className="info" role="status" data-testid="note">
            {note}
            <button type="button" className="link" onClick={() => setNote(null)}>
              dismiss
            </button>
          </div>
        )}

        <div className="messages" data-testid="messages">
          {inheritedFrom && (
            <p className="inherited muted small" data-testid="inherited">
              This fork has not run yet. It continues from the conversation below (from {parent ? `“${sessionName(parent)}”` : 'its parent'}); your next message is its first.
            </p>
          )}
          {chat.messages.length === 0 && !inheritedFrom && <p className="muted empty">No messages yet. Ask something.</p>}
          {chat.messages.map((m) => (
            <Fragment key={m.id}>
              <Message message={m as ThreadMessage} results={results} awaiting={awaiting} />
              {m.role === 'user' &&
                !chat.isLoading &&
                (editing?.id === m.id ? (
                  <form className="edit-form" onSubmit={saveEdit}>
                    <textarea data-testid="edit-text" value={editing.text} onChange={(e) => setEditing({ id: m.id, text: e.target.value })} rows={2} />
                    <button type="submit" data-testid="edit-send" disabled={!editing.text.trim()}>
                      Send edited
                    </button>
                    <button type="button" className="link" onClick={() => setEditing(null)}>
                      cancel
                    </button>
                  </form>
                ) : (
                  <div className="turn-actions muted small">
                    <button type="button" className="link" data-testid="edit-message" onClick={() => setEditing({ id: m.id, text: m.content })}>
                      edit
                    </button>
                    <button type="button" className="link" data-testid="undo-turn" onClick={() => void undoTurn(m.id)} title="Drop this message and everything after it, and restore the files the agent changed since">
                      undo this turn (files too)
                    </button>
                  </div>
                ))}
            </Fragment>
          ))}
          {pending.map((r) => (
            <PermissionCard
              key={r.requestId}
              request={r}
              onAllow={() => void chat.respondToPermission(r.requestId, { behavior: 'allow' })}
              onAlways={() => void allowAlways(r.requestId, r.sessionId || chat.sessionId || '')}
              onDeny={() => void chat.respondToPermission(r.requestId, { behavior: 'deny', message: 'The user denied this in the browser.' })}
            />
          ))}
          <div ref={bottom} />
        </div>

        <form className="composer" onSubmit={submit}>
          <textarea
            data-testid="prompt"
            value={input}
            placeholder={chat.isStreaming ? 'Claude is working: a message now goes to this task…' : 'Message Claude…  (Enter to send, Shift+Enter for a new line)'}
            onChange={(e) => setInput(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === 'Enter' && !e.shiftKey) submit(e)
            }}
            rows={2}
          />
          <button type="submit" data-testid="send" disabled={!canSend || !input.trim()}>
            Send
          </button>
          {chat.isStreaming && (
            <button type="button" data-testid="stop" onClick={chat.abort}>
              Stop
            </button>
          )}
        </form>
      </main>
    </div>
  )
}

/** The context as the CLI counts it, by category: a bar and a number each. */
function ContextPanel({ usage, meterWindow, onRefresh, disabled }: { usage: ContextUsageView | null; meterWindow: number | null; onRefresh: () => void; disabled: boolean }) {
  // A session not measured yet: the same window as the meter (see there), or none yet.
  const unmeasured = usage?.source === 'store' && usage.total === 0
  const window = usage ? (unmeasured ? (meterWindow ?? 0) : usage.window) : 0
  return (
    <section className="context-panel" data-testid="context-panel" data-source={usage?.source ?? ''} data-total={usage?.total ?? 0}>
      <div className="context-head">
        <h3>Context</h3>
        <button type="button" className="link" data-testid="context-refresh" onClick={onRefresh} disabled={disabled}>
          refresh
        </button>
      </div>
      {!usage ? (
        <p className="muted small">…</p>
      ) : (
        <>
          <p className="muted small" data-testid="context-total">
            {window ? `${fmt(usage.total)} / ${fmt(window)} tokens · ${usage.percentage}%` : `${fmt(usage.total)} tokens`} · {usage.source === 'cli' ? "the CLI's count" : 'stored meter'}
          </p>
          {usage.categories.length === 0 ? (
            <p className="muted small">The breakdown shows while the session&apos;s CLI is running.</p>
          ) : (
            <ul className="context-categories">
              {usage.categories.map((c) => (
                <li key={c.id} data-testid="context-category" data-id={c.id} data-kind={c.kind} data-tokens={c.tokens}>
                  <span className="context-name">{c.name}</span>
                  <span className="context-tokens">{fmt(c.tokens)}</span>
                  <span className="context-track">
                    <span className={`context-fill ${c.kind}`} style={{ width: `${window > 0 ? Math.max(0.5, (100 * c.tokens) / window) : 0}%` }} />
                  </span>
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </section>
  )
}
