// The conversation: the message list sent to the server, the transcript on the
// page, and one streaming answer at a time (with Stop). The image goes with
// the first user message, so follow-up questions are about the same image.

import { ChatError, streamChat } from "./api.js";
import { t } from "./i18n.js";
import { renderMarkdown } from "./markdown.js";

function el(tag, className, attrs = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function labelled(tag, className, key) {
  const node = el(tag, className, { "data-i18n": key });
  node.textContent = t(key);
  return node;
}

export function formatDuration(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain-http pages have no clipboard API; the old way still works there.
  const area = el("textarea", "visually-hidden");
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy refused");
}

/** One question and its answer on the page. */
class Turn {
  constructor(transcript, question, image) {
    this.text = "";
    this.stats = null;
    this.statusKey = "chat.thinking";
    this.frame = 0;
    this.user = el("article", "msg user");
    this.user.append(labelled("h3", "who", "chat.you"));
    if (image) {
      const thumb = el("img", "thumb", { src: image.dataUrl, alt: "" });
      const tag = labelled("span", "tag", "chat.with_image");
      this.user.append(thumb, tag);
    }
    const asked = el("p", "body plain");
    asked.textContent = question;
    this.user.append(asked);

    this.answer = el("article", "msg assistant", { "aria-busy": "true" });
    // A thinking model's reasoning, folded away above its answer; plain text, never HTML.
    this.thinking = el("details", "thinking");
    this.thinking.hidden = true;
    this.thoughtText = "";
    this.thought = el("p", "thought plain");
    this.thinking.append(labelled("summary", "", "chat.reasoning"), this.thought);
    this.body = el("div", "body markdown");
    const meta = el("footer", "meta");
    this.status = el("span", "status");
    this.statsEl = el("span", "stats");
    this.copyBtn = labelled("button", "copy ghost small", "chat.copy");
    this.copyBtn.type = "button";
    this.copyBtn.hidden = true;
    this.copyBtn.addEventListener("click", () => this.copy());
    meta.append(this.status, this.statsEl, this.copyBtn);
    this.answer.append(labelled("h3", "who", "chat.assistant"), this.thinking, this.body, meta);
    transcript.append(this.user, this.answer);
    this.relabel();
  }

  appendReasoning(text) {
    this.thoughtText += text;
    this.thinking.hidden = false;
    this.thought.textContent = this.thoughtText;
  }

  append(text) {
    this.text += text;
    // Re-render at most once a frame: tokens can arrive faster than paints.
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }
  }

  render() {
    const root = document.scrollingElement;
    // Follow the answer as it grows, unless the reader has scrolled up.
    const following = root.scrollHeight - root.scrollTop - root.clientHeight < 120;
    this.body.innerHTML = renderMarkdown(this.text);
    if (following) root.scrollTop = root.scrollHeight;
  }

  finish(statusKey, stats) {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.render();
    this.statusKey = statusKey;
    this.stats = stats;
    this.answer.setAttribute("aria-busy", "false");
    this.copyBtn.hidden = !this.text;
    this.relabel();
  }

  remove() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.user.remove();
    this.answer.remove();
  }

  async copy() {
    let key = "chat.copied";
    try {
      await copyText(this.text);
    } catch {
      key = "chat.copy_failed";
    }
    this.copyBtn.dataset.i18n = key;
    this.copyBtn.textContent = t(key);
    setTimeout(() => {
      this.copyBtn.dataset.i18n = "chat.copy";
      this.copyBtn.textContent = t("chat.copy");
    }, 1500);
  }

  /** Redo the parts of the turn whose text has parameters (language switch). */
  relabel() {
    this.status.textContent = this.statusKey ? t(this.statusKey) : "";
    if (!this.stats) {
      this.statsEl.textContent = "";
      return;
    }
    const { ttft, total, usage } = this.stats;
    const parts = [];
    if (ttft !== null) parts.push(t("stats.ttft", { value: formatDuration(ttft) }));
    parts.push(t("stats.total", { value: formatDuration(total) }));
    if (usage) {
      parts.push(t("stats.tokens", { prompt: usage.prompt_tokens ?? "?", completion: usage.completion_tokens ?? "?" }));
      // Decode speed after the first token; too short a window gives nonsense rates.
      const seconds = (total - (ttft ?? total)) / 1000;
      if (usage.completion_tokens > 1 && seconds >= 0.1) {
        parts.push(t("stats.rate", { rate: ((usage.completion_tokens - 1) / seconds).toFixed(1) }));
      }
    }
    this.statsEl.textContent = parts.join(" · ");
  }
}

export class Conversation {
  constructor({ transcript, emptyNote, settings, getImage, getModel, onBusy, onError }) {
    this.transcript = transcript;
    this.emptyNote = emptyNote;
    this.settings = settings;
    this.getImage = getImage;
    this.getModel = getModel;
    this.onBusy = onBusy;
    this.onError = onError;
    this.messages = [];
    this.turns = [];
    this.controller = null;
  }

  get busy() {
    return this.controller !== null;
  }

  get empty() {
    return this.turns.length === 0;
  }

  reset() {
    this.stop();
    for (const turn of this.turns) turn.remove();
    this.turns = [];
    this.messages = [];
    this.emptyNote.hidden = false;
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  relabel() {
    for (const turn of this.turns) turn.relabel();
  }

  userMessage(question) {
    const image = this.messages.length === 0 ? this.getImage() : null;
    const content = [];
    if (image) content.push({ type: "image_url", image_url: { url: image.dataUrl } });
    content.push({ type: "text", text: question });
    return { message: { role: "user", content }, image };
  }

  /**
   * Ask `question`. Resolves when the answer has ended, however it ended, with
   * "done", "stopped", "failed", or "discarded" (nothing arrived, and the
   * question was taken back out of the conversation).
   */
  async ask(question) {
    if (this.busy) return "failed";
    const { message, image } = this.userMessage(question);
    this.messages.push(message);
    this.emptyNote.hidden = true;
    const turn = new Turn(this.transcript, question, image);
    this.turns.push(turn);
    turn.answer.scrollIntoView({ block: "end" });
    const controller = new AbortController();
    this.controller = controller;
    this.onBusy(true);
    const started = performance.now();
    let ttft = null;
    let usage = null;
    try {
      const model = await this.getModel(controller.signal);
      await streamChat({
        messages: this.messages,
        maxTokens: this.settings.maxTokens,
        temperature: this.settings.temperature,
        model,
        apiKey: this.settings.apiKey,
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type === "delta" || event.type === "reasoning") {
            if (ttft === null) ttft = performance.now() - started;
            if (event.type === "delta") turn.append(event.text);
            else turn.appendReasoning(event.text);
          } else if (event.type === "usage") {
            usage = event.usage;
          }
        },
      });
      this.settle(turn, "", { ttft, total: performance.now() - started, usage });
      return "done";
    } catch (err) {
      const stopped = err?.name === "AbortError";
      const stats = { ttft, total: performance.now() - started, usage };
      if (!stopped) this.onError(err instanceof ChatError ? err : new ChatError({ key: "err.network", detail: String(err) }));
      const discard = !turn.text;
      this.settle(turn, stopped ? "chat.stopped" : "", stats, discard);
      if (discard) return "discarded";
      return stopped ? "stopped" : "failed";
    } finally {
      this.controller = null;
      this.onBusy(false);
    }
  }

  /** Record how a turn ended; a turn without any answer leaves no trace in the conversation. */
  settle(turn, statusKey, stats, discard = false) {
    if (!this.turns.includes(turn)) return; // The conversation was reset meanwhile.
    if (discard) {
      turn.remove();
      this.turns = this.turns.filter((x) => x !== turn);
      this.messages.pop();
      this.emptyNote.hidden = this.turns.length > 0;
      return;
    }
    this.messages.push({ role: "assistant", content: turn.text });
    turn.finish(statusKey, stats);
  }
}
