'use client'

// The thread: messages (replies rendered as Markdown), the tool calls in them with their input and
// result, system notes (compaction), and the approval card of a tool that waits for the user.
import { memo, useState } from 'react'
import ReactMarkdown from 'react-markdown'
import remarkGfm from 'remark-gfm'
import type { ClaudeMessage, PermissionRequestEvent } from 'claude-session-manager/react'
import { explainError } from './errors'

/** A tool's result as the thread shows it. */
export interface ToolResultView {
  content: string
  isError: boolean
  truncated?: boolean
}

/** A message on screen, with what the app adds to the hook's (history notes). */
export type ThreadMessage = ClaudeMessage & {
  kind?: 'prompt' | 'assistant' | 'compaction'
  compaction?: { preTokens?: number; summary: string }
}

const str = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2))
const lines = (v: unknown) => str(v ?? '').split('\n')

/**
 * Markdown from the model. react-markdown builds React elements from the Markdown: HTML in the
 * text is not rendered (no rehype-raw), links get no `javascript:` URLs, and nothing goes through
 * dangerouslySetInnerHTML.
 */
export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="markdown">
      <ReactMarkdown
        remarkPlugins={[remarkGfm]}
        components={{
          a: ({ node: _node, ...props }) => <a {...props} target="_blank" rel="noopener noreferrer nofollow" />,
          img: ({ node: _node, alt }) => <span className="muted">[image{alt ? `: ${alt}` : ''}]</span>,
        }}
      >
        {text}
      </ReactMarkdown>
    </div>
  )
})

/** The change a Write or Edit makes, as added/removed lines; the input of other tools. */
export function ToolInput({ name, input, fileTestId = 'tool-file' }: { name: string; input: Record<string, unknown>; fileTestId?: string }) {
  const file = typeof input.file_path === 'string' ? input.file_path : null
  if (name === 'Write' && file) {
    return (
      <>
        <div className="tool-file" data-testid={fileTestId}>{file}</div>
        <pre className="diff">
          {lines(input.content).map((line, i) => (
            <div key={i} className="add">+ {line}</div>
          ))}
        </pre>
      </>
    )
  }
  if (name === 'Edit' && file) {
    return (
      <>
        <div className="tool-file" data-testid={fileTestId}>
          {file}
          {input.replace_all === true ? ' (every occurrence)' : ''}
        </div>
        <pre className="diff">
          {lines(input.old_string).map((line, i) => (
            <div key={`o${i}`} className="del">- {line}</div>
          ))}
          {lines(input.new_string).map((line, i) => (
            <div key={`n${i}`} className="add">+ {line}</div>
          ))}
        </pre>
      </>
    )
  }
  if (name === 'Bash' && typeof input.command === 'string') {
    return (
      <>
        {typeof input.description === 'string' && <div className="tool-file">{input.description}</div>}
        <pre className="diff command" data-testid="tool-command">$ {input.command}</pre>
      </>
    )
  }
  return <pre className="diff">{JSON.stringify(input, null, 2)}</pre>
}

/** One tool call in the thread: what it was asked to do and what came back. */
function ToolCard({ tool, result }: { tool: { id: string; name: string; input: unknown }; result?: ToolResultView }) {
  const input = tool.input && typeof tool.input === 'object' ? (tool.input as Record<string, unknown>) : {}
  const state = !result ? 'pending' : result.isError ? 'error' : 'ok'
  return (
    <details className={`tool-card ${state}`} data-testid="tool-card" data-tool={tool.name} data-state={state} open>
      <summary>
        <span className="tool-name">{tool.name}</span>
        <span className="muted small">{state === 'pending' ? ' running or waiting…' : state === 'error' ? ' failed or denied' : ' done'}</span>
      </summary>
      <ToolInput name={tool.name} input={input} />
      {result && (
        <pre className={`tool-output${result.isError ? ' error' : ''}`} data-testid="tool-output">
          {result.content || (result.isError ? '(error)' : '(no output)')}
          {result.truncated ? '\n… (cut short)' : ''}
        </pre>
      )}
    </details>
  )
}

/** A message of the thread. */
export function Message({ message: m, results, awaiting }: { message: ThreadMessage; results: Record<string, ToolResultView>; awaiting?: Set<string> }) {
  if (m.role === 'system') {
    return (
      <div className="message system" data-role="system" data-status={m.status} data-kind={m.kind ?? 'note'} data-testid="system-note">
        <div className="text">{m.content}</div>
        {m.compaction && (
          <details className="small">
            <summary>
              summary the model continues from
              {m.compaction.preTokens ? ` (replaces ${m.compaction.preTokens.toLocaleString('en-US')} tokens)` : ''}
            </summary>
            <Markdown text={m.compaction.summary || '(empty)'} />
          </details>
        )}
      </div>
    )
  }
  // (a call waiting for the user's answer shows on its approval card instead)
  const tools = (m.toolUses ?? []).filter((t) => !awaiting?.has(t.id))
  // A task that failed: what happened in words (the CLI's own text, e.g. "API Error: 402 …", stays
  // under "details").
  const failed = m.status === 'error' && m.result && !m.result.success && m.result.error ? m.result.error : null
  return (
    <div className={`message ${m.role} ${m.status}`} data-role={m.role} data-status={m.status}>
      <div className="who">{m.role === 'user' ? 'You' : 'Claude'}</div>
      <div className="text">
        {failed ? (
          <>
            <span className="error-text" data-testid="reply-error">{explainError(failed).title}</span>
            {m.content && (
              <details className="small muted">
                <summary>details</summary>
                {m.content}
              </details>
            )}
          </>
        ) : m.role === 'assistant' ? (
          m.content ? <Markdown text={m.content} /> : m.status === 'streaming' && tools.length === 0 ? '…' : ''
        ) : (
          m.content
        )}
        {m.status === 'streaming' && <span className="cursor">▍</span>}
        {m.status === 'aborted' && <span className="muted small"> (stopped)</span>}
      </div>
      {tools.map((t) => (
        <ToolCard key={t.id} tool={t} result={results[t.id]} />
      ))}
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

/** A tool waiting for the user's decision: what it wants to do, then Allow once, Always allow
 * (this tool, for the rest of this conversation; the server bounds the rule) or Deny. */
export function PermissionCard({
  request: r,
  onAllow,
  onAlways,
  onDeny,
}: {
  request: PermissionRequestEvent
  onAllow: () => void
  onAlways: () => void
  onDeny: () => void
}) {
  const [answered, setAnswered] = useState(false)
  const answer = (f: () => void) => () => {
    setAnswered(true)
    f()
  }
  return (
    <div className="permission" data-testid="permission-card" data-tool={r.toolName} role="group" aria-label={`Permission for ${r.toolName}`}>
      <div className="perm-head">
        Claude wants to use <strong data-testid="permission-tool">{r.toolName}</strong>
      </div>
      <ToolInput name={r.toolName} input={r.input} fileTestId="permission-file" />
      <div className="perm-actions">
        <button type="button" className="allow" data-testid="permission-allow" onClick={answer(onAllow)} disabled={answered}>
          Allow once
        </button>
        <button type="button" className="always" data-testid="permission-always" onClick={answer(onAlways)} disabled={answered} title={`Allow ${r.toolName} without asking again in this conversation`}>
          Always allow for this session
        </button>
        <button type="button" className="deny" data-testid="permission-deny" onClick={answer(onDeny)} disabled={answered}>
          Deny
        </button>
      </div>
    </div>
  )
}
