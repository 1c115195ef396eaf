// Forms whose errors come from the API: each 400 message goes next to its
// field, anything else (a 409's reason, a 429's wait) above the buttons.

import {ApiError, describe} from "./api.js";
import {fill, h, uid} from "./dom.js";

const FACTORS = {b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40};
const SIZE = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$/i;

/** Bytes from "107374182400", "100 GiB" or "53.6GB"; anything else as typed,
 * for the API to refuse with its own words. */
function parseSize(text) {
  const match = SIZE.exec(text);
  if (!match) return text;
  const amount = Number(match[1]);
  const factor = FACTORS[(match[2] || "b").toLowerCase()];
  return match[2] ? Math.round(amount * factor) : (Number.isInteger(amount) ? amount : text);
}

function control(spec, id, describedBy) {
  const common = {id, name: spec.name, "aria-describedby": describedBy, required: spec.required};
  if (spec.type === "select") {
    const select = h("select", common,
      spec.placeholder === false ? null : h("option", {value: ""}, spec.placeholder || "Choose…"),
      spec.options.map((option) => h("option", {value: String(option.value)}, option.label)));
    select.value = spec.value === undefined || spec.value === null ? "" : String(spec.value);
    return select;
  }
  if (spec.type === "textarea") {
    return h("textarea", {...common, rows: spec.rows || 8, spellcheck: "false", value: spec.value ?? ""});
  }
  return h("input", {
    ...common,
    type: spec.type === "password" ? "password" : "text",
    value: spec.value ?? "",
    autocomplete: spec.autocomplete || "off",
    inputmode: spec.inputmode,
    readOnly: spec.readOnly,
    spellcheck: "false",
  });
}

function checkboxes(spec, group, describedBy) {
  const chosen = new Set((spec.value || []).map(Number));
  if (!spec.options.length) {
    return fill(group, h("p", {class: "empty"}, spec.empty || "Nothing to choose from yet."));
  }
  return fill(group, spec.options.map((option) => {
    const id = uid(`${spec.name}-option`);
    return h("div", {class: "check"},
      h("input", {type: "checkbox", id, name: spec.name, value: String(option.value),
        checked: chosen.has(Number(option.value)), "aria-describedby": describedBy}),
      h("label", {for: id}, option.label, option.note ? h("span", {class: "note"}, ` ${option.note}`) : null));
  }));
}

/** One labelled field: its control, its hint and the place of its errors. */
function makeField(spec) {
  const id = uid(spec.name);
  const errorId = `${id}-error`;
  const hintId = spec.hint ? `${id}-hint` : null;
  const describedBy = [hintId, errorId].filter(Boolean).join(" ");
  const error = h("p", {class: "field-error", id: errorId, hidden: true});
  const hint = spec.hint ? h("p", {class: "hint", id: hintId}, spec.hint) : null;
  let row;
  let input;
  if (spec.type === "checks") {
    input = h("div", {class: "checks"});
    checkboxes(spec, input, describedBy);
    row = h("fieldset", {class: "field", "aria-describedby": describedBy},
      h("legend", {}, spec.label), hint, input, error);
  } else {
    input = control(spec, id, describedBy);
    row = h("div", {class: "field"}, h("label", {for: id}, spec.label), hint, input, error);
  }
  if (spec.onChange) input.addEventListener("change", () => spec.onChange(read()));

  function read() {
    if (spec.type === "checks") {
      return [...input.querySelectorAll("input:checked")].map((box) => Number(box.value));
    }
    if (spec.type === "select") {
      if (input.value === "") return null;
      return spec.numeric ? Number(input.value) : input.value;
    }
    return spec.type === "size" ? parseSize(input.value) : input.value;
  }

  return {
    spec, row, input, read,
    setOptions(options) {
      spec.options = options;
      checkboxes({...spec, value: read()}, input, describedBy);
    },
    showErrors(messages) {
      fill(error, messages.join(" "));
      error.hidden = false;
      const focusable = spec.type === "checks" ? input.querySelector("input") : input;
      if (focusable) focusable.setAttribute("aria-invalid", "true");
    },
    clearErrors() {
      error.hidden = true;
      fill(error);
      for (const element of [input, ...input.querySelectorAll("input")]) element.removeAttribute("aria-invalid");
    },
    focus() {
      (spec.type === "checks" ? input.querySelector("input") : input)?.focus();
    },
  };
}

/**
 * A form: `fields` are specs ({name, label, type, value, options, hint...}),
 * `onSubmit(values)` is awaited. Enter in a field submits.
 */
export function makeForm({label, fields, submit, onSubmit, extra = [], cancel = null}) {
  const made = fields.map(makeField);
  const byName = new Map(made.map((field) => [field.spec.name, field]));
  const problem = h("div", {class: "form-error", role: "alert"});
  const button = h("button", {type: "submit", class: "primary"}, submit);
  const element = h("form", {class: "form", novalidate: true, "aria-label": label},
    made.map((field) => field.row), problem,
    h("div", {class: "buttons"}, button, extra, cancel));

  function clear() {
    fill(problem);
    for (const field of made) field.clearErrors();
  }

  function values() {
    return Object.fromEntries(made.filter((field) => !field.spec.skip?.()).map((field) => [field.spec.name, field.read()]));
  }

  /** Show an error answer: each field's messages at the field, the rest above the buttons. */
  function showError(error) {
    const text = describe(error);
    if (text === null) return;
    const loose = [];
    if (error instanceof ApiError && error.status === 400 && Object.keys(error.fieldErrors).length) {
      let first = null;
      for (const [name, messages] of Object.entries(error.fieldErrors)) {
        const field = byName.get(name);
        if (field) {
          field.showErrors(messages);
          first = first || field;
        } else {
          loose.push(`${name === "_schema" ? "" : `${name}: `}${messages.join(" ")}`);
        }
      }
      fill(problem, h("p", {}, error.body.detail || "Check the fields marked below."),
        loose.length ? h("ul", {}, loose.map((line) => h("li", {}, line))) : null);
      first?.focus();
      return;
    }
    fill(problem, h("p", {}, text));
  }

  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (button.disabled) return;
    clear();
    button.disabled = true;
    element.setAttribute("aria-busy", "true");
    try {
      await onSubmit(values());
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
      element.removeAttribute("aria-busy");
    }
  });

  return {element, field: (name) => byName.get(name), showError, focus: () => made[0]?.focus()};
}
