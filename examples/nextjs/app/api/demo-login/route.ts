// DEMO ONLY: "signs in" a demo user by setting a cookie, then goes back to the page: no password,
// anyone can be anyone (`?user=alice`). A real app has its own sign-in flow; the routes only need
// getUserId (lib/demo-auth.ts).
import { DEMO_USER, DEMO_USER_COOKIE, DEMO_USER_NAME } from '@/lib/demo-auth'

export const dynamic = 'force-dynamic'

export function GET(request: Request) {
  const params = new URL(request.url).searchParams
  const next = params.get('next') || '/'
  const target = next.startsWith('/') && !next.startsWith('//') ? next : '/'
  const asked = params.get('user')
  const user = asked && DEMO_USER_NAME.test(asked) ? asked : DEMO_USER
  return new Response(null, {
    status: 303,
    headers: {
      location: target,
      'set-cookie': `${DEMO_USER_COOKIE}=${encodeURIComponent(user)}; Path=/; HttpOnly; SameSite=Lax`,
      'cache-control': 'no-store',
    },
  })
}
