'use strict'

// claude-session-manager/testing
//
// A stand-in for the Anthropic Messages API that the real `claude` CLI can run
// against fully offline. Point the CLI at it with `server.env()` and script the
// model's replies with `server.enqueue(...)`.
//
// No dependencies beyond Node built-ins. See index.d.ts for the documented API.

const http = require('node:http')

const DEFAULT_API_KEY = 'test-key'

/** Error types the real API uses, by HTTP status. */
const ERROR_TYPE_BY_STATUS = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  529: 'overloaded_error',
}

/** Fixed output_tokens reported in message_start (the real API reports a small number there too). */
const START_OUTPUT_TOKENS = 1

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Deterministic token estimate: ceil(characters / 4). */
function estimateTokens(chars) {
  return Math.ceil(chars / 4)
}

/** input_tokens for a request body: ceil(JSON.stringify({system, messages, tools}).length / 4). */
function countInputTokens(body) {
  if (!body || typeof body !== 'object') return 0
  const { system, messages, tools } = body
  return estimateTokens(JSON.stringify({ system, messages, tools }).length)
}

function isSystemReminder(text) {
  return typeof text === 'string' && text.trimStart().startsWith('<system-reminder>')
}

/** Text blocks of a user message that were typed by the user (not CLI-injected <system-reminder>s). */
function userTexts(message) {
  if (!message || message.role !== 'user') return []
  if (typeof message.content === 'string') {
    return isSystemReminder(message.content) ? [] : [message.content]
  }
  if (!Array.isArray(message.content)) return []
  return message.content
    .filter((b) => b && b.type === 'text' && typeof b.text === 'string' && !isSystemReminder(b.text))
    .map((b) => b.text)
}

/**
 * Counts user turns in a request body: `role:"user"` messages with at least one
 * text block that is not a `<system-reminder>` (tool_result-only messages are
 * not turns). Also returns the last such text, trimmed.
 */
function summarizeUserTurns(body) {
  const messages = body && Array.isArray(body.messages) ? body.messages : []
  let turns = 0
  let lastText = ''
  for (const m of messages) {
    const texts = userTexts(m)
    if (texts.length > 0) {
      turns++
      lastText = texts[texts.length - 1].trim()
    }
  }
  return { turns, lastText }
}

/** The reply used when nothing is scripted and there is no defaultReply. */
function echoReply(req) {
  const { turns, lastText } = summarizeUserTurns(req.body)
  return { text: `Echo #${turns}: ${lastText}` }
}

function replyKind(reply) {
  if (reply.error) return 'error'
  if (reply.dropConnection) return 'drop'
  if (reply.toolUse) return 'tool_use'
  return 'text'
}

/** Splits text into word-sized deltas (each word keeps its trailing whitespace). */
function splitText(text) {
  if (text === '') return []
  return text.match(/\s*\S+\s*|\s+/g) || [text]
}

function splitJson(json, size) {
  const parts = []
  for (let i = 0; i < json.length; i += size) parts.push(json.slice(i, i + size))
  return parts
}

function errorBody(type, message) {
  return { type: 'error', error: { type, message } }
}

/**
 * Starts the stand-in server. Resolves once it is listening.
 * @param {import('./index').StandInServerOptions} [options]
 * @returns {Promise<import('./index').StandInServer>}
 */
async function startStandInServer(options = {}) {
  const host = options.host || '127.0.0.1'
  const port = options.port || 0
  const defaultReply = options.defaultReply
  const reportedModel = options.model
  const apiKey = options.apiKey || DEFAULT_API_KEY

  const queue = []
  const requests = []
  const responses = []
  let idCounter = 0
  // `POST /v1/messages` calls open right now, and the most open at once since the start (or `reset()`).
  let inFlight = 0
  let maxInFlight = 0
  const nextId = () => String(++idCounter).padStart(6, '0')

  function pickReply(req) {
    let reply
    if (queue.length > 0) {
      reply = queue.shift()
    } else if (defaultReply !== undefined && defaultReply !== null) {
      reply = defaultReply
    } else {
      reply = echoReply
    }
    if (typeof reply === 'function') reply = reply(req)
    if (!reply || typeof reply !== 'object') {
      throw new TypeError(`stand-in reply must be an object, got ${JSON.stringify(reply)}`)
    }
    return reply
  }

  /** Builds the content blocks for a (non-error) reply. */
  function buildContent(reply, req) {
    const blocks = []
    const toolUses = reply.toolUse
      ? Array.isArray(reply.toolUse)
        ? reply.toolUse
        : [reply.toolUse]
      : []
    let text = reply.text
    if (text === undefined && toolUses.length === 0) text = echoReply(req).text
    if (typeof text === 'string' && text !== '') blocks.push({ type: 'text', text })
    for (const t of toolUses) {
      if (!t || typeof t.name !== 'string') throw new TypeError('toolUse needs a name')
      blocks.push({
        type: 'tool_use',
        id: t.id || `toolu_standin_${nextId()}`,
        name: t.name,
        input: t.input || {},
      })
    }
    return blocks
  }

  function computeUsage(reply, req, blocks) {
    let outChars = 0
    for (const b of blocks) {
      if (b.type === 'text') outChars += b.text.length
      else outChars += b.name.length + JSON.stringify(b.input).length
    }
    return {
      input_tokens: countInputTokens(req.body),
      output_tokens: Math.max(1, estimateTokens(outChars)),
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
      ...reply.usage,
    }
  }

  async function handleMessages(req, res, record, ctx) {
    const reply = pickReply(record)
    const kind = replyKind(reply)
    const stream = !!(record.body && record.body.stream)
    const response = {
      requestIndex: record.index,
      kind,
      status: 200,
      stream,
      model: null,
      messageId: null,
      stopReason: null,
      content: null,
      usage: null,
      completed: false,
    }
    responses.push(response)

    if (reply.delayMs) await sleep(reply.delayMs)
    if (reply.after) await Promise.resolve(reply.after).catch(() => {})
    if (ctx.clientGone) return

    if (kind === 'error') {
      const status = reply.error.status || 500
      const type = reply.error.type || ERROR_TYPE_BY_STATUS[status] || 'api_error'
      const message = reply.error.message || `stand-in ${type}`
      response.status = status
      response.error = { type, message }
      const headers = { 'content-type': 'application/json', 'request-id': `req_standin_${nextId()}` }
      if (reply.error.retryAfter !== undefined) headers['retry-after'] = String(reply.error.retryAfter)
      res.writeHead(status, headers)
      res.end(JSON.stringify(errorBody(type, message)))
      response.completed = true
      return
    }

    const blocks = buildContent(reply, record)
    const usage = computeUsage(reply, record, blocks)
    const hasToolUse = blocks.some((b) => b.type === 'tool_use')
    const stopReason = reply.stopReason || (hasToolUse ? 'tool_use' : 'end_turn')
    const model = reportedModel || (record.body && record.body.model) || 'claude-stand-in'
    const messageId = `msg_standin_${nextId()}`
    Object.assign(response, { model, messageId, content: blocks })

    if (!stream) {
      if (kind === 'drop') {
        // Nothing reported: the connection closes before any response byte.
        res.socket?.destroy()
        return
      }
      response.usage = usage
      response.stopReason = stopReason
      res.writeHead(200, { 'content-type': 'application/json', 'request-id': `req_standin_${nextId()}` })
      res.end(
        JSON.stringify({
          id: messageId,
          type: 'message',
          role: 'assistant',
          model,
          content: blocks,
          stop_reason: stopReason,
          stop_sequence: null,
          usage,
        }),
      )
      response.completed = true
      return
    }

    // ---- streaming (SSE) ----
    const events = []
    const startUsage = {
      input_tokens: usage.input_tokens,
      cache_creation_input_tokens: usage.cache_creation_input_tokens,
      cache_read_input_tokens: usage.cache_read_input_tokens,
      output_tokens: Math.min(START_OUTPUT_TOKENS, usage.output_tokens),
    }
    events.push([
      'message_start',
      {
        type: 'message_start',
        message: {
          id: messageId,
          type: 'message',
          role: 'assistant',
          model,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: startUsage,
        },
      },
    ])
    events.push(['ping', { type: 'ping' }])
    blocks.forEach((block, index) => {
      if (block.type === 'text') {
        events.push(['content_block_start', { type: 'content_block_start', index, content_block: { type: 'text', text: '' } }])
        for (const piece of splitText(block.text)) {
          events.push(['content_block_delta', { type: 'content_block_delta', index, delta: { type: 'text_delta', text: piece } }])
        }
      } else {
        events.push([
          'content_block_start',
          { type: 'content_block_start', index, content_block: { type: 'tool_use', id: block.id, name: block.name, input: {} } },
        ])
        for (const piece of splitJson(JSON.stringify(block.input), 24)) {
          events.push([
            'content_block_delta',
            { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: piece } },
          ])
        }
      }
      events.push(['content_block_stop', { type: 'content_block_stop', index }])
    })
    events.push([
      'message_delta',
      { type: 'message_delta', delta: { stop_reason: stopReason, stop_sequence: null }, usage: { ...usage } },
    ])
    events.push(['message_stop', { type: 'message_stop' }])

    // dropConnection: stop just past the middle of the stream (after message_start,
    // before message_delta) and destroy the socket without finishing the response.
    let dropAt = Infinity
    if (kind === 'drop') {
      const deltaIndex = events.findIndex(([name]) => name === 'message_delta')
      dropAt = Math.max(2, Math.min(deltaIndex, Math.ceil(events.length / 2)))
    }

    response.usage = startUsage
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'request-id': `req_standin_${nextId()}`,
    })
    // Send headers now so the client sees the first byte even if chunkDelayMs is large.
    res.flushHeaders()

    for (let i = 0; i < events.length; i++) {
      if (ctx.clientGone) return
      if (i >= dropAt) {
        res.socket?.destroy()
        return
      }
      if (i > 0 && reply.chunkDelayMs) {
        await sleep(reply.chunkDelayMs)
        if (ctx.clientGone) return
      }
      const [name, data] = events[i]
      res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`)
      if (name === 'message_delta') {
        response.usage = { ...usage }
        response.stopReason = stopReason
      }
    }
    res.end()
    response.completed = true
  }

  function handleCountTokens(res, record) {
    const inputTokens = countInputTokens(record.body)
    responses.push({
      requestIndex: record.index,
      kind: 'count_tokens',
      status: 200,
      stream: false,
      usage: { input_tokens: inputTokens },
      completed: true,
    })
    sendJson(res, 200, { input_tokens: inputTokens })
  }

  function handleModels(res, record) {
    const id = reportedModel || 'claude-stand-in'
    responses.push({ requestIndex: record.index, kind: 'models', status: 200, stream: false, usage: null, completed: true })
    sendJson(res, 200, {
      data: [{ type: 'model', id, display_name: id, created_at: '2025-01-01T00:00:00Z' }],
      has_more: false,
      first_id: id,
      last_id: id,
    })
  }

  function sendJson(res, status, obj) {
    res.writeHead(status, { 'content-type': 'application/json', 'request-id': `req_standin_${nextId()}` })
    res.end(JSON.stringify(obj))
  }

  function sendError(res, record, status, type, message) {
    responses.push({
      requestIndex: record.index,
      kind: 'error',
      status,
      stream: false,
      usage: null,
      error: { type, message },
      completed: true,
    })
    sendJson(res, status, errorBody(type, message))
  }

  const httpServer = http.createServer((req, res) => {
    const receivedAt = Date.now()
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8')
      let body = null
      let badJson = false
      if (raw.length > 0) {
        try {
          body = JSON.parse(raw)
        } catch {
          body = raw
          badJson = true
        }
      }
      const url = new URL(req.url, 'http://stand-in')
      const sessionHeader = req.headers['x-claude-code-session-id']
      const record = {
        index: requests.length,
        method: req.method,
        path: url.pathname,
        url: req.url,
        headers: { ...req.headers },
        body,
        sessionId: typeof sessionHeader === 'string' ? sessionHeader : null,
        receivedAt,
        endedAt: null,
        aborted: false,
      }
      requests.push(record)

      const ctx = { clientGone: false }
      const path = url.pathname.replace(/\/+$/, '') || '/'
      const isMessages = req.method === 'POST' && path === '/v1/messages'
      if (isMessages) maxInFlight = Math.max(maxInFlight, ++inFlight)
      res.on('close', () => {
        if (!res.writableFinished) {
          ctx.clientGone = true
          record.aborted = true
        }
        record.endedAt = Date.now()
        if (isMessages) inFlight--
      })

      Promise.resolve()
        .then(() => {
          if (req.method === 'HEAD' || (req.method === 'GET' && path === '/')) {
            responses.push({ requestIndex: record.index, kind: 'ok', status: 200, stream: false, usage: null, completed: true })
            res.writeHead(200, { 'content-type': 'text/plain' })
            return res.end(req.method === 'HEAD' ? undefined : 'claude-session-manager stand-in\n')
          }
          if (apiKey !== '*' && req.headers['x-api-key'] !== apiKey && req.headers.authorization !== `Bearer ${apiKey}`) {
            return sendError(res, record, 401, 'authentication_error', 'invalid x-api-key')
          }
          if (badJson) return sendError(res, record, 400, 'invalid_request_error', 'request body is not valid JSON')
          if (isMessages) return handleMessages(req, res, record, ctx)
          if (req.method === 'POST' && path === '/v1/messages/count_tokens') return handleCountTokens(res, record)
          if (req.method === 'GET' && path === '/v1/models') return handleModels(res, record)
          return sendError(res, record, 404, 'not_found_error', `stand-in has no route ${req.method} ${url.pathname}`)
        })
        .catch((err) => {
          if (!res.headersSent) {
            sendError(res, record, 500, 'api_error', `stand-in failure: ${err && err.message}`)
          } else {
            res.destroy(err)
          }
        })
    })
  })

  // Keep-alive sockets from the CLI must not keep close() waiting.
  const sockets = new Set()
  httpServer.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })

  await new Promise((resolve, reject) => {
    httpServer.once('error', reject)
    httpServer.listen(port, host, () => {
      httpServer.off('error', reject)
      resolve()
    })
  })

  const address = httpServer.address()
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`
  let closed = null

  return {
    url,
    port: address.port,
    requests,
    responses,
    env(extra) {
      return {
        ANTHROPIC_BASE_URL: url,
        ANTHROPIC_API_KEY: apiKey === '*' ? DEFAULT_API_KEY : apiKey,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
        CLAUDE_CODE_MAX_RETRIES: '0',
        ...extra,
      }
    },
    enqueue(...replies) {
      for (const r of replies) {
        if (!r || (typeof r !== 'object' && typeof r !== 'function')) {
          throw new TypeError(`enqueue: each reply must be an object or a function, got ${JSON.stringify(r)}`)
        }
      }
      queue.push(...replies)
      return queue.length
    },
    get pending() {
      return queue.length
    },
    get inFlight() {
      return inFlight
    },
    get maxInFlight() {
      return maxInFlight
    },
    reset() {
      maxInFlight = inFlight
      queue.length = 0
      requests.length = 0
      responses.length = 0
    },
    close() {
      if (!closed) {
        closed = new Promise((resolve) => {
          httpServer.close(() => resolve())
          for (const s of sockets) s.destroy()
        })
      }
      return closed
    },
  }
}

module.exports = {
  startStandInServer,
  countInputTokens,
  summarizeUserTurns,
  echoReply,
}
