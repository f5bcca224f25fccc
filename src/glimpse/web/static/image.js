// Checking an image in the browser before it is uploaded. The server checks
// again (it is the authority); this only spares people a slow upload that is
// bound to fail. The type comes from the file's first bytes, never its name.

// The server's defaults (MediaSettings in glimpse/config.py); the page has no
// endpoint to read the live values from.
export const LIMITS = Object.freeze({
  maxBytes: 5 * 1024 * 1024,
  types: Object.freeze(["image/jpeg", "image/png", "image/webp"]),
});

const TYPE_NAMES = { "image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP" };

function startsWith(bytes, signature, offset = 0) {
  if (bytes.length < offset + signature.length) return false;
  return signature.every((b, i) => bytes[offset + i] === b);
}

/** The MIME type that `bytes` (the file's first 12 or more) begin like, or null. */
export function sniffImageType(bytes) {
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return "image/jpeg";
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "image/png";
  // RIFF....WEBP
  if (startsWith(bytes, [0x52, 0x49, 0x46, 0x46]) && startsWith(bytes, [0x57, 0x45, 0x42, 0x50], 8)) {
    return "image/webp";
  }
  return null;
}

export function typeName(mime) {
  return TYPE_NAMES[mime] || mime;
}

/** A human file size: 1 decimal for KB/MB, like "512 B", "48.2 KB", "5.0 MB". */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function dimensions(blob) {
  try {
    const bitmap = await createImageBitmap(blob);
    const dims = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return dims;
  } catch {
    // The browser cannot decode it. Let the server decide and explain: it
    // may accept what this browser cannot, and otherwise says why it cannot.
    return null;
  }
}

/**
 * Check `file` and load what the page needs. Returns {ok: true, image} or
 * {ok: false, error: {key, params}} where key is an i18n key.
 */
export async function inspectImage(file, limits = LIMITS) {
  if (file.size > limits.maxBytes) {
    return {
      ok: false,
      error: { key: "err.too_large", params: { size: formatBytes(file.size), limit: formatBytes(limits.maxBytes) } },
    };
  }
  const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
  const mime = sniffImageType(head);
  if (!mime || !limits.types.includes(mime)) return { ok: false, error: { key: "err.wrong_type", params: {} } };
  // Label the bytes with the sniffed type, not whatever the file name implied.
  const blob = new Blob([file], { type: mime });
  const [dataUrl, dims] = await Promise.all([readAsDataUrl(blob), dimensions(blob)]);
  return {
    ok: true,
    image: { name: file.name || "", bytes: file.size, mime, dataUrl, blob, width: dims?.width, height: dims?.height },
  };
}

/** The first file in a DataTransfer (drop or paste), if any; its type is checked later. */
export function firstFile(dataTransfer) {
  if (!dataTransfer) return null;
  for (const item of dataTransfer.items || []) {
    if (item.kind === "file") {
      const file = item.getAsFile();
      if (file) return file;
    }
  }
  return dataTransfer.files && dataTransfer.files.length ? dataTransfer.files[0] : null;
}
