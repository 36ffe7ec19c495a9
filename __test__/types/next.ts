// A typed use of `claude-session-manager/next` (checked by `tsc` in `npm run lint`).
import {
  createClaudeRoutes,
  getSessionManager,
  closeSessionManager,
  statusForCode,
  DEFAULT_CLIENT_TASK_FIELDS,
  DEFAULT_MAX_BODY_BYTES,
  RouteError,
  type ClaudeRoutes,
  type ContextUsageView,
  type PermissionRequestEvent,
  type RouteHandler,
} from '../../next/index.js'

const routes: ClaudeRoutes = createClaudeRoutes({
  getUserId: async (request: Request) => request.headers.get('x-user'),
  manager: () => getSessionManager({ workingDirectory: '/srv/work' }, { closeOnSignals: false }),
  taskDefaults: { maxTurns: 10, disallowedTools: ['Bash(rm:*)'] },
  clientTaskFields: [...DEFAULT_CLIENT_TASK_FIELDS, 'title'],
  allowedModels: ['claude-sonnet-4-5'],
  maxBodyBytes: DEFAULT_MAX_BODY_BYTES,
  permissionPrompts: true,
  abortOnDisconnect: false,
  onError: (error: unknown) => console.error(error),
})

export const POST: RouteHandler = routes.task.POST
export const stream: RouteHandler = routes.stream.POST
export const { GET: resume, DELETE: stop } = routes.stream
export const { GET: sessionGET, POST: sessionPOST } = routes.session
export const handlers: RouteHandler[] = [routes.compact.GET, routes.compact.POST, routes.permission.POST, routes.message.POST, routes.context.GET]

export function describe(event: PermissionRequestEvent, usage: ContextUsageView): string {
  return `${event.toolName} ${event.requestId} ${event.sessionId}: ${usage.percentage}% of ${usage.window}`
}

export const status: number = statusForCode('SESSION_NOT_FOUND')
export const refused = new RouteError(400, 'INVALID_ARGUMENT', 'bad')
export const code: string = refused.code
export const done: Promise<void> = closeSessionManager()
