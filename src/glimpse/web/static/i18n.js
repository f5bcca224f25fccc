// Interface strings in English and Chinese, and the page's language choice.
// Every visible string lives here so the two languages cannot drift apart:
// tests/e2e/web checks that both tables have the same keys.

const STORAGE_KEY = "glimpse.lang";

export const STRINGS = {
  en: {
    "app.tagline": "Ask questions about an image",
    "lang.switch": "中文",
    "lang.switch_label": "Switch the interface to Chinese",
    "image.heading": "Image",
    "image.drop": "Drop an image here, paste one (Ctrl+V), or",
    "image.choose": "choose a file",
    "image.hint": "JPEG, PNG or WebP, up to {limit}.",
    "image.replace": "Replace",
    "image.remove": "Remove",
    "image.preview_alt": "The image you chose",
    "image.meta": "{width} × {height} px · {size} · {type}",
    "image.meta_nodims": "{size} · {type}",
    "model.label": "Model",
    "model.adapter": "{name} (adapter of {parent})",
    "settings.heading": "Settings",
    "settings.max_tokens": "Max tokens",
    "settings.temperature": "Temperature",
    "settings.api_key": "API key",
    "settings.api_key_hint": "Only needed if the server requires one. Kept in this tab only (session storage).",
    "history.heading": "Your questions",
    "history.empty": "Questions you ask on this page appear here.",
    "history.reuse": "Ask again: {question}",
    "chat.heading": "Conversation",
    "chat.empty": "Choose an image, then ask a question about it. Follow-up questions keep the conversation.",
    "chat.question": "Your question",
    "chat.placeholder": "What is in this picture?",
    "chat.hint": "Enter sends · Shift+Enter adds a new line",
    "chat.send": "Send",
    "chat.stop": "Stop",
    "chat.new": "New conversation",
    "chat.you": "You",
    "chat.assistant": "Glimpse",
    "chat.reasoning": "Thinking",
    "chat.copy": "Copy",
    "chat.copied": "Copied",
    "chat.copy_failed": "Copy failed",
    "chat.thinking": "Waiting for the first token…",
    "chat.stopped": "Stopped.",
    "chat.with_image": "with image",
    "stats.ttft": "first token {value}",
    "stats.total": "total {value}",
    "stats.tokens": "{prompt} prompt + {completion} answer tokens",
    "stats.rate": "{rate} tokens/s",
    "banner.not_ready": "The server is still loading the model. This page will continue when it is ready…",
    "banner.unreachable": "Cannot reach the server. Retrying…",
    "banner.offline": "You are offline. Check your network connection.",
    "banner.ready": "The server is ready.",
    "err.too_large": "This image is {size}, larger than the {limit} limit. Choose a smaller image.",
    "err.wrong_type": "This file is not a JPEG, PNG or WebP image (checked from its content, not its name).",
    "err.empty_question": "Type a question first.",
    "err.invalid_image": "The server could not read this image. It may be damaged or truncated.",
    "err.image_too_large": "The server says the image is too large. Choose a smaller image.",
    "err.request_too_large": "The request is too large for the server. Use a smaller image.",
    "err.unsupported_media_type": "The server does not accept this kind of image. Use JPEG, PNG or WebP.",
    "err.invalid_api_key": "The API key is missing or not accepted. Enter a valid key under Settings.",
    "err.forbidden": "This API key is not allowed to do that.",
    "err.rate_limited": "Too many requests. Try again in {seconds} s.",
    "err.rate_limited_now": "Too many requests. Wait a moment and try again.",
    "err.overloaded": "The server is busy. Try again in {seconds} s.",
    "err.overloaded_now": "The server is busy. Wait a moment and try again.",
    "err.not_ready": "The server is still loading the model. Try again when the banner disappears.",
    "err.prompt_rejected": "The server's safety check refused this question. Please rephrase it.",
    "err.validation": "The server rejected the request as invalid.",
    "err.max_tokens": "Max tokens is higher than this server allows. Lower it under Settings.",
    "err.deadline_exceeded": "The answer took too long and was cut off by the server.",
    "err.network": "Could not reach the server. Check your connection and try again.",
    "err.network_lost": "The connection was lost while the answer was arriving.",
    "err.server": "The server had a problem (HTTP {status}). Try again later.",
    "err.stream_failed": "The answer was cut short by a server error. Try again.",
    "err.retry_ready": "You can try again now.",
    "err.detail": "Server said: {detail}",
  },
  zh: {
    "app.tagline": "就图片提问",
    "lang.switch": "English",
    "lang.switch_label": "将界面切换为英文",
    "image.heading": "图片",
    "image.drop": "把图片拖到这里、粘贴（Ctrl+V），或",
    "image.choose": "选择文件",
    "image.hint": "JPEG、PNG 或 WebP，不超过 {limit}。",
    "image.replace": "更换",
    "image.remove": "移除",
    "image.preview_alt": "你选择的图片",
    "image.meta": "{width} × {height} 像素 · {size} · {type}",
    "image.meta_nodims": "{size} · {type}",
    "model.label": "模型",
    "model.adapter": "{name}（{parent} 的适配器）",
    "settings.heading": "设置",
    "settings.max_tokens": "最大生成长度（token）",
    "settings.temperature": "温度",
    "settings.api_key": "API 密钥",
    "settings.api_key_hint": "仅在服务器要求时需要。只保存在当前标签页（会话存储）。",
    "history.heading": "你的提问",
    "history.empty": "你在本页提出的问题会显示在这里。",
    "history.reuse": "再问一次：{question}",
    "chat.heading": "对话",
    "chat.empty": "先选择一张图片，然后就它提问。追问会保留上下文。",
    "chat.question": "你的问题",
    "chat.placeholder": "这张图片里有什么？",
    "chat.hint": "Enter 发送 · Shift+Enter 换行",
    "chat.send": "发送",
    "chat.stop": "停止",
    "chat.new": "新对话",
    "chat.you": "你",
    "chat.assistant": "Glimpse",
    "chat.reasoning": "思考过程",
    "chat.copy": "复制",
    "chat.copied": "已复制",
    "chat.copy_failed": "复制失败",
    "chat.thinking": "正在等待第一个 token…",
    "chat.stopped": "已停止。",
    "chat.with_image": "附图片",
    "stats.ttft": "首 token {value}",
    "stats.total": "总计 {value}",
    "stats.tokens": "提示 {prompt} + 回答 {completion} 个 token",
    "stats.rate": "{rate} token/秒",
    "banner.not_ready": "服务器仍在加载模型，准备好后本页会自动继续…",
    "banner.unreachable": "无法连接服务器，正在重试…",
    "banner.offline": "你已离线，请检查网络连接。",
    "banner.ready": "服务器已就绪。",
    "err.too_large": "这张图片有 {size}，超过了 {limit} 的上限。请选择更小的图片。",
    "err.wrong_type": "这个文件不是 JPEG、PNG 或 WebP 图片（根据文件内容判断，而不是文件名）。",
    "err.empty_question": "请先输入问题。",
    "err.invalid_image": "服务器无法读取这张图片，文件可能已损坏或不完整。",
    "err.image_too_large": "服务器认为这张图片太大，请选择更小的图片。",
    "err.request_too_large": "请求太大，服务器无法接收。请使用更小的图片。",
    "err.unsupported_media_type": "服务器不接受这种图片格式，请使用 JPEG、PNG 或 WebP。",
    "err.invalid_api_key": "缺少 API 密钥或密钥无效。请在“设置”中填写有效的密钥。",
    "err.forbidden": "这个 API 密钥无权执行此操作。",
    "err.rate_limited": "请求过于频繁，请在 {seconds} 秒后重试。",
    "err.rate_limited_now": "请求过于频繁，请稍后重试。",
    "err.overloaded": "服务器繁忙，请在 {seconds} 秒后重试。",
    "err.overloaded_now": "服务器繁忙，请稍后重试。",
    "err.not_ready": "服务器仍在加载模型，请在提示条消失后重试。",
    "err.prompt_rejected": "服务器的安全检查拒绝了这个问题，请换一种问法。",
    "err.validation": "服务器认为请求无效，已拒绝。",
    "err.max_tokens": "“最大生成长度”超过了服务器允许的上限，请在“设置”中调低。",
    "err.deadline_exceeded": "回答用时过长，已被服务器中止。",
    "err.network": "无法连接服务器，请检查网络后重试。",
    "err.network_lost": "接收回答时连接中断。",
    "err.server": "服务器出现问题（HTTP {status}），请稍后重试。",
    "err.stream_failed": "服务器出错，回答被中断。请重试。",
    "err.retry_ready": "现在可以重试了。",
    "err.detail": "服务器信息：{detail}",
  },
};

export const LANGS = Object.keys(STRINGS);

let current = "en";

/** The language to start in: a remembered choice, else the browser's preference. */
export function initialLang(storage = window.localStorage, languages = navigator.languages) {
  let saved = null;
  try {
    saved = storage.getItem(STORAGE_KEY);
  } catch {
    saved = null; // storage can be disabled; fall back to the browser's language
  }
  if (saved && saved in STRINGS) return saved;
  const preferred = (languages && languages.length ? languages : [navigator.language || "en"])[0];
  return String(preferred).toLowerCase().startsWith("zh") ? "zh" : "en";
}

export function getLang() {
  return current;
}

export function setLang(lang, storage = window.localStorage) {
  current = lang in STRINGS ? lang : "en";
  try {
    storage.setItem(STORAGE_KEY, current);
  } catch {
    // Not remembering the choice is acceptable; the switch still works for this visit.
  }
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  return current;
}

/** Translate `key`, filling `{name}` placeholders from `params`. */
export function t(key, params = {}) {
  const table = STRINGS[current] || STRINGS.en;
  const template = table[key] ?? STRINGS.en[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

/** Re-translate every element that names its string with data-i18n attributes. */
export function applyTranslations(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
  for (const el of root.querySelectorAll("[data-i18n-alt]")) el.alt = t(el.dataset.i18nAlt);
}
