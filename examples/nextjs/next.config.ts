import type { NextConfig } from 'next'

const nextConfig: NextConfig = {
  // The package loads a native addon (and spawns the `claude` CLI): never bundle it, require it
  // from node_modules at run time.
  serverExternalPackages: ['claude-session-manager'],
  // This example lives inside the package's repository: build it as its own project.
  turbopack: { root: __dirname },
  outputFileTracingRoot: __dirname,
}

export default nextConfig
