// A typed use of `claude-session-manager/shutdown` (checked by `tsc` in `npm run lint`).
import { closeOnSignals } from '../../shutdown/index.js'
import { SessionManager } from '../../index.js'

const manager = new SessionManager({ workingDirectory: '/srv/work' })
export const remove: () => void = closeOnSignals(manager)
export const removeBoth: () => void = closeOnSignals([manager], { signals: ['SIGTERM'] })
