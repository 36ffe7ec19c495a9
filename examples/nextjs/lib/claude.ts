// The server side of the example: one SessionManager for the process and the route handlers
// over it. Route files import `routes` from here (one line each).
//
// With ANTHROPIC_API_KEY set, the `claude` CLI talks to the real Anthropic API. Without it, the
// package's stand-in API server (claude-session-manager/testing) is started in this process and
// the CLI is pointed at it, so the whole app works offline and costs nothing.
import path from 'node:path'
import type { SessionManager } from 'claude-session-manager'
import { createClaudeRoutes, getSessionManager } from 'claude-session-manager/next'
import { getUserId } from './demo-auth'

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
  if (usingRealApi) {
    const m = getSessionManager(store)
    console.log(`[claude] real Anthropic API; state in ${m.info().stateDirectory}`)
    return m
  }

  // Offline: the stand-in API. Its default reply echoes the prompt; here it also pads the usage it
  // reports by DEMO_TOKENS_PER_TURN tokens per user turn, so the context meter visibly fills up
  // (and Compact visibly empties it) without a real, long conversation.
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
      // `write <file> <text>`: a Write tool call for <file> in the workspace, which needs the
      // user's permission (the page shows an approval card); then, after the tool result, a line
      // saying what happened.
      const written = afterWrite(req.body)
      if (written) return { text: written, usage }
      const write = /^write\s+([\w.-]+)\s+([\s\S]+)$/.exec(lastText)
      const cwd = workingDirectoryOf(req.body)
      if (write && cwd && !write[1].startsWith('.')) {
        return { toolUse: { name: 'Write', input: { file_path: path.join(cwd, write[1]), content: write[2] } }, usage }
      }
      return { ...echoReply(req), chunkDelayMs: 25, usage } // streamed word by word
    },
  })
  const m = getSessionManager({ ...store, env: server.env() })
  console.log(`[claude] no ANTHROPIC_API_KEY: using the stand-in API at ${server.url}; state in ${m.info().stateDirectory}`)
  return m
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
 * The stand-in's answer to the result of its own Write call (after the request's last assistant
 * message), or null. It names the messages the user sent meanwhile, so the page shows that the
 * model saw them.
 */
function afterWrite(body: { messages?: ApiMessage[] }): string | null {
  const messages = body?.messages ?? []
  let i = messages.length - 1
  while (i >= 0 && messages[i].role !== 'assistant') i--
  if (i < 0) return null
  const tail = messages.slice(i + 1).flatMap(blocksOf)
  const call = blocksOf(messages[i]).find((b) => b.type === 'tool_use' && b.name === 'Write')
  const result = call && tail.find((b) => b.type === 'tool_result' && b.tool_use_id === call.id)
  if (!call || !result) return null
  const file = path.basename(call.input?.file_path ?? '')
  const text = typeof result.content === 'string' ? result.content : Array.isArray(result.content) ? result.content.map((b: Block) => b.text ?? '').join(' ') : ''
  const answer = result.is_error ? `Did not write ${file}: ${text}` : `Wrote ${file}.`
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
