// A deliberately small Markdown renderer for model answers.
//
// Model output is untrusted, so the whole input is HTML-escaped FIRST; the
// rules below only ever add a fixed set of tags (p, br, pre, code, strong, em,
// ul, ol, li, h3-h5, a). The only attribute built from input is a link's href,
// and only for http(s) URLs, which after escaping cannot contain a quote, a
// space or an angle bracket. Anything else stays visible as plain text.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
// Placeholders for already-rendered fragments; the NUL character is removed from
// the input first, so input can never forge one.
const SLOT = "\u0000";

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)([^\n]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([^\n]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}

/** Inline rules on escaped text: code spans, http(s) links, bold, italics. */
function inline(escaped) {
  const slots = [];
  const keep = (html) => `${SLOT}${slots.push(html) - 1}${SLOT}`;
  let s = escaped.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${code}</code>`));
  // A label may hold code-span slots; a URL may not (it would splice HTML into href).
  s = s.replace(
    /\[([^\]\n]+)\]\((https?:\/\/[^\s()\u0000]+)\)/gi,
    (_, label, url) => keep(`<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`),
  );
  s = emphasis(s);
  // A slot's HTML can hold other slots (a code span in a link label), and one
  // replace() pass does not look inside what it inserts, so repeat until no
  // marker is left. Nesting is at most slots.length deep, which bounds the loop.
  const marker = new RegExp(`${SLOT}(\\d+)${SLOT}`, "g");
  for (let round = 0; round <= slots.length && s.includes(SLOT); round++) {
    s = s.replace(marker, (_, n) => slots[Number(n)] ?? "");
  }
  return s;
}

const FENCE = /^\s*```\s*([\w+#.-]*)\s*$/;
const FENCE_END = /^\s*```\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;

class Blocks {
  constructor() {
    this.out = [];
    this.para = [];
    this.list = null;
  }

  flushPara() {
    if (this.para.length) this.out.push(`<p>${inline(this.para.join("\n")).replace(/\n/g, "<br>")}</p>`);
    this.para = [];
  }

  flushList() {
    if (!this.list) return;
    const items = this.list.items.map((item) => `<li>${inline(item)}</li>`).join("");
    this.out.push(`<${this.list.tag}>${items}</${this.list.tag}>`);
    this.list = null;
  }

  flush() {
    this.flushPara();
    this.flushList();
  }

  addItem(tag, text) {
    this.flushPara();
    if (this.list && this.list.tag !== tag) this.flushList();
    if (!this.list) this.list = { tag, items: [] };
    this.list.items.push(text);
  }

  /** Handle one ordinary line (not a fence). */
  line(line) {
    let m;
    if (!line.trim()) {
      this.flush();
    } else if ((m = line.match(HEADING))) {
      this.flush();
      const level = Math.min(m[1].length + 2, 5);
      this.out.push(`<h${level}>${inline(m[2])}</h${level}>`);
    } else if ((m = line.match(BULLET))) {
      this.addItem("ul", m[1]);
    } else if ((m = line.match(NUMBERED))) {
      this.addItem("ol", m[1]);
    } else if (this.list && /^\s+/.test(line)) {
      const items = this.list.items;
      items[items.length - 1] += ` ${line.trim()}`;
    } else {
      this.flushList();
      this.para.push(line);
    }
  }
}

/**
 * Render untrusted Markdown to safe HTML. An unclosed code fence runs to the
 * end, so a half-streamed answer renders sensibly while it is still arriving.
 */
export function renderMarkdown(source) {
  const text = escapeHtml(
    String(source ?? "")
      .replaceAll(SLOT, "")
      .replace(/\r\n?/g, "\n"),
  );
  const lines = text.split("\n");
  const blocks = new Blocks();
  for (let i = 0; i < lines.length; i++) {
    const fence = lines[i].match(FENCE);
    if (!fence) {
      blocks.line(lines[i]);
      continue;
    }
    blocks.flush();
    const body = [];
    for (i++; i < lines.length && !FENCE_END.test(lines[i]); i++) body.push(lines[i]);
    const lang = fence[1] ? ` data-lang="${fence[1]}"` : "";
    blocks.out.push(`<pre><code${lang}>${body.join("\n")}</code></pre>`);
  }
  blocks.flush();
  return blocks.out.join("");
}
