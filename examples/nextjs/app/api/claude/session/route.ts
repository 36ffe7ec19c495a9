import { sessionRoutes } from '@/lib/session-route'

export const runtime = 'nodejs'
export const dynamic = 'force-dynamic'
// The package's session route with the app's additions (titles, search, the history as shown).
export const { GET, POST } = sessionRoutes
