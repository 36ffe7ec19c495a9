'use client'
'use strict'
// claude-session-manager/react — a React hook over the HTTP API of claude-session-manager/next.
// Client-safe: it requires only 'react' (never the native addon). Typings: ./index.d.ts.

// On the server there is nothing to run: effects never do, and the first render shows the initial
// state. There the hook returns that state without calling React at all, which also matters in
// Next.js: with `serverExternalPackages: ['claude-session-manager']` Node loads this module during
// server rendering, and `require('react')` would give the app's node_modules React rather than the
// copy Next renders with (hooks would then fail with "Cannot read properties of null").
const isServer = typeof window === 'undefined' || typeof document === 'undefined'
const React = isServer ? null : require('react')
const { useState, useRef, useCallback, useEffect } = React || {}
const { readEventStream } = require('./sse.js')
const { forkInfoOf, localId, apiError, asError, isAbort, errorFromResponse, historyMessage, contextLevel, isUnsupported, stringFields, mergeHistory, createReplies } = require('./state.js')

/** In-flight "find or create the project's session" calls, shared by hook instances (and by
 * React's StrictMode double effects) so one mount does not create two sessions. */
const inflightInit = new Map()
/** APIs whose server answered that it cannot replay history: not asked again in this page. */
const noHistory = new Set()
/** APIs whose server has no context route: not asked again in this page. */
const noContextUsage = new Set()

/**
 * A Claude Code session of one project, over the routes of `claude-session-manager/next`,
 * in the spirit of the AI SDK's `useChat`. See ./index.d.ts for the contract.
 */
function useClaudeSession(options) {
  return isServer ? serverState(options || {}) : useClientSession(options || {})
}

const noop = () => {}
const resolveNull = async () => null

/** What the hook shows before it has loaded anything (the server render and the first client
 * render are the same, so hydration matches). */
function serverState(opts) {
  return {
    sessionId: opts.sessionId || null,
    session: null,
    sessions: [],
    messages: [],
    setMessages: noop,
    context: null,
    contextUsage: null,
    refreshContextUsage: resolveNull,
    status: 'idle',
    isLoading: false,
    isStreaming: false,
    error: null,
    clearError: noop,
    historySupported: null,
    send: resolveNull,
    sendMessage: async () => false,
    abort: noop,
    stop: noop,
    compact: resolveNull,
    fork: resolveNull,
    startFresh: resolveNull,
    selectSession: resolveNull,
    refresh: async () => [],
    permissionRequests: [],
    respondToPermission: resolveNull,
    branches: [],
    editMessage: resolveNull,
    regenerate: resolveNull,
    rewind: resolveNull,
  }
}

function useClientSession(opts) {
  const { projectId, api = '/api/claude', loadHistory = true, historyLimit = 200 } = opts
  const initialSessionId = opts.sessionId

  const [sessionId, setSessionIdState] = useState(initialSessionId || null)
  const [messages, setMessages] = useState([])
  const [context, setContextState] = useState(null)
  const [contextUsage, setContextUsage] = useState(null)
  const [sessions, setSessions] = useState([])
  const [status, setStatus] = useState('idle')
  const [error, setError] = useState(null)
  const [historySupported, setHistorySupported] = useState(null)
  // Tools waiting for the user's decision (the routes' `permissionPrompts`).
  const [permissionRequests, setPermissionRequests] = useState([])
  // This session's forks and the message it was forked at (`messages` action).
  const [forkInfo, setForkInfo] = useState({ forks: [], forkedAt: null })

  // The latest values, for callbacks that must not go stale.
  const latest = useRef(opts)
  latest.current = opts
  const sessionIdRef = useRef(sessionId)
  const contextRef = useRef(context)
  const abortRef = useRef(null)
  // The task `send` is running: `{ sessionId, steered(userMessage), done }` (see sendMessage).
  const runningRef = useRef(null)
  const readyRef = useRef(null) // Promise<string> of the current session id while it is loaded
  const mounted = useRef(true)
  // How many prompts `send` has started (load tells by it whether one was sent while it waited).
  const sendsRef = useRef(0)
  const messagesRef = useRef(messages)
  messagesRef.current = messages

  const setSessionId = useCallback((id) => {
    sessionIdRef.current = id
    setSessionIdState(id)
  }, [])
  const setContext = useCallback((c) => {
    contextRef.current = c
    setContextState(c)
  }, [])

  /** fetch against the API with JSON in and out; non-2xx answers throw an Error with `code`. */
  const call = useCallback(
    async (method, path, body, init) => {
      const o = latest.current
      const doFetch = o.fetch || globalThis.fetch.bind(globalThis)
      const extra = typeof o.headers === 'function' ? await o.headers() : o.headers
      const headers = { accept: 'application/json', ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...extra }
      const res = await doFetch(`${api}${path}`, {
        method,
        headers,
        body: body !== undefined ? JSON.stringify(body) : undefined,
        credentials: o.credentials || 'same-origin',
        cache: 'no-store',
        ...init,
      })
      if (!res.ok) throw await errorFromResponse(res)
      return res
    },
    [api],
  )
  const callJson = useCallback(async (method, path, body, init) => (await call(method, path, body, init)).json(), [call])

  const report = useCallback((e) => {
    const err = asError(e)
    if (mounted.current) setError(err)
    const onError = latest.current.onError
    if (onError) onError(err)
    return err
  }, [])

  const refreshSessions = useCallback(async () => {
    if (!projectId) return []
    try {
      const { sessions: list } = await callJson('GET', `/session?projectId=${encodeURIComponent(projectId)}`)
      if (mounted.current) setSessions(list)
      return list
    } catch (e) {
      report(e)
      return []
    }
  }, [projectId, callJson, report])

  const fetchContext = useCallback(async (id) => (await callJson('GET', `/compact?sessionId=${encodeURIComponent(id)}`)).context, [callJson])

  const fetchHistory = useCallback(
    async (id) => {
      if (noHistory.has(api)) {
        if (mounted.current) setHistorySupported(false)
        return null
      }
      try {
        const body = await callJson('POST', '/session', { action: 'messages', sessionId: id, limit: historyLimit })
        const raw = Array.isArray(body) ? body : body && Array.isArray(body.messages) ? body.messages : []
        if (mounted.current) setHistorySupported(true)
        if (mounted.current && sessionIdRef.current === id) setForkInfo(forkInfoOf(body))
        return raw.map(historyMessage).filter(Boolean)
      } catch (e) {
        // History replay is optional: the server's addon (or route) may not have it yet.
        if (isUnsupported(e)) {
          noHistory.add(api)
          if (mounted.current) setHistorySupported(false)
          return null
        }
        throw e
      }
    },
    [api, callJson, historyLimit],
  )

  /** The session's context breakdown (GET /context), or null when the server has no such route. */
  const fetchContextUsage = useCallback(
    async (id) => {
      if (noContextUsage.has(api)) return null
      try {
        return (await callJson('GET', `/context?sessionId=${encodeURIComponent(id)}`)).contextUsage
      } catch (e) {
        if (!isUnsupported(e)) throw e
        noContextUsage.add(api)
        return null
      }
    },
    [api, callJson],
  )

  const refreshContextUsage = useCallback(async () => {
    const id = sessionIdRef.current
    if (!id) return null
    try {
      const usage = await fetchContextUsage(id)
      if (mounted.current && sessionIdRef.current === id) setContextUsage(usage)
      return usage
    } catch (e) {
      report(e)
      return null
    }
  }, [fetchContextUsage, report])

  /** Makes `id` the current session: its context and, when the server can replay it, its history.
   * A prompt sent before these answers arrive stays: the history goes before it (mergeHistory),
   * and the context and breakdown its task reported are not replaced by the older answers. */
  const load = useCallback(
    async (id, { keepMessages = false } = {}) => {
      setSessionId(id)
      setContextUsage(null)
      // (a prompt already running, sent while the session was being found, stays on screen)
      if (!keepMessages && !runningRef.current) setMessages([])
      const sendsBefore = runningRef.current ? -1 : sendsRef.current
      // The breakdown is extra: a failure to load it does not keep the session from opening.
      const usageOf = fetchContextUsage(id).catch(() => null)
      // Without history loading, the branches still come from a one-message page.
      if (!loadHistory && !noHistory.has(api)) {
        callJson('POST', '/session', { action: 'messages', sessionId: id, limit: 1 }).then(
          (body) => mounted.current && sessionIdRef.current === id && setForkInfo(forkInfoOf(body)),
          () => {},
        )
      }
      const [ctx, usage, history] = await Promise.all([fetchContext(id), usageOf, loadHistory && !keepMessages ? fetchHistory(id) : null])
      if (!mounted.current || sessionIdRef.current !== id) return
      const sentMeanwhile = sendsRef.current !== sendsBefore
      if (!sentMeanwhile || !contextRef.current) setContext(ctx)
      if (!sentMeanwhile) setContextUsage(usage)
      if (history) setMessages((ms) => mergeHistory(history, ms))
      // The session's CLI started now, so the first prompt does not wait for it (`prewarm: false`
      // to leave it): the server answers `busy` when a task runs, and a failure changes nothing.
      if (latest.current.prewarm !== false && !runningRef.current && sessionIdRef.current === id) {
        callJson('POST', '/session', { action: 'prewarm', sessionId: id, projectId, ...stringFields(latest.current.body, ['model']) }).catch(() => {})
      }
    },
    [api, callJson, fetchContext, fetchContextUsage, fetchHistory, loadHistory, projectId, setContext, setSessionId],
  )

  // Find (or create) the project's session on mount and whenever the project changes.
  useEffect(() => {
    mounted.current = true
    if (!projectId) return undefined
    let cancelled = false
    const ready = (async () => {
      let id = initialSessionId
      if (!id) {
        const key = `${api}\u0000${projectId}`
        let p = inflightInit.get(key)
        if (!p) {
          p = callJson('POST', '/session', { action: 'getOrCreate', projectId }).finally(() => inflightInit.delete(key))
          inflightInit.set(key, p)
        }
        id = (await p).session.id
      }
      if (!cancelled) await Promise.all([load(id), refreshSessions()])
      // A task already running on the session (a reload, another tab): its stream, from its start.
      if (!cancelled && mounted.current && sessionIdRef.current === id) attachRef.current(id)
      return id
    })()
    readyRef.current = ready
    ready.catch((e) => {
      if (!cancelled) report(e)
    })
    return () => {
      cancelled = true
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [projectId, api, initialSessionId])

  // Unmounting closes the task's stream; the task goes on (the server stops it only with
  // abortOnDisconnect), and the next mount attaches to it again.
  useEffect(() => {
    mounted.current = true
    return () => {
      mounted.current = false
      if (abortRef.current) abortRef.current.abort()
    }
  }, [])

  const ensureSession = useCallback(async () => {
    if (sessionIdRef.current) return sessionIdRef.current
    if (readyRef.current) {
      try {
        await readyRef.current
      } catch {}
    }
    if (sessionIdRef.current) return sessionIdRef.current
    const { session } = await callJson('POST', '/session', { action: 'getOrCreate', projectId })
    setSessionId(session.id)
    return session.id
  }, [callJson, projectId, setSessionId])

  /** Runs one task's stream: `open(signal)` answers the first response (POST /stream for a new
   * prompt, GET /stream to attach to a running task); `user`, the prompt's message, if any. A
   * stream that breaks off before the task's result is resumed from its last event id (GET
   * /stream with `after`), with backoff. */
  const runStream = useCallback(
    async (open, user, attachTo) => {
      const controller = new AbortController()
      let firstRes = null
      if (attachTo) {
        // Attaching: only when a task runs (204 otherwise), nothing shown before that, and not
        // when a prompt was sent meanwhile.
        try {
          firstRes = await open(controller.signal, attachTo)
        } catch {
          firstRes = null
        }
        if (!firstRes || firstRes.status === 204 || abortRef.current || !mounted.current) {
          if (firstRes && firstRes.body) firstRes.body.cancel().catch(() => {})
          return null
        }
      }
      abortRef.current = controller
      sendsRef.current += 1
      setError(null)
      setStatus('streaming')
      const first = { id: localId('assistant'), role: 'assistant', content: '', status: 'streaming', toolUses: [], createdAt: Date.now() }
      setMessages((ms) => [...ms, ...(user ? [user] : []), first])
      // The task's replies: one, and a new one after each message sent to it while it runs
      // (sendMessage); see createReplies.
      const replies = createReplies(first.id)
      const { last, joined } = replies
      const update = (r, patch) => {
        if (mounted.current) setMessages((ms) => ms.map((m) => (m.id === r.id ? { ...m, ...patch } : m)))
      }
      let result = null
      let streamError = null
      let id = null
      let finished
      const running = {
        sessionId: null,
        done: new Promise((resolve) => (finished = resolve)),
        // A message the user sent to this task was accepted: the model's next words are a new
        // reply after it. The reply before it is done (or dropped, if it is still empty).
        steered: (userMessage) => {
          if (runningRef.current !== running || !mounted.current) return
          const { before, empty, next } = replies.steer()
          setMessages((ms) => [
            ...ms.filter((m) => !(empty && m.id === before.id)).map((m) => (m.id === before.id ? { ...m, status: 'done' } : m)),
            ...(ms.some((m) => m.id === userMessage.id) ? [] : [userMessage]),
            { id: next.id, role: 'assistant', content: '', status: 'streaming', toolUses: [], createdAt: Date.now() },
          ])
        },
      }
      runningRef.current = running
      try {
        id = attachTo || (await ensureSession())
        running.sessionId = id
        let res = firstRes || (await open(controller.signal, id))
        let lastId = null
        const onFrame = (event, data) => {
          if (event === 'events_truncated') return
          if (event === 'result') {
            result = data
            return
          }
          if (event === 'error') {
            streamError = apiError((data.error && data.error.code) || 'INTERNAL', data.error && data.error.message, data.error && data.error.status)
            return
          }
          if (event === 'permission_request') {
            if (mounted.current && data && data.requestId) setPermissionRequests((rs) => [...rs.filter((r) => r.requestId !== data.requestId), data])
            const onPermissionRequest = latest.current.onPermissionRequest
            if (onPermissionRequest) onPermissionRequest(data)
            return
          }
          if (event === 'permission_cancelled' || event === 'permission_resolved') {
            if (mounted.current && data) setPermissionRequests((rs) => rs.filter((r) => r.requestId !== data.requestId))
            return
          }
          const onEvent = latest.current.onEvent
          if (onEvent) onEvent(data)
          if (!data || typeof data !== 'object') return
          if (data.type === 'task_started' && data.sessionId) {
            running.sessionId = data.sessionId
            if (data.sessionId !== sessionIdRef.current) setSessionId(data.sessionId) // a forked task runs in a new session
          }
          const change = replies.event(data)
          if (change) update(change[0], change[1])
        }
        // Read the stream; when it breaks off (network, server restart, another node) before the
        // result, resume right after the last event seen, backing off up to 5 s, 8 tries.
        for (let attempt = 0; ; attempt++) {
          try {
            if (res.status !== 204) {
              await readEventStream(res.body, (event, data, frameId) => {
                if (frameId !== undefined && frameId !== '') lastId = frameId
                attempt = 0
                onFrame(event, data)
              })
            }
          } catch (e) {
            if (isAbort(e) || controller.signal.aborted) throw e
          }
          if (result || streamError || controller.signal.aborted || lastId === null || attempt >= 8) break
          await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)))
          if (controller.signal.aborted) break
          try {
            res = await call('GET', `/stream?sessionId=${encodeURIComponent(running.sessionId || id)}&after=${encodeURIComponent(lastId)}`, undefined, { signal: controller.signal })
          } catch (e) {
            if (isAbort(e) || controller.signal.aborted) throw e
            if (e && e.status && e.status < 500) throw e
            res = { status: 204 }
          }
        }
        if (controller.signal.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' })
        if (streamError) throw streamError
        if (!result) throw apiError('STREAM_ENDED', 'the stream ended without a result')
        if (mounted.current) {
          if (result.sessionId && result.sessionId !== sessionIdRef.current) setSessionId(result.sessionId)
          setContext(result.contextInfo)
        }
        const content = joined(last()) || (replies.count() === 1 ? result.result || '' : '')
        if (result.success) {
          update(last(), { content, status: 'done', result })
        } else {
          update(last(), { content, status: result.error && result.error.code === 'ABORTED' ? 'aborted' : 'error', result })
          if (!(result.error && result.error.code === 'ABORTED')) report(apiError(result.error.code, result.error.message, result.error.status, result.error.scope))
        }
        const onFinish = latest.current.onFinish
        if (onFinish) onFinish(result)
        return result
      } catch (e) {
        if (isAbort(e) || controller.signal.aborted) {
          update(last(), { content: joined(last()), status: 'aborted' })
        } else {
          update(last(), { content: joined(last()), status: 'error' })
          report(e)
        }
        // The server's view of the context may have changed before the failure.
        if (id && mounted.current) fetchContext(id).then((c) => mounted.current && sessionIdRef.current === id && setContext(c), () => {})
        return result
      } finally {
        if (abortRef.current === controller) abortRef.current = null
        if (runningRef.current === running) runningRef.current = null
        if (mounted.current) {
          setStatus('idle')
          setPermissionRequests([])
        }
        finished()
        refreshSessions()
        if (mounted.current) refreshContextUsage()
      }
    },
    [call, ensureSession, fetchContext, refreshContextUsage, refreshSessions, report, setContext, setSessionId],
  )

  const send = useCallback(
    async (prompt, sendOptions) => {
      if (typeof prompt !== 'string' || !prompt.trim()) return null
      if (abortRef.current) {
        report(apiError('SESSION_BUSY', 'a task is already running in this session; wait for it or abort() it'))
        return null
      }
      const user = { id: localId('user'), role: 'user', content: prompt, status: 'done', createdAt: Date.now() }
      const open = (signal, id) => {
        const extra = stringFields(sendOptions, ['model', 'title'])
        const body = { ...latest.current.body, ...extra, prompt, projectId, sessionId: id }
        if (sendOptions && typeof sendOptions === 'object' && sendOptions.forkSession === true) body.forkSession = true
        if (sendOptions && typeof sendOptions === 'object' && typeof sendOptions.atMessageId === 'string') body.atMessageId = sendOptions.atMessageId
        return call('POST', '/stream', body, { signal })
      }
      return runStream(open, user, null)
    },
    [call, projectId, report, runStream],
  )

  /** Shows the task running on session `id` (after a reload, in a second tab), if one runs. */
  const attach = useCallback(
    (id) => {
      if (abortRef.current || !id) return null
      return runStream((signal) => call('GET', `/stream?sessionId=${encodeURIComponent(id)}`, undefined, { signal }), null, id)
    },
    [call, runStream],
  )
  const attachRef = useRef(attach)
  attachRef.current = attach

  /** Says `text` to Claude: into the running task when there is one (the model sees it in that
   * task), else as a new prompt. Resolves true once it is delivered; false on failure (`error`). */
  const sendMessage = useCallback(
    async (text) => {
      if (typeof text !== 'string' || !text.trim()) return false
      const running = runningRef.current
      if (!running || !running.sessionId) return (await send(text)) !== null
      const user = { id: localId('user'), role: 'user', content: text, status: 'done', createdAt: Date.now() }
      if (mounted.current) setMessages((ms) => [...ms, user])
      try {
        await callJson('POST', '/message', { sessionId: running.sessionId, prompt: text })
        running.steered(user)
        return true
      } catch (e) {
        if (e.code === 'INVALID_ARGUMENT' && e.status === 400) {
          // Most likely the task ended while the message was on its way (the server's answer
          // then says no task is running): it becomes the next prompt once the stream has ended.
          await running.done
          if (mounted.current) setMessages((ms) => ms.filter((m) => m.id !== user.id))
          return (await send(text)) !== null
        }
        if (mounted.current) setMessages((ms) => ms.map((m) => (m.id === user.id ? { ...m, status: 'error' } : m)))
        report(e)
        return false
      }
    },
    [callJson, report, send],
  )

  /** Stops the task: on the server (DELETE /stream, wherever it runs; also a task this page only
   * attached to after a reload), and this page's stream. */
  const abort = useCallback(() => {
    const id = (runningRef.current && runningRef.current.sessionId) || sessionIdRef.current
    if (id && (abortRef.current || runningRef.current)) call('DELETE', `/stream?sessionId=${encodeURIComponent(id)}`).catch(() => {})
    if (abortRef.current) abortRef.current.abort()
  }, [call])

  /** Runs one session-changing call with status and error handling; never rejects. */
  const guarded = useCallback(
    async (busyStatus, fn) => {
      if (abortRef.current) {
        report(apiError('SESSION_BUSY', 'a task is running; wait for it or abort() it first'))
        return null
      }
      setError(null)
      setStatus(busyStatus)
      try {
        return await fn()
      } catch (e) {
        report(e)
        return null
      } finally {
        if (mounted.current) setStatus('idle')
      }
    },
    [report],
  )

  const compact = useCallback(
    (arg) =>
      guarded('compacting', async () => {
        const id = await ensureSession()
        const before = contextRef.current
        const result = await callJson('POST', '/compact', { sessionId: id, ...stringFields(arg, ['summaryInstructions']) })
        if (!mounted.current) return result
        setContext(result.contextInfo)
        const from = before ? before.estimatedTokens.toLocaleString('en-US') : '?'
        const to = result.contextInfo.estimatedTokens.toLocaleString('en-US')
        setMessages((ms) => [...ms, { id: localId('system'), role: 'system', content: `Context compacted: ${from} → ${to} tokens`, status: 'done', createdAt: Date.now() }])
        refreshSessions()
        refreshContextUsage()
        return result
      }),
    [callJson, ensureSession, guarded, refreshContextUsage, refreshSessions, setContext],
  )

  const fork = useCallback(
    (arg) =>
      guarded('loading', async () => {
        const id = await ensureSession()
        const { session } = await callJson('POST', '/session', { action: 'fork', sessionId: id, ...stringFields(arg, ['title']) })
        // The fork continues from the same conversation: keep the messages on screen.
        await load(session.id, { keepMessages: true })
        await refreshSessions()
        return session
      }),
    [callJson, ensureSession, guarded, load, refreshSessions],
  )

  const startFresh = useCallback(
    () =>
      guarded('loading', async () => {
        const { session } = await callJson('POST', '/session', { action: 'startFresh', projectId })
        await load(session.id)
        await refreshSessions()
        return session
      }),
    [callJson, guarded, load, projectId, refreshSessions],
  )

  const selectSession = useCallback(
    (id) =>
      guarded('loading', async () => {
        if (typeof id !== 'string' || !id) throw apiError('INVALID_ARGUMENT', 'selectSession needs a session id')
        await load(id)
        return id
      }),
    [guarded, load],
  )

  const refresh = useCallback(async () => {
    const id = sessionIdRef.current
    const [list] = await Promise.all([
      refreshSessions(),
      id
        ? fetchContext(id).then(
            (c) => mounted.current && sessionIdRef.current === id && setContext(c),
            (e) => report(e),
          )
        : null,
      id ? refreshContextUsage() : null,
    ])
    return list
  }, [fetchContext, refreshContextUsage, refreshSessions, report, setContext])

  const clearError = useCallback(() => setError(null), [])

  /** Answers a pending permission request: `{ behavior: 'allow', updatedInput? }` or
   * `{ behavior: 'deny', message?, interrupt? }`. Never rejects: failures go to `error`. */
  const respondToPermission = useCallback(
    async (requestId, answer) => {
      const pending = permissionRequests.find((r) => r.requestId === requestId)
      const sessionForRequest = (pending && pending.sessionId) || sessionIdRef.current
      const a = answer && typeof answer === 'object' ? answer : {}
      const body = { sessionId: sessionForRequest, requestId, behavior: a.behavior === 'allow' ? 'allow' : 'deny' }
      if (typeof a.message === 'string') body.message = a.message
      if (a.updatedInput && typeof a.updatedInput === 'object') body.updatedInput = a.updatedInput
      if (a.remember === 'session' && body.behavior === 'allow') body.remember = 'session'
      if (a.interrupt === true) body.interrupt = true
      try {
        const out = await callJson('POST', '/permission', body)
        if (mounted.current) setPermissionRequests((rs) => rs.filter((r) => r.requestId !== requestId))
        return out
      } catch (e) {
        report(e)
        return null
      }
    },
    [callJson, permissionRequests, report],
  )

  /** The server's ids of the conversation: `messages` (the server's, oldest first) and where the
   * on-screen user message `messageId` is among them (matched from the end, prompt by prompt:
   * messages sent here carry local ids until the history is reloaded). */
  const locate = useCallback(
    async (id, messageId) => {
      const body = await callJson('POST', '/session', { action: 'messages', sessionId: id, limit: 10000 })
      const server = Array.isArray(body && body.messages) ? body.messages : []
      const prompts = server.map((m, i) => [m, i]).filter(([m]) => m.role === 'user' && m.kind === 'prompt')
      const idOf = (m) => m.uuid || m.id
      const shown = messagesRef.current.filter((m) => m.role === 'user')
      const k = shown.findIndex((m) => m.id === messageId)
      if (k < 0) throw apiError('INVALID_ARGUMENT', 'editMessage needs the id of a user message on screen')
      const direct = prompts.find(([m]) => idOf(m) === messageId)
      const hit = direct || prompts[prompts.length - (shown.length - k)]
      if (!hit) throw apiError('MESSAGE_NOT_FOUND', 'that message is not on the session\'s conversation')
      return { server: server.map((m) => ({ ...m, uuid: idOf(m) })), index: hit[1] }
    },
    [callJson],
  )

  /** Sends `text` instead of the user message `messageId`: a fork of the session at the message
   * before it (the old branch stays, see `branches`), switching to the fork. Editing the first
   * message starts a new session. */
  const editMessage = useCallback(
    async (messageId, text) => {
      if (typeof text !== 'string' || !text.trim()) return null
      if (abortRef.current) {
        report(apiError('SESSION_BUSY', 'a task is running; wait for it or abort() it first'))
        return null
      }
      let at
      try {
        const id = await ensureSession()
        const { server, index } = await locate(id, messageId)
        at = index > 0 ? server[index - 1].uuid : null
        if (!at) {
          const { session } = await callJson('POST', '/session', { action: 'getOrCreate', projectId, preferActive: false })
          setSessionId(session.id)
        }
      } catch (e) {
        report(e)
        return null
      }
      if (mounted.current) setMessages((ms) => ms.slice(0, Math.max(0, ms.findIndex((m) => m.id === messageId))))
      const result = await send(text, at ? { atMessageId: at } : undefined)
      const now = sessionIdRef.current
      if (now && latest.current.loadHistory !== false) fetchHistory(now).then((h) => h && mounted.current && sessionIdRef.current === now && setMessages(h), () => {})
      return result
    },
    [callJson, ensureSession, fetchHistory, locate, projectId, report, send, setSessionId],
  )

  /** A new answer to the last prompt: `editMessage` with its own text. */
  const regenerate = useCallback(async () => {
    const last = [...messagesRef.current].reverse().find((m) => m.role === 'user')
    return last ? editMessage(last.id, last.content) : null
  }, [editMessage])

  /** The session continues from the message before the user message `messageId` (undo that turn
   * and what follows; the server's `rewind`). Resolves the rewind's answer. */
  const rewind = useCallback(
    (messageId, rewindOptions) =>
      guarded('loading', async () => {
        const id = await ensureSession()
        const { server, index } = await locate(id, messageId)
        if (index === 0) throw apiError('INVALID_ARGUMENT', 'the first message cannot be undone: start a new session')
        const body = { action: 'rewind', sessionId: id, toMessageId: server[index - 1].uuid }
        const files = rewindOptions && typeof rewindOptions === 'object' ? rewindOptions.files : undefined
        if (files === true || files === 'dryRun') body.files = files
        const out = await callJson('POST', '/session', body)
        await load(id)
        return out
      }),
    [callJson, ensureSession, guarded, load, locate],
  )

  const session = sessions.find((s) => s.id === sessionId) || null
  const branches = [
    ...(session && session.parentId ? [{ sessionId: session.parentId, atMessageId: forkInfo.forkedAt, relation: 'parent' }] : []),
    ...forkInfo.forks.map((b) => ({ sessionId: b.sessionId, atMessageId: b.atMessageId, relation: 'fork' })),
  ]

  return {
    sessionId,
    session,
    sessions,
    messages,
    setMessages,
    context,
    contextUsage,
    refreshContextUsage,
    status,
    isLoading: status !== 'idle',
    isStreaming: status === 'streaming',
    error,
    clearError,
    historySupported,
    send,
    sendMessage,
    abort,
    stop: abort,
    compact,
    fork,
    startFresh,
    selectSession,
    refresh,
    permissionRequests,
    respondToPermission,
    branches,
    editMessage,
    regenerate,
    rewind,
  }
}

module.exports = { useClaudeSession, contextLevel, readEventStream }
