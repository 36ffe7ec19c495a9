// The server side of the example: one SessionManager for the process and the route handlers
// over it. Route files import `routes` from here (one line each).
//
// With ANTHROPIC_API_KEY set, the `claude` CLI talks to the real Anthropic API. Without it, the
// package's stand-in API server (claude-session-manager/testing) is started in this process and
// the CLI is pointed at it, so the whole app works offline and costs nothing.
import path from 'node:path'
import type { SessionManager, SessionManagerOptions } from 'claude-session-manager'
import { createClaudeRoutes, getSessionManager } from 'claude-session-manager/next'
import { getUserId } from './demo-auth'
import { setNotesFolder } from './session-notes'

// Where agents work: with CLAUDE_WORKING_DIR set, that folder (the addon reads the variable);
// else each session gets a folder of its own under the addon's workspace root. Never this app's
// own folder: an agent there could read its code and `.env` files (the addon refuses it).
// The session database lives in the addon's private state folder (CLAUDE_SESSIONS_STATE_DIR or
// CLAUDE_SESSIONS_DB to move it), never inside a working directory.

export const usingRealApi = Boolean(process.env.ANTHROPIC_API_KEY)

const SETUP = Symbol.for('claude-session-manager.example.setup')
type WithSetup = typeof globalThis & { [SETUP]?: Promise<SessionManager> }

/** The shared manager, made once per process (kept on globalThis, so dev-mode reloads reuse it). */
export function manager(): Promise<SessionManager> {
  const g = globalThis as WithSetup
  if (!g[SETUP]) {
    g[SETUP] = setup().catch((error) => {
      delete g[SETUP] // try again on the next request
      throw error
    })
  }
  return g[SETUP]
}

async function setup(): Promise<SessionManager> {
  // The session store: PostgreSQL when CLAUDE_SESSIONS_DATABASE_URL is set (several server
  // instances can then share it), else a SQLite file in the addon's state folder.
  const databaseUrl = process.env.CLAUDE_SESSIONS_DATABASE_URL
  const store = databaseUrl ? { databaseUrl, databaseSchema: process.env.CLAUDE_SESSIONS_DATABASE_SCHEMA || undefined } : {}
  // A spend cap per user and day (USD), enforced by the package's key proxy on every model call.
  const perDay = Number(process.env.BUDGET_USD_PER_USER_PER_DAY || 0)
  const budgets = perDay > 0 ? { budgets: { perUser: { usd: perDay, period: 'day' as const } } } : {}
  let m: SessionManager
  if (usingRealApi) {
    m = getSessionManager({ ...store, ...budgets })
    console.log('[claude] real Anthropic API')
  } else {
    m = await standInManager({ ...store, ...budgets })
  }
  await demoBudgets(m)
  setNotesFolder(m.info().stateDirectory)
  return m
}

/**
 * DEMO ONLY: `DEMO_USER_BUDGETS` (JSON, e.g. `{"carol": 0.05}`) gives demo users a daily cap of
 * their own, so the page's "spending limit reached" can be seen. A real app sets budgets from
 * its own server code (an admin screen, a billing plan), never from the browser.
 */
async function demoBudgets(m: SessionManager) {
  const raw = process.env.DEMO_USER_BUDGETS
  if (!raw) return
  for (const [userId, usd] of Object.entries(JSON.parse(raw) as Record<string, number>)) {
    await m.setBudget({ scope: 'user', userId, usd, period: 'day' })
  }
}

// Offline: the stand-in API. Its default reply echoes the prompt; here it also pads the usage it
// reports by DEMO_TOKENS_PER_TURN tokens per user turn, so the context meter visibly fills up
// (and Compact visibly empties it) without a real, long conversation. A few prompts get other
// answers, to show what the page does with them:
// - `markdown`: a reply in Markdown (a heading, a list, a table, a code block);
// - `write <file> <text>`: a Write tool call (the approval card shows the new file);
// - `edit <file> <old> => <new>`: an Edit tool call (the card shows the change as a diff);
// - `run <command>`: a Bash tool call (the thread shows the command and its output);
// - `slow <words>`: the echo, one word every 200 ms (time to reload the page mid-reply).
async function standInManager(options: SessionManagerOptions): Promise<SessionManager> {
  const { startStandInServer, echoReply, summarizeUserTurns, countInputTokens } = await import('claude-session-manager/testing')
  const perTurn = Number(process.env.DEMO_TOKENS_PER_TURN || 150000)
  const server = await startStandInServer({
    defaultReply: (req) => {
      const { turns, lastText } = summarizeUserTurns(req.body)
      const usage = { input_tokens: countInputTokens(req.body) + turns * perTurn }
      // The CLI's compaction asks for a summary: answer with a short one, at once.
      if (lastText.startsWith('CRITICAL: Respond with TEXT ONLY')) {
        return { text: `Summary (stand-in): ${turns - 1} earlier messages, nothing to keep.`, usage }
      }
      // After one of its own tool calls: a line saying what happened.
      const after = afterTool(req.body)
      if (after) return { text: after, usage }
      if (/^markdown\b/i.test(lastText)) return { text: MARKDOWN_SAMPLE, chunkDelayMs: 5, usage }
      if (/^slow\b/i.test(lastText)) return { ...echoReply(req), chunkDelayMs: 200, usage }
      const call = toolCall(lastText, workingDirectoryOf(req.body))
      if (call) return { toolUse: call, usage }
      return { ...echoReply(req), chunkDelayMs: 25, usage } // streamed word by word
    },
  })
  const m = getSessionManager({ ...options, env: server.env() })
  console.log(`[claude] no ANTHROPIC_API_KEY: using the stand-in API at ${server.url}`)
  return m
}

/** The stand-in's Markdown reply (`markdown`). The raw HTML in it is shown as text, never run. */
const MARKDOWN_SAMPLE = [
  '## A Markdown reply',
  '',
  'Replies are rendered as **Markdown**: lists, `inline code`, tables and code blocks.',
  '',
  '- one',
  '- two',
  '',
  '| tool | needs permission |',
  '| --- | --- |',
  '| Read | no |',
  '| Write | yes |',
  '',
  '```ts',
  "export const greet = (name: string) => `hello ${name}`",
  '```',
  '',
  'Raw HTML from the model is not injected: <img src="x" onerror="window.__injected = true"> stays text.',
].join('\n')

/** The tool call a demo prompt asks for (`write`, `edit`, `run`), or null. */
function toolCall(text: string, cwd: string | null): { name: string; input: Record<string, unknown> } | null {
  const write = /^write\s+([\w.-]+)\s+([\s\S]+)$/.exec(text)
  if (write && cwd && !write[1].startsWith('.')) return { name: 'Write', input: { file_path: path.join(cwd, write[1]), content: write[2] } }
  const edit = /^edit\s+([\w.-]+)\s+([\s\S]+?)\s+=>\s+([\s\S]+)$/.exec(text)
  if (edit && cwd && !edit[1].startsWith('.')) return { name: 'Edit', input: { file_path: path.join(cwd, edit[1]), old_string: edit[2], new_string: edit[3] } }
  const run = /^run\s+([\s\S]+)$/.exec(text)
  if (run) return { name: 'Bash', input: { command: run[1], description: 'Run the command the user asked for' } }
  return null
}

/** The session's working directory, as the CLI tells the model ("Primary working directory"). */
function workingDirectoryOf(body: unknown): string | null {
  const m = /Primary working directory: ([^"\\\n]+)/.exec(JSON.stringify(body ?? ''))
  return m ? m[1].trim() : null
}

type Block = { type?: string; id?: string; name?: string; input?: { file_path?: string }; tool_use_id?: string; is_error?: boolean; content?: unknown; text?: string }
type ApiMessage = { role?: string; content?: string | Block[] }

const blocksOf = (m: ApiMessage): Block[] => (Array.isArray(m.content) ? m.content : typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : [])

/** How the CLI hands the model a message the user sent while it worked (the page's input stays
 * open during a task: POST /api/claude/message). */
const MID_TURN = /The user sent a new message while you were working:\n([\s\S]*?)\n\n/

/**
 * The stand-in's answer to the result of its own tool call (after the request's last assistant
 * message), or null. It names the messages the user sent meanwhile, so the page shows that the
 * model saw them.
 */
function afterTool(body: { messages?: ApiMessage[] }): string | null {
  const messages = body?.messages ?? []
  let i = messages.length - 1
  while (i >= 0 && messages[i].role !== 'assistant') i--
  if (i < 0) return null
  const tail = messages.slice(i + 1).flatMap(blocksOf)
  const call = blocksOf(messages[i]).find((b) => b.type === 'tool_use' && (b.name === 'Write' || b.name === 'Edit' || b.name === 'Bash'))
  const result = call && tail.find((b) => b.type === 'tool_result' && b.tool_use_id === call.id)
  if (!call || !result) return null
  const file = path.basename(call.input?.file_path ?? '')
  const text = typeof result.content === 'string' ? result.content : Array.isArray(result.content) ? result.content.map((b: Block) => b.text ?? '').join(' ') : ''
  const verb = call.name === 'Write' ? `write ${file}` : call.name === 'Edit' ? `edit ${file}` : 'run the command'
  const done = call.name === 'Write' ? `Wrote ${file}.` : call.name === 'Edit' ? `Edited ${file}.` : 'Ran the command.'
  const answer = result.is_error ? `Did not ${verb}: ${text}` : done
  const said = tail.map((b) => (b.type === 'text' && typeof b.text === 'string' ? MID_TURN.exec(b.text)?.[1] : undefined)).filter(Boolean)
  return said.length ? `${answer} You also said: ${said.join(' / ')}` : answer
}

export const routes = createClaudeRoutes({
  getUserId, // ← your authentication goes here
  manager,
  // Server-side task settings a browser may not change (see clientTaskFields).
  // permissionMode 'default': a tool that changes files (Write, Edit, Bash) needs the user's yes.
  taskDefaults: { maxTurns: 8, permissionMode: 'default' },
  // Ask the user (the page's approval card, POST /api/claude/permission) instead of denying.
  permissionPrompts: true,
})
