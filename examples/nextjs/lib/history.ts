// Server side: turns a session's history (SessionManager.getMessages) into what the page shows.
//
// getMessages returns the conversation as the CLI's transcript has it, which includes lines that
// are not the user's words: the summary a compaction left (a user message that names the
// transcript's path on this server), the `/compact` command and its output, tool results (user
// messages too), notifications. Shown as they are, they would be "You" bubbles, and a server path
// would reach the browser. This module keeps the user's prompts and the model's replies, attaches
// each tool result to its call, turns a compaction into a system note, and blanks out server
// paths (home folder, the addon's state folder) in everything it returns.
import os from 'node:os'
import type { MessagesPage } from 'claude-session-manager'

type Block = MessagesPage['messages'][number]['blocks'][number]

/** A tool call with its result (when it has one). */
export interface ToolView {
  id: string
  name: string
  input: unknown
  result?: { content: string; isError: boolean; truncated: boolean }
}

/** One entry of the thread as the page gets it. */
export interface ThreadEntry {
  id: string
  role: 'user' | 'assistant' | 'system'
  /** `prompt`, `assistant`, or `compaction` (a system note). */
  kind: 'prompt' | 'assistant' | 'compaction'
  text: string
  toolUses?: ToolView[]
  createdAt?: number
  /** For a compaction: tokens before it, and the summary the model continued from (paths removed). */
  compaction?: { preTokens?: number; trigger?: string; summary: string }
}

/** What the page's history request answers. */
export interface ThreadPage {
  messages: ThreadEntry[]
  total: number
  compactions: number
  /** Set when the session has no history of its own yet (an unused fork): the parent's, shown instead. */
  inheritedFrom?: string
  /** Sessions forked from this one, with the message each continues from. */
  branches?: MessagesPage['branches']
  /** For a fork made at a message: that message of its parent. */
  forkedAt?: string
}

/** Folders of this server that must not reach a browser, longest first. */
function serverFolders(stateDirectory?: string): string[] {
  const dirs = [stateDirectory, process.env.CLAUDE_SESSIONS_STATE_DIR, process.env.CLAUDE_CONFIG_DIR, os.homedir(), process.env.HOME]
  return [...new Set(dirs.filter((d): d is string => typeof d === 'string' && d.length > 1).map((d) => d.replace(/\/+$/, '')))].sort((a, b) => b.length - a.length)
}

/** `text` with this server's folders replaced by placeholders. */
export function scrubPaths(text: string, stateDirectory?: string): string {
  let out = text
  for (const dir of serverFolders(stateDirectory)) {
    const label = dir === stateDirectory || dir === process.env.CLAUDE_SESSIONS_STATE_DIR ? '<server>' : '~'
    out = out.split(dir).join(label)
  }
  // A transcript file anywhere else (e.g. a tenant folder outside both): never its location.
  return out.replace(/(?:\/[^\s/"'`]+)+\.jsonl\b/g, '<transcript>')
}

/** Every string inside a tool input, scrubbed. */
function scrubDeep(value: unknown, stateDirectory?: string): unknown {
  if (typeof value === 'string') return scrubPaths(value, stateDirectory)
  if (Array.isArray(value)) return value.map((v) => scrubDeep(v, stateDirectory))
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, scrubDeep(v, stateDirectory)]))
  return value
}

/** The summary part of the CLI's compaction message: without its preamble, its reminders and the
 * sentences that point at the transcript file or instruct the model. */
export function compactionSummary(text: string): string {
  return text
    .replace(/<system-reminder>[\s\S]*?<\/system-reminder>/g, '')
    .split('\n')
    .filter((line) => !/^This session is being continued from a previous conversation/.test(line))
    .filter((line) => !/read the full transcript at:/i.test(line))
    .filter((line) => !/^Continue the conversation from where it left off/.test(line))
    .filter((line) => !/^The messages after this summary are the most recent messages/.test(line))
    .join('\n')
    .trim()
}

const textOf = (blocks: Block[]) =>
  blocks
    .filter((b): b is Extract<Block, { type: 'text' }> => b.type === 'text')
    .map((b) => b.text)
    .join('\n\n')

/** A user message that is really the CLI's (a slash command or its output), not the user's words. */
const looksLikeCommand = (text: string) => /^\s*<(command-name|command-message|command-args|local-command-stdout|local-command-stderr)>/.test(text)

/** The thread shown for one page of `getMessages`. */
export function toThread(page: MessagesPage, stateDirectory?: string): ThreadPage {
  const out: ThreadEntry[] = []
  const calls = new Map<string, ToolView>()
  for (const m of page.messages) {
    const createdAt = m.timestamp ? Date.parse(m.timestamp) || undefined : undefined
    if (m.kind === 'compactSummary') {
      out.push({
        id: m.uuid,
        role: 'system',
        kind: 'compaction',
        text: 'Conversation compacted: the model continues from a summary of the earlier messages.',
        createdAt,
        compaction: { preTokens: m.compaction?.preTokens, trigger: m.compaction?.trigger, summary: scrubPaths(compactionSummary(m.text), stateDirectory) },
      })
      continue
    }
    if (m.kind === 'toolResults') {
      for (const b of m.blocks) {
        if (b.type !== 'toolResult') continue
        const call = calls.get(b.toolUseId)
        if (call) call.result = { content: scrubPaths(b.content, stateDirectory), isError: b.isError, truncated: b.truncated }
      }
      continue
    }
    if (m.role === 'assistant') {
      const toolUses: ToolView[] = []
      for (const b of m.blocks) {
        if (b.type !== 'toolUse') continue
        const call: ToolView = { id: b.id, name: b.name, input: scrubDeep(b.input, stateDirectory) }
        calls.set(b.id, call)
        toolUses.push(call)
      }
      const text = scrubPaths(textOf(m.blocks), stateDirectory)
      if (!text.trim() && toolUses.length === 0) continue
      out.push({ id: m.uuid, role: 'assistant', kind: 'assistant', text, toolUses, createdAt })
      continue
    }
    // User messages: only what the user typed. Commands, their output, notifications and the
    // CLI's meta lines are not shown (a compaction has its note above).
    if (m.kind !== 'prompt' || looksLikeCommand(m.text) || !m.text.trim()) continue
    out.push({ id: m.uuid, role: 'user', kind: 'prompt', text: scrubPaths(m.text, stateDirectory), createdAt })
  }
  return { messages: out, total: page.total, compactions: page.compactions }
}

/** The first thing the user typed in a page of history, or null. */
export function firstPrompt(page: MessagesPage): string | null {
  const m = page.messages.find((x) => x.kind === 'prompt' && !looksLikeCommand(x.text) && x.text.trim())
  return m ? m.text.trim().slice(0, 200) : null
}
