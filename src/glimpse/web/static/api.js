// Talking to the Glimpse server: the streaming chat call, readiness, and
// turning every kind of failure into one message descriptor {key, params, detail}
// that the page shows in its current language.

import { readSseData } from "./sse.js";

/** A failure the page explains to the person: `key` is an i18n key. */
export class ChatError extends Error {
  constructor({ key, params = {}, detail = "", status = 0, code = "", retryAfter = null }) {
    super(detail || key);
    this.name = "ChatError";
    this.key = key;
    this.params = params;
    this.detail = detail;
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Seconds to wait from a Retry-After header (delta-seconds or an HTTP date). */
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - now) / 1000));
}

// Server error codes (see glimpse/errors.py) that have their own message.
const CODE_KEYS = {
  invalid_request: "err.validation",
  invalid_image: "err.invalid_image",
  image_too_large: "err.image_too_large",
  request_too_large: "err.request_too_large",
  unsupported_media_type: "err.unsupported_media_type",
  invalid_api_key: "err.invalid_api_key",
  forbidden: "err.forbidden",
  prompt_rejected: "err.prompt_rejected",
  not_ready: "err.not_ready",
  deadline_exceeded: "err.deadline_exceeded",
  upstream_timeout: "err.deadline_exceeded",
};

// When the body has no usable code, the status still says a lot.
const STATUS_KEYS = {
  400: "err.validation",
  401: "err.invalid_api_key",
  403: "err.forbidden",
  413: "err.request_too_large",
  415: "err.unsupported_media_type",
  422: "err.validation",
  504: "err.deadline_exceeded",
};

function busyError(kind, status, code, detail, retryAfter) {
  const key = retryAfter === null ? `err.${kind}_now` : `err.${kind}`;
  return new ChatError({ key, params: { seconds: retryAfter }, detail, status, code, retryAfter });
}

/**
 * Describe a server error. `status` is 0 for an error event that arrived
 * mid-stream (the HTTP status was already 200 by then).
 */
export function describeError(status, body, retryAfterHeader = null) {
  const error = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const code = typeof error.code === "string" ? error.code : "";
  const detail = typeof error.message === "string" ? error.message : "";
  const param = typeof error.param === "string" ? error.param : "";
  const retryAfter = parseRetryAfter(retryAfterHeader ?? error.retry_after ?? null);
  if (code === "rate_limited" || (!code && status === 429)) {
    return busyError("rate_limited", status, code, detail, retryAfter);
  }
  if (code === "overloaded" || (!code && status === 503)) {
    return busyError("overloaded", status, code, detail, retryAfter);
  }
  if (code === "invalid_request" && (param === "max_tokens" || param === "max_completion_tokens")) {
    // Above the server's engine.max_new_tokens_limit: its message names the limit.
    return new ChatError({ key: "err.max_tokens", params: {}, detail, status, code, retryAfter });
  }
  // status 0: the failure came as an event after the answer had started.
  const key = CODE_KEYS[code] || STATUS_KEYS[status] || (status ? "err.server" : "err.stream_failed");
  return new ChatError({ key, params: { status: status || "—" }, detail, status, code, retryAfter });
}

async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // A proxy's HTML error page: the status alone has to do.
  }
  return describeError(response.status, body, response.headers.get("Retry-After"));
}

function headers(apiKey) {
  const h = { "Content-Type": "application/json", Accept: "text/event-stream" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

/**
 * The models the server lists, as [{id, parent}] (``parent``: the model a LoRA adapter
 * adapts, null for a model of its own), or null when it will not say (no key yet, an error).
 */
export async function fetchModels(apiKey, signal) {
  try {
    const response = await fetch("/v1/models", { headers: headers(apiKey), signal });
    if (!response.ok) return null;
    const body = await response.json();
    const models = (Array.isArray(body?.data) ? body.data : [])
      .filter((model) => model && typeof model.id === "string" && model.id)
      .map((model) => ({ id: model.id, parent: typeof model.parent === "string" ? model.parent : null }));
    return models.length ? models : null;
  } catch {
    return null;
  }
}

/**
 * { status: "ready" | "loading" (503) | "unreachable" (no answer), maxTokens }. Any other
 * status counts as ready; maxTokens is the server's max_tokens limit when it says one.
 */
export async function checkReady(signal) {
  let response;
  try {
    response = await fetch("/readyz", { cache: "no-store", signal });
  } catch {
    return { status: "unreachable", maxTokens: null };
  }
  if (response.status === 503) return { status: "loading", maxTokens: null };
  let limit = null;
  try {
    limit = (await response.json())?.max_tokens_limit;
  } catch {
    // Not JSON (a proxy's page): ready all the same, with no limit to show.
  }
  return { status: "ready", maxTokens: Number.isInteger(limit) && limit > 0 ? limit : null };
}

function handleEvent(payload, onEvent) {
  let chunk;
  try {
    chunk = JSON.parse(payload);
  } catch {
    return; // Not JSON: nothing the page can use.
  }
  if (chunk.error) throw describeError(0, chunk, null);
  for (const choice of chunk.choices || []) {
    const thought = choice?.delta?.reasoning_content;
    if (typeof thought === "string" && thought) onEvent({ type: "reasoning", text: thought });
    const text = choice?.delta?.content;
    if (typeof text === "string" && text) onEvent({ type: "delta", text });
    if (choice?.finish_reason) onEvent({ type: "finish", reason: choice.finish_reason });
  }
  if (chunk.usage) onEvent({ type: "usage", usage: chunk.usage });
}

/**
 * POST a streaming chat completion and report its pieces through `onEvent`
 * ({type: "delta"|"finish"|"usage"}). Resolves when the stream ends; rejects
 * with a ChatError, or with the AbortError when `signal` stops it.
 */
export async function streamChat({ messages, maxTokens, temperature, model, apiKey, signal, onEvent }) {
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: maxTokens,
    temperature,
  };
  if (model) body.model = model;
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(apiKey),
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ChatError({ key: "err.network", detail: String(err.message || err) });
  }
  if (!response.ok) throw await errorFromResponse(response);
  try {
    for await (const payload of readSseData(response.body)) {
      if (payload.trim() === "[DONE]") return;
      handleEvent(payload, onEvent);
    }
  } catch (err) {
    if (err instanceof ChatError || err.name === "AbortError") throw err;
    throw new ChatError({ key: "err.network_lost", detail: String(err.message || err) });
  }
  // The body ended without [DONE]: the connection dropped midway.
  throw new ChatError({ key: "err.network_lost" });
}
