// `prepack`: what `npm pack` puts in the tarball must be what a user should run. The addon at the
// root (claude-session-manager.<platform>.node, listed in package.json `files`) must be a release
// build: a debug build is ~200 MB, slow, and has test-only hooks. Build it with `npm run build`.
// A publish ships no addon at the root (the binaries come as the npm/* platform packages).
import fs from 'node:fs'
import path from 'node:path'

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
const addons = fs.readdirSync(root).filter((f) => /^claude-session-manager\..+\.node$/.test(f))
const publishing = process.env.npm_command === 'publish'
const fail = (why) => {
  console.error(`npm pack refused: ${why}`)
  process.exit(1)
}
if (!addons.length && !publishing) fail('no addon at the repository root; run `npm run build` (the release build) first')
for (const f of addons) {
  const bytes = fs.readFileSync(path.join(root, f))
  // The hook that panics on demand exists in debug builds only (src/binding/errors.rs).
  if (bytes.includes('CSM_DEBUG_PANIC')) {
    fail(`${f} is a debug build (${(bytes.length / 1e6).toFixed(0)} MB); run \`npm run build\` (the release build) and pack again`)
  }
}
