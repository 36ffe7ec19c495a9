// The typings in index.d.ts are the public contract, and the request types in it are written
// beside the Rust structs that read requests. This test keeps the two from drifting apart: the
// fields each interface declares are exactly the fields the addon accepts.
import { test } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { addon, tempDir, workDir } from './helpers.mjs'

const dts = fs.readFileSync(path.resolve('index.d.ts'), 'utf8')

function declaredFields(name) {
  const m = dts.match(new RegExp(`export interface ${name} \\{([\\s\\S]*?)\\n\\}`))
  if (!m) throw new Error(`no interface ${name} in index.d.ts`)
  const body = m[1].replace(/\/\*\*[\s\S]*?\*\//g, '')
  return [...body.matchAll(/^\s{2}(\w+)\??:/gm)].map((x) => x[1]).sort()
}

function acceptedFields(message) {
  const m = message.match(/expected one of (.*)$/)
  if (!m) throw new Error(`no field list in: ${message}`)
  return [...m[1].matchAll(/`(\w+)`/g)].map((x) => x[1]).sort()
}

test('contract: request interfaces in index.d.ts match what the addon accepts', async (t) => {
  const dir = tempDir()
  let err
  try {
    new addon.SessionManager({ bogusField: 1 })
  } catch (e) {
    err = e
  }
  t.assert.deepStrictEqual(declaredFields('SessionManagerOptions'), acceptedFields(err.message))
  const m = new addon.SessionManager({ databasePath: path.join(dir, 's.db'), workingDirectory: workDir(dir) })
  err = await m.executeTask({ bogusField: 1 }).catch((e) => e)
  t.assert.deepStrictEqual(declaredFields('TaskRequest'), acceptedFields(err.message))
  err = await m.listSessions({ bogusField: 1 }).catch((e) => e)
  t.assert.deepStrictEqual(declaredFields('ListSessionsRequest'), acceptedFields(err.message))
  await m.close()
})

test('contract: every exported function and class is documented', () => {
  const undocumented = []
  const lines = dts.split('\n')
  for (const [i, line] of lines.entries()) {
    if (/^export (declare )?(class|function|interface|const) /.test(line) && !/\*\/\s*$/.test(lines[i - 1] ?? '')) undocumented.push(line)
  }
  if (undocumented.length) throw new Error(`undocumented exports:\n${undocumented.join('\n')}`)
})
