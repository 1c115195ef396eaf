// Every node is built here from text: nothing given by a user is parsed as HTML.

const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "selected", "multiple", "readOnly", "required"]);

/** An element: h("a", {href: "#/"}, "text", child, [more]). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (PROPERTIES.has(name)) {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace what `parent` holds. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

let unique = 0;
export function uid(prefix) {
  unique += 1;
  return `${prefix}-${unique}`;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

export function bytes(count) {
  if (count === null || count === undefined) return "—";
  let value = Number(count);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

export function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? String(iso) : moment.toLocaleString();
}

/** A labelled progress bar (a native <progress>: no inline style needed). */
export function bar(percent, label) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  return h("span", {class: "bar"},
    h("progress", {max: "100", value: String(value), "aria-label": label}),
    h("span", {class: "bar-figure"}, `${value}%`));
}

export function stateBadge(state) {
  return h("span", {class: `state state-${state}`}, state ? state.replace("_", " ") : "—");
}

/** A table that scrolls sideways on its own when the screen is narrow. */
export function table(caption, headings, rows) {
  return h("div", {class: "table-wrap", role: "region", "aria-label": caption, tabindex: "0"},
    h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headings.map((heading) => h("th", {scope: "col"}, heading)))),
      h("tbody", {}, rows)));
}

/**
 * `work()` with `region` busy: its buttons disabled, aria-busy set and
 * `status` saying `words`; then all as it was, the status empty, and the focus
 * back on `button` when disabling it lost it. Answers what `work` answered.
 */
export async function busyWhile(region, status, words, button, work) {
  const buttons = [...region.querySelectorAll("button")].filter((one) => !one.disabled);
  for (const one of buttons) one.disabled = true;
  region.setAttribute("aria-busy", "true");
  fill(status, words);
  try {
    return await work();
  } finally {
    for (const one of buttons) one.disabled = false;
    region.removeAttribute("aria-busy");
    fill(status);
    if (button.isConnected && (!document.activeElement || document.activeElement === document.body)) button.focus();
  }
}
