// DEMO AUTHENTICATION — replace this file with your real auth (NextAuth/Auth.js, Clerk, a session
// cookie you verify, ...). `getUserId` must return the signed-in user's id, or null when nobody is
// signed in (the routes then answer 401). Sessions are scoped by this id, so it must come from
// something the client cannot forge — unlike this demo, which trusts a plain cookie or header and
// lets anyone "sign in" as any demo user without a password (the page's user switcher).

/** The demo's "login" cookie (set by /api/demo-login). */
export const DEMO_USER_COOKIE = 'demo_user'
/** The user /api/demo-login signs in by default. */
export const DEMO_USER = 'demo-user'
/** The users the page's switcher offers (any name matching DEMO_USER_NAME works). */
export const DEMO_USERS = ['demo-user', 'alice', 'bob']
/** What a demo user name may be. */
export const DEMO_USER_NAME = /^[a-z][a-z0-9-]{0,31}$/

/** Reads one cookie from a Cookie header. */
export function readCookie(header: string | null, name: string): string | null {
  if (!header) return null
  for (const part of header.split(';')) {
    const i = part.indexOf('=')
    if (i > 0 && part.slice(0, i).trim() === name) {
      try {
        return decodeURIComponent(part.slice(i + 1).trim())
      } catch {
        return null
      }
    }
  }
  return null
}

/**
 * The demo user: the `demo_user` cookie, or an `x-demo-user` header (handy for scripts and
 * tests). A real app verifies a signed session here instead.
 */
export function getUserId(request: Request): string | null {
  const fromHeader = request.headers.get('x-demo-user')
  if (fromHeader) return fromHeader
  return readCookie(request.headers.get('cookie'), DEMO_USER_COOKIE)
}
