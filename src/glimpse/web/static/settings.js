// Generation settings and the API key. The settings are remembered across
// visits (localStorage); the key only for this tab (sessionStorage), so it is
// gone when the tab closes and is never written anywhere longer-lived.

const SETTINGS_KEY = "glimpse.settings";
const API_KEY_KEY = "glimpse.apiKey";
const DEFAULTS = { maxTokens: 512, temperature: 0.7 };
// The server's default engine.max_new_tokens_limit. The page learns the real one
// from /readyz (setMaxTokensLimit sets the input's max attribute, the one source);
// until then the attribute holds the default, with this as the fallback.
const MAX_TOKENS_LIMIT = 4096;

function load(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null; // Storage disabled (private mode, policy): use defaults.
  }
}

function save(storage, key, value) {
  try {
    if (value === "" || value === null) storage.removeItem(key);
    else storage.setItem(key, value);
  } catch {
    // Nothing to do: the value still applies to this visit.
  }
}

function clamp(value, min, max, fallback) {
  const n = Number(value);
  if (!Number.isFinite(n)) return fallback;
  return Math.min(max, Math.max(min, n));
}

export class Settings {
  constructor({ maxTokensInput, temperatureInput, temperatureOutput, apiKeyInput }) {
    this.maxTokensInput = maxTokensInput;
    this.temperatureInput = temperatureInput;
    this.temperatureOutput = temperatureOutput;
    this.apiKeyInput = apiKeyInput;
    this.restore();
    maxTokensInput.addEventListener("change", () => this.persist());
    temperatureInput.addEventListener("input", () => {
      this.showTemperature();
      this.persist();
    });
    apiKeyInput.addEventListener("input", () => save(window.sessionStorage, API_KEY_KEY, apiKeyInput.value.trim()));
  }

  restore() {
    let saved = {};
    try {
      saved = JSON.parse(load(window.localStorage, SETTINGS_KEY) || "{}") || {};
    } catch {
      saved = {};
    }
    this.maxTokensInput.value = String(Math.round(clamp(saved.maxTokens, 1, this.maxTokensLimit, DEFAULTS.maxTokens)));
    this.temperatureInput.value = String(clamp(saved.temperature, 0, 2, DEFAULTS.temperature));
    this.apiKeyInput.value = load(window.sessionStorage, API_KEY_KEY) || "";
    this.showTemperature();
  }

  showTemperature() {
    this.temperatureOutput.value = Number(this.temperatureInput.value).toFixed(2);
  }

  persist() {
    const values = { maxTokens: this.maxTokens, temperature: this.temperature };
    this.maxTokensInput.value = String(values.maxTokens);
    save(window.localStorage, SETTINGS_KEY, JSON.stringify(values));
  }

  /** The server's own limit (from /readyz): the field's max, and the value brought under it. */
  setMaxTokensLimit(limit) {
    this.maxTokensInput.max = String(limit);
    if (Number(this.maxTokensInput.value) > limit) this.maxTokensInput.value = String(limit);
  }

  get maxTokensLimit() {
    const max = Number(this.maxTokensInput.max);
    return Number.isFinite(max) && max >= 1 ? max : MAX_TOKENS_LIMIT;
  }

  get maxTokens() {
    return Math.round(clamp(this.maxTokensInput.value, 1, this.maxTokensLimit, DEFAULTS.maxTokens));
  }

  get temperature() {
    return clamp(this.temperatureInput.value, 0, 2, DEFAULTS.temperature);
  }

  get apiKey() {
    return this.apiKeyInput.value.trim();
  }
}
