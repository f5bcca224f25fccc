// A message area that remembers WHAT it says (an i18n key and parameters),
// not the text, so a language switch can re-render it, and that counts a
// Retry-After down to "you can try again now".

import { t } from "./i18n.js";

export class Notice {
  constructor(element) {
    this.element = element;
    this.message = null;
    this.timer = 0;
  }

  /** Show {key, params?, detail?, retryAfter?} (a ChatError fits). */
  show(message) {
    this.clear();
    this.message = {
      key: message.key,
      params: { ...(message.params || {}) },
      detail: message.detail || "",
    };
    const seconds = message.retryAfter;
    if (Number.isFinite(seconds) && seconds > 0) {
      this.timer = setInterval(() => this.tick(), 1000);
    }
    this.render();
  }

  tick() {
    const params = this.message.params;
    params.seconds = Math.max(0, Number(params.seconds) - 1);
    if (params.seconds === 0) {
      clearInterval(this.timer);
      this.timer = 0;
      this.message = { key: "err.retry_ready", params: {}, detail: "" };
    }
    this.render();
  }

  clear() {
    if (this.timer) clearInterval(this.timer);
    this.timer = 0;
    this.message = null;
    this.render();
  }

  get key() {
    return this.message ? this.message.key : null;
  }

  render() {
    const el = this.element;
    el.hidden = !this.message;
    el.replaceChildren();
    if (!this.message) {
      delete el.dataset.key;
      return;
    }
    el.dataset.key = this.message.key;
    const main = document.createElement("p");
    main.textContent = t(this.message.key, this.message.params);
    el.append(main);
    if (this.message.detail) {
      const detail = document.createElement("p");
      detail.className = "detail";
      detail.textContent = t("err.detail", { detail: this.message.detail });
      el.append(detail);
    }
  }
}
