// DEMO ONLY: "signs in" the fixed demo user by setting a cookie, then goes back to the page.
// A real app has its own sign-in flow; the routes only need getUserId (lib/demo-auth.ts).
import { DEMO_USER, DEMO_USER_COOKIE } from '@/lib/demo-auth'

export const dynamic = 'force-dynamic'

export function GET(request: Request) {
  const next = new URL(request.url).searchParams.get('next') || '/'
  const target = next.startsWith('/') && !next.startsWith('//') ? next : '/'
  return new Response(null, {
    status: 303,
    headers: {
      location: target,
      'set-cookie': `${DEMO_USER_COOKIE}=${encodeURIComponent(DEMO_USER)}; Path=/; HttpOnly; SameSite=Lax`,
      'cache-control': 'no-store',
    },
  })
}
