'use strict'
// claude-session-manager/react: the reader of the stream route's Server-Sent Events. Client-safe
// (no React, no addon); used by the hook, and exported by ./index.js.

/**
 * Reads a `text/event-stream` body, calling `onFrame(event, data, id)` per event (`data` parsed as
 * JSON, `id` the frame's `id:` if any). Comments (keep-alives) are skipped.
 */
async function readEventStream(body, onFrame) {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  const flush = (block) => {
    let event = 'message'
    let id
    const data = []
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.charCodeAt(0) === 58 /* ':' */) continue
      const i = line.indexOf(':')
      const field = i < 0 ? line : line.slice(0, i)
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '')
      if (field === 'event') event = value
      else if (field === 'data') data.push(value)
      else if (field === 'id') id = value
    }
    if (data.length) onFrame(event, JSON.parse(data.join('\n')), id)
  }
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buffer += decoder.decode(value, { stream: true })
    let m
    while ((m = /\r?\n\r?\n/.exec(buffer))) {
      const block = buffer.slice(0, m.index)
      buffer = buffer.slice(m.index + m[0].length)
      flush(block)
    }
  }
  buffer += decoder.decode()
  if (buffer.trim()) flush(buffer)
}

module.exports = { readEventStream }
