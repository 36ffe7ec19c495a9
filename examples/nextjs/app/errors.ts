// Errors in words a user understands. The API's codes are for programs; the page shows a sentence
// (and keeps the code in small print for a bug report).

export interface Explained {
  title: string
  detail?: string
}

const SCOPES: Record<string, string> = { user: 'your', project: "this project's", session: "this conversation's" }

/** What to tell the user about an error of the API (`code`, `message`, HTTP `status`). */
export function explainError(e: { code?: string; message?: string; status?: number; scope?: string } | null | undefined): Explained {
  const code = e?.code ?? ''
  const message = e?.message ?? ''
  switch (code) {
    case 'CLOSED':
      return { title: 'The server is restarting. Try again in a moment.' }
    case 'BUDGET_EXCEEDED': {
      // The hook's error has the cap's scope (a task's own maxBudgetUsd has none).
      const scope = e?.scope
      const period = /\$[\d.]+ (?:a|per) (day|month)\b/.exec(message)?.[1]
      if (!scope) return { title: 'Spending limit reached for this task.', detail: 'The task stopped at its cost limit.' }
      const which = `${SCOPES[scope]}${period ? ` ${period === 'day' ? 'daily' : 'monthly'}` : ''} spending limit`
      return {
        title: `Spending limit reached: ${which} is used up.`,
        detail: period ? `It resets at the start of the next ${period} (UTC). Your conversation is kept; send again then.` : 'Your conversation is kept; it can go on once the limit is raised.',
      }
    }
    case 'UNAUTHORIZED':
      return { title: 'You are signed out. Reload the page to sign in again.' }
    case 'SESSION_NOT_FOUND':
      return { title: 'This conversation no longer exists (it may have been deleted).' }
    case 'SESSION_BUSY':
      return { title: 'This conversation is still busy with another request. Wait for it, or press Stop.' }
    case 'CONTEXT_OVERFLOW':
      return { title: 'That message is too long for this conversation.', detail: 'Shorten it, or Compact the conversation first.' }
    case 'PAYLOAD_TOO_LARGE':
      return { title: 'That message is too long to send.' }
    case 'API_ERROR':
      return { title: 'Claude could not answer just now (the API reported an error). Try again in a moment.' }
    case 'AUTH_ERROR':
      return { title: 'The server cannot reach Claude: its API key is missing or was refused.', detail: 'Tell whoever runs this app.' }
    case 'TIMEOUT':
      return { title: 'That took too long and was stopped.' }
    case 'MAX_TURNS':
      return { title: 'Claude stopped after the most steps one request may take.', detail: 'Send "continue" to go on.' }
    case 'COMPACT_FAILED':
      return { title: 'Compacting the conversation failed; it is unchanged.' }
    case 'PERMISSION_REQUEST_NOT_FOUND':
      return { title: 'That approval request has expired (it was answered elsewhere or timed out).' }
    case 'INVALID_ARGUMENT':
      return { title: 'The server did not accept that request.', detail: message }
    case 'STREAM_ENDED':
    case 'HTTP_ERROR':
      return { title: 'The connection to the server was interrupted. Try again.' }
    case 'SANDBOX_UNAVAILABLE':
    case 'CLI_NOT_FOUND':
    case 'STORE_ERROR':
    case 'INTERNAL':
    case 'CLI_ERROR':
      return { title: 'Something went wrong on the server. Try again; if it keeps happening, tell whoever runs this app.' }
    default:
      if (e && /fetch|network/i.test(message)) return { title: 'Cannot reach the server. Check your connection and try again.' }
      return { title: 'Something went wrong.', detail: message }
  }
}
