import { routes } from '@/lib/claude'

export const runtime = 'nodejs'
export const dynamic = 'force-dynamic'
export const { POST, GET, DELETE } = routes.stream
