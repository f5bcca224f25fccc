// Entry point: wires the image picker, the conversation, settings, language,
// messages and the readiness banner together. Each concern lives in its own
// module; this file only connects them to the page.

import { checkReady } from "./api.js";
import { Conversation } from "./chat.js";
import { applyTranslations, getLang, initialLang, setLang, t } from "./i18n.js";
import { LIMITS, firstFile, formatBytes, inspectImage, typeName } from "./image.js";
import { ModelPicker } from "./models.js";
import { Notice } from "./notice.js";
import { Settings } from "./settings.js";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "glimpse.history";
const HISTORY_MAX = 50;

const state = { image: null, previewUrl: null, history: [] };

const settings = new Settings({
  maxTokensInput: $("max-tokens"),
  temperatureInput: $("temperature"),
  temperatureOutput: $("temperature-value"),
  apiKeyInput: $("api-key"),
});
const models = new ModelPicker({ picker: $("model-picker"), select: $("model-select"), name: $("model-name") });
const imageNotice = new Notice($("image-error"));
const chatNotice = new Notice($("chat-error"));

const conversation = new Conversation({
  transcript: $("transcript"),
  emptyNote: $("chat-empty"),
  settings,
  getImage: () => state.image,
  getModel: (signal) => models.resolve(settings.apiKey, signal),
  onBusy: (busy) => {
    $("send-btn").disabled = busy;
    $("stop-btn").hidden = !busy;
    document.body.classList.toggle("busy", busy);
    if (!busy && document.activeElement === document.body) $("question").focus();
  },
  onError: (err) => {
    chatNotice.show(err);
    if (err.key === "err.invalid_api_key" || err.key === "err.max_tokens") {
      $("settings").open = true;
    }
    if (err.code === "not_ready" || err.key === "err.network") readiness.watch();
  },
});

// ---- language ---------------------------------------------------------------

function renderLanguage() {
  applyTranslations();
  $("image-hint").textContent = t("image.hint", { limit: formatBytes(LIMITS.maxBytes) });
  renderPreviewMeta();
  renderHistory();
  conversation.relabel();
  models.relabel();
  imageNotice.render();
  chatNotice.render();
  readiness.render();
}

$("lang-toggle").addEventListener("click", () => {
  setLang(getLang() === "zh" ? "en" : "zh");
  renderLanguage();
});

// ---- image ------------------------------------------------------------------

function renderPreviewMeta() {
  const image = state.image;
  if (!image) return;
  const params = { size: formatBytes(image.bytes), type: typeName(image.mime) };
  const known = Number.isFinite(image.width) && Number.isFinite(image.height);
  $("preview-meta").textContent = known
    ? t("image.meta", { ...params, width: image.width, height: image.height })
    : t("image.meta_nodims", params);
}

function showImage(image) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.image = image;
  state.previewUrl = image ? URL.createObjectURL(image.blob) : null;
  $("preview").hidden = !image;
  $("dropzone").hidden = Boolean(image);
  $("preview-img").src = state.previewUrl || "";
  renderPreviewMeta();
  // A different image means a different conversation.
  if (!conversation.empty) conversation.reset();
  chatNotice.clear();
}

async function takeFile(file) {
  if (!file) return;
  imageNotice.clear();
  const result = await inspectImage(file);
  if (!result.ok) {
    imageNotice.show(result.error);
    return;
  }
  showImage(result.image);
  $("question").focus();
}

$("choose-btn").addEventListener("click", () => $("file-input").click());
$("replace-btn").addEventListener("click", () => $("file-input").click());
$("remove-btn").addEventListener("click", () => {
  showImage(null);
  imageNotice.clear();
  $("choose-btn").focus();
});
$("file-input").addEventListener("change", async (event) => {
  const input = event.target;
  const file = input.files && input.files[0];
  input.value = ""; // Choosing the same file again must still fire "change".
  await takeFile(file);
});

for (const target of [$("dropzone"), $("preview")]) {
  target.addEventListener("dragover", (event) => {
    event.preventDefault();
    target.classList.add("dragging");
  });
  target.addEventListener("dragleave", () => target.classList.remove("dragging"));
  target.addEventListener("drop", async (event) => {
    event.preventDefault();
    target.classList.remove("dragging");
    await takeFile(firstFile(event.dataTransfer));
  });
}
// A file dropped anywhere else must not make the browser navigate away to it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

document.addEventListener("paste", async (event) => {
  const file = firstFile(event.clipboardData);
  if (!file) return; // Plain text: let it paste into the question box.
  event.preventDefault();
  await takeFile(file);
});

// ---- asking -----------------------------------------------------------------

function loadHistory() {
  try {
    const saved = JSON.parse(window.sessionStorage.getItem(HISTORY_KEY) || "[]");
    state.history = Array.isArray(saved) ? saved.filter((q) => typeof q === "string").slice(0, HISTORY_MAX) : [];
  } catch {
    state.history = [];
  }
}

function remember(question) {
  state.history = [question, ...state.history.filter((q) => q !== question)].slice(0, HISTORY_MAX);
  try {
    window.sessionStorage.setItem(HISTORY_KEY, JSON.stringify(state.history));
  } catch {
    // The list still shows for this page.
  }
  renderHistory();
}

function renderHistory() {
  const list = $("history-list");
  list.replaceChildren(
    ...state.history.map((question) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "linklike";
      button.textContent = question;
      button.title = t("history.reuse", { question });
      button.addEventListener("click", () => {
        $("question").value = question;
        $("question").focus();
      });
      item.append(button);
      return item;
    }),
  );
  $("history-empty").hidden = state.history.length > 0;
}

async function send() {
  const box = $("question");
  const question = box.value.trim();
  if (conversation.busy) return;
  if (!question) {
    chatNotice.show({ key: "err.empty_question" });
    box.focus();
    return;
  }
  chatNotice.clear();
  remember(question);
  box.value = "";
  const outcome = await conversation.ask(question);
  // Nothing came back: hand the question back so it can be sent again.
  if (outcome === "discarded" && !box.value) box.value = question;
}

$("ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
$("question").addEventListener("keydown", (event) => {
  // isComposing: Enter that confirms a Chinese IME candidate must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    send();
  }
});
$("stop-btn").addEventListener("click", () => {
  conversation.stop();
  $("question").focus();
});
$("new-btn").addEventListener("click", () => {
  conversation.reset();
  chatNotice.clear();
  $("question").focus();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && conversation.busy) conversation.stop();
});

// ---- readiness and connectivity ---------------------------------------------

const readiness = {
  key: null,
  timer: 0,
  render() {
    const banner = $("banner");
    banner.hidden = !this.key;
    banner.textContent = this.key ? t(this.key) : "";
    banner.dataset.state = this.key ? this.key.split(".")[1] : "";
  },
  set(key) {
    this.key = key;
    this.render();
  },
  /** Poll /readyz until the server answers ready, showing why we wait. */
  async watch() {
    if (this.timer) return;
    this.timer = -1;
    for (;;) {
      if (!navigator.onLine) {
        this.set("banner.offline");
      } else {
        const { status, maxTokens } = await checkReady();
        if (status === "ready") {
          if (maxTokens) settings.setMaxTokensLimit(maxTokens);
          break;
        }
        this.set(status === "loading" ? "banner.not_ready" : "banner.unreachable");
      }
      await new Promise((resolve) => {
        this.timer = setTimeout(resolve, 2000);
      });
    }
    this.timer = 0;
    // Name the served model, or offer its adapters, once the server can say (it may need the key).
    models.resolve(settings.apiKey);
    if (this.key) {
      this.set("banner.ready");
      setTimeout(() => {
        if (this.key === "banner.ready") this.set(null);
      }, 2500);
    }
  },
};

window.addEventListener("offline", () => readiness.set("banner.offline"));
window.addEventListener("online", () => {
  readiness.set(null);
  readiness.watch();
});

// ---- start ------------------------------------------------------------------

setLang(initialLang());
loadHistory();
renderLanguage();
readiness.watch();
document.body.dataset.ready = "true";
