// Which model answers. A server that serves LoRA adapters lists them beside its model
// (/v1/models, each with its parent): the header then offers a choice, the base model
// first and chosen; with one model it only names it. The choice is the `model` of the
// next chat request, so a conversation can go on with another adapter.

import { fetchModels } from "./api.js";
import { t } from "./i18n.js";

export class ModelPicker {
  constructor({ picker, select, name }) {
    this.picker = picker;
    this.select = select;
    this.name = name;
    this.models = [];
    this.chosen = "";
    select.addEventListener("change", () => {
      this.chosen = select.value;
    });
  }

  /** The chosen model's id, asking the server first if the page does not know its models yet
   *  (it may need the API key); "" while the server will not say, so the server picks. */
  async resolve(apiKey, signal) {
    if (!this.chosen) {
      const models = await fetchModels(apiKey, signal);
      if (models && !this.chosen) this.show(models);
    }
    return this.chosen;
  }

  show(models) {
    const base = models.find((model) => model.parent === null) || models[0];
    this.models = [base, ...models.filter((model) => model !== base)];
    this.chosen = base.id;
    const several = this.models.length > 1;
    this.picker.hidden = !several;
    this.name.hidden = several;
    this.name.textContent = base.id;
    this.select.replaceChildren(
      ...this.models.map((model) => {
        const option = document.createElement("option");
        option.value = model.id;
        return option;
      }),
    );
    this.select.value = this.chosen;
    this.relabel();
  }

  /** Name each adapter with its parent, in the page's language (language switch). */
  relabel() {
    this.models.forEach((model, index) => {
      const option = this.select.options[index];
      option.textContent = model.parent ? t("model.adapter", { name: model.id, parent: model.parent }) : model.id;
    });
  }
}
