import type { Metadata } from 'next'
import './globals.css'

export const metadata: Metadata = {
  title: 'Claude sessions — Next.js example',
  description: 'claude-session-manager in a Next.js App Router app',
}

export default function RootLayout({ children }: { children: React.ReactNode }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  )
}
