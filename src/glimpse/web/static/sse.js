// Server-sent events over fetch. EventSource can only GET, and chat
// completions are a POST, so the stream is read and split here instead.

/**
 * Yield the `data` payload of each event in `stream` (a ReadableStream of
 * bytes), following the SSE rules that matter here: events end at a blank
 * line, several `data:` lines join with "\n", lines starting with ":" are
 * comments, and one optional space after the colon is dropped.
 */
export async function* readSseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      buffer += value;
      // A trailing "\r" may be the first half of a "\r\n" split across chunks.
      const held = buffer.endsWith("\r") ? "\r" : "";
      const lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      // The last piece may be an incomplete line.
      buffer = lines.pop() + held;
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
        // Other fields (event:, id:, retry:) and comments are not used by the API.
      }
    }
    buffer = buffer.replace(/\r$/, "");
    if (buffer.startsWith("data:")) data.push(buffer.slice(buffer.startsWith("data: ") ? 6 : 5));
    if (data.length) yield data.join("\n");
  } finally {
    // Stopping early (the consumer broke out) must not leave the body streaming.
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
