import { cookies } from 'next/headers'
import { redirect } from 'next/navigation'
import { DEMO_USER_COOKIE } from '@/lib/demo-auth'
import { Chat } from './chat'

export const dynamic = 'force-dynamic'

export default async function Page({ searchParams }: { searchParams: Promise<{ project?: string }> }) {
  const { project } = await searchParams
  const projectId = project || 'demo-project'
  const userId = (await cookies()).get(DEMO_USER_COOKIE)?.value
  // Demo sign-in; a real app redirects to its own login page here.
  if (!userId) redirect(`/api/demo-login?next=${encodeURIComponent(project ? `/?project=${project}` : '/')}`)
  const mode = process.env.ANTHROPIC_API_KEY
    ? 'real Anthropic API'
    : 'Offline stand-in API (no ANTHROPIC_API_KEY): replies echo your prompt ("Echo #3" = the model was sent 3 user turns, so the history carried over), and the costs shown are made up.'
  return <Chat projectId={projectId} userId={userId} mode={mode} />
}
