// GET /api/account — who is signed in and, when the server sets a spend cap (a per-user default or
// one set for this user), what they spent in its period. Budgets are set by server code only.
import { manager } from '@/lib/claude'
import { getUserId } from '@/lib/demo-auth'

export const runtime = 'nodejs'
export const dynamic = 'force-dynamic'

export async function GET(request: Request) {
  const userId = getUserId(request)
  if (!userId) return Response.json({ error: { code: 'UNAUTHORIZED', message: 'sign in first' } }, { status: 401 })
  try {
    const budget = await (await manager()).getBudget({ scope: 'user', userId })
    return Response.json(
      { userId, budget: budget && { usd: budget.usd, spentUsd: budget.spentUsd, remainingUsd: budget.remainingUsd, period: budget.period ?? null, periodStart: budget.periodStart } },
      { headers: { 'cache-control': 'no-store' } },
    )
  } catch (e) {
    const code = (e as { code?: string }).code || 'INTERNAL'
    return Response.json({ error: { code, message: code === 'CLOSED' ? 'the server is shutting down' : 'could not read the budget' } }, { status: code === 'CLOSED' ? 503 : 500 })
  }
}
