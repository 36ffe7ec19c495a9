'use client'

import { useEffect, useRef, useState } from 'react'
import { contextLevel, useClaudeSession } from 'claude-session-manager/react'
import type { ClaudeMessage, ContextUsageView, PermissionRequestEvent } from 'claude-session-manager/react'

const short = (id: string) => id.slice(0, 8)
const time = (ms: number) => new Date(ms).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' })

export function Chat({ projectId, userId, mode }: { projectId: string; userId: string; mode: string }) {
  const chat = useClaudeSession({ projectId })
  const [input, setInput] = useState('')
  const bottom = useRef<HTMLDivElement>(null)
  useEffect(() => {
    bottom.current?.scrollIntoView({ block: 'end' }) // (a block body: scrollIntoView may return a promise)
  }, [chat.messages, chat.permissionRequests])

  const ctx = chat.context
  const level = contextLevel(ctx)
  const pct = ctx ? ctx.usagePercentage : 0

  // While Claude works the input stays open: what you send then goes to the running task
  // (steering), and the model sees it in that task.
  const canSend = !chat.isLoading || chat.isStreaming
  const submit = (e: React.FormEvent) => {
    e.preventDefault()
    const prompt = input.trim()
    if (!prompt || !canSend) return
    setInput('')
    void (chat.isStreaming ? chat.sendMessage(prompt) : chat.send(prompt))
  }

  return (
    <div className="app">
      <aside className="sidebar">
        <h2>Sessions</h2>
        <p className="muted">
          project <code>{projectId}</code> · user <code>{userId}</code>
        </p>
        <ul className="sessions" data-testid="session-list">
          {chat.sessions.map((s) => (
            <li key={s.id}>
              <button
                type="button"
                className={`session${s.id === chat.sessionId ? ' current' : ''}`}
                data-session-id={s.id}
                data-status={s.status}
                onClick={() => chat.selectSession(s.id)}
                disabled={chat.isLoading || s.id === chat.sessionId}
              >
                <span className="sid">{s.title || short(s.id)}</span>
                <span className={`badge ${s.status}`}>{s.status}</span>
                {s.parentId && <span className="badge fork">fork of {short(s.parentId)}</span>}
                <span className="meta">
                  {s.taskCount} task{s.taskCount === 1 ? '' : 's'} · ${s.totalCostUsd.toFixed(4)} · {time(s.lastActiveAt)}
                </span>
              </button>
            </li>
          ))}
        </ul>
        <ContextPanel usage={chat.contextUsage} onRefresh={() => void chat.refreshContextUsage()} disabled={!chat.sessionId} />
        <p className="muted small">{mode}</p>
      </aside>

      <main className="main">
        <header className="toolbar">
          <div className="meter" data-testid="meter" data-level={level} data-percentage={pct} data-tokens={ctx?.estimatedTokens ?? 0}>
            <div className="meter-track">
              <div className={`meter-fill ${level}`} style={{ width: `${Math.min(100, Math.max(pct, ctx && ctx.estimatedTokens > 0 ? 0.5 : 0))}%` }} />
            </div>
            <span className="meter-label" data-testid="meter-label">
              {ctx
                ? `${ctx.estimatedTokens.toLocaleString('en-US')} / ${ctx.maxTokens.toLocaleString('en-US')} tokens · ${pct}%${ctx.shouldCompact ? ' · compact recommended' : ''}`
                : 'context: …'}
            </span>
          </div>
          <div className="actions">
            <button type="button" data-testid="compact" onClick={() => chat.compact()} disabled={chat.isLoading || !chat.sessionId}>
              {chat.status === 'compacting' ? 'Compacting…' : 'Compact'}
            </button>
            <button type="button" data-testid="fork" onClick={() => chat.fork()} disabled={chat.isLoading || !chat.sessionId}>
              Fork
            </button>
            <button type="button" data-testid="start-fresh" onClick={() => chat.startFresh()} disabled={chat.isLoading}>
              Start fresh
            </button>
          </div>
        </header>

        <p className="muted small session-line" data-testid="current-session">
          {chat.sessionId ? (
            <>
              session <code>{chat.sessionId}</code>
              {chat.session?.parentId && (
                <>
                  {' '}
                  (fork of <code>{short(chat.session.parentId)}</code>)
                </>
              )}
            </>
          ) : (
            'opening session…'
          )}
        </p>

        {chat.error && (
          <div className="error" role="alert" data-testid="error">
            <strong>{chat.error.code}</strong> {chat.error.message}
            <button type="button" className="link" onClick={chat.clearError}>
              dismiss
            </button>
          </div>
        )}

        <div className="messages" data-testid="messages">
          {chat.messages.length === 0 && <p className="muted empty">No messages yet. Ask something.</p>}
          {chat.messages.map((m) => (
            <Message key={m.id} message={m} />
          ))}
          {chat.permissionRequests.map((r) => (
            <PermissionCard
              key={r.requestId}
              request={r}
              onAllow={() => void chat.respondToPermission(r.requestId, { behavior: 'allow' })}
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

function Message({ message: m }: { message: ClaudeMessage }) {
  return (
    <div className={`message ${m.role} ${m.status}`} data-role={m.role} data-status={m.status}>
      <div className="who">{m.role === 'user' ? 'You' : m.role === 'assistant' ? 'Claude' : 'Note'}</div>
      <div className="text">
        {m.content || (m.status === 'streaming' ? '…' : '')}
        {m.status === 'streaming' && <span className="cursor">▍</span>}
        {m.status === 'aborted' && <span className="muted small"> (stopped)</span>}
      </div>
      {m.toolUses && m.toolUses.length > 0 && (
        <div className="tools muted small">tools: {m.toolUses.map((t) => t.name).join(', ')}</div>
      )}
      {m.result && m.result.permissionDenials.length > 0 && (
        <div className="denied small" data-testid="permission-denied">
          denied: {m.result.permissionDenials.map((d: { tool_name?: string }) => d.tool_name ?? 'a tool').join(', ')}
        </div>
      )}
      {m.result && (
        <div className="muted small">
          ${m.result.cost.toFixed(4)} · {m.result.turns} turn{m.result.turns === 1 ? '' : 's'} · {(m.result.duration.total / 1000).toFixed(1)} s
        </div>
      )}
    </div>
  )
}

const str = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2))

/** A tool waiting for the user's decision: what it wants to do, with Allow and Deny. */
function PermissionCard({ request: r, onAllow, onDeny }: { request: PermissionRequestEvent; onAllow: () => void; onDeny: () => void }) {
  const [answered, setAnswered] = useState(false)
  const input = r.input
  const file = typeof input.file_path === 'string' ? input.file_path : null
  let body: React.ReactNode
  if (r.toolName === 'Write' && file) {
    body = (
      <>
        <div className="perm-file" data-testid="permission-file">{file}</div>
        <pre className="perm-diff">
          {str(input.content ?? '').split('\n').map((line, i) => (
            <div key={i} className="add">+ {line}</div>
          ))}
        </pre>
      </>
    )
  } else if (r.toolName === 'Edit' && file) {
    body = (
      <>
        <div className="perm-file" data-testid="permission-file">{file}{input.replace_all === true ? ' (every occurrence)' : ''}</div>
        <pre className="perm-diff">
          {str(input.old_string ?? '').split('\n').map((line, i) => (
            <div key={`o${i}`} className="del">- {line}</div>
          ))}
          {str(input.new_string ?? '').split('\n').map((line, i) => (
            <div key={`n${i}`} className="add">+ {line}</div>
          ))}
        </pre>
      </>
    )
  } else {
    body = <pre className="perm-diff">{JSON.stringify(input, null, 2)}</pre>
  }
  const answer = (f: () => void) => () => {
    setAnswered(true)
    f()
  }
  return (
    <div className="permission" data-testid="permission-card" data-tool={r.toolName} role="group" aria-label={`Permission for ${r.toolName}`}>
      <div className="perm-head">
        Claude wants to use <strong data-testid="permission-tool">{r.toolName}</strong>
      </div>
      {body}
      <div className="perm-actions">
        <button type="button" className="allow" data-testid="permission-allow" onClick={answer(onAllow)} disabled={answered}>
          Allow
        </button>
        <button type="button" className="deny" data-testid="permission-deny" onClick={answer(onDeny)} disabled={answered}>
          Deny
        </button>
      </div>
    </div>
  )
}

/** The context as the CLI counts it, by category: a bar and a number each. */
function ContextPanel({ usage, onRefresh, disabled }: { usage: ContextUsageView | null; onRefresh: () => void; disabled: boolean }) {
  const fmt = (n: number) => n.toLocaleString('en-US')
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
            {fmt(usage.total)} / {fmt(usage.window)} tokens · {usage.percentage}% · {usage.source === 'cli' ? "the CLI's count" : 'stored meter'}
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
                    <span className={`context-fill ${c.kind}`} style={{ width: `${usage.window > 0 ? Math.max(0.5, (100 * c.tokens) / usage.window) : 0}%` }} />
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
