// The screen every resource shares: a paged, filtered list with create, edit
// and delete. Its place (filters, page, the form open) lives in the URL's
// hash, so a reload or a new sign-in comes back to it.

import {call, describe, get} from "./api.js";
import {fill, h, table} from "./dom.js";
import {makeForm} from "./forms.js";

const PAGE_SIZE = 20;
const ORDERINGS = [{value: "id", label: "Oldest first"}, {value: "-id", label: "Newest first"}];

/**
 * config: {title, noun, route, path, intro, filters(refs), columns, fields(item, refs),
 * body(values, item), wire(form, refs, item), loadRefs()}.
 */
export function resourceScreen(config) {
  return {title: config.title, render: (ctx) => render(config, ctx)};
}

function listHash(config, params, changes = {}) {
  const query = new URLSearchParams(params);
  for (const key of ["new", "edit", "back"]) query.delete(key);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === "" || value === undefined) query.delete(key);
    else query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${config.route}?${text}` : config.route;
}

async function render(config, ctx) {
  const {params} = ctx;
  const refs = config.loadRefs ? await config.loadRefs() : {};
  const problem = h("div", {class: "form-error", role: "alert"});
  const formArea = h("div");
  const listArea = h("div", {class: "list"});
  const filterSpecs = [
    ...(config.filters ? config.filters(refs) : []),
    {name: "ordering", label: "Order", type: "select", options: ORDERINGS, value: params.get("ordering") || "id", placeholder: false},
  ].map((spec) => ({...spec, value: spec.value ?? params.get(spec.name) ?? ""}));
  const filterForm = makeForm({
    label: `Filter ${config.title.toLowerCase()}`,
    fields: filterSpecs,
    submit: "Filter",
    onSubmit: async (values) => {
      const changes = {offset: null};
      for (const spec of filterSpecs) changes[spec.name] = values[spec.name];
      if (changes.ordering === "id") changes.ordering = null;
      ctx.navigate(listHash(config, params, changes));
    },
    extra: h("a", {class: "button-link", href: `#${config.route}`}, "Clear"),
  });

  fill(ctx.root,
    h("h1", {tabindex: "-1"}, config.title),
    config.intro ? h("p", {class: "intro"}, config.intro) : null,
    h("p", {}, h("a", {class: "button-link primary", href: `#${listHash(config, params, {new: 1})}`}, `New ${config.noun}`)),
    formArea,
    h("search", {class: "filters"}, h("h2", {class: "visually-hidden"}, "Filters"), filterForm.element),
    problem,
    listArea);

  if (params.has("new") || params.has("edit")) await openForm(config, ctx, refs, formArea);

  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const query = new URLSearchParams({limit: String(PAGE_SIZE), offset: String(offset)});
  for (const spec of filterSpecs) {
    const value = params.get(spec.name);
    if (value) query.set(spec.name, value);
  }
  let page;
  try {
    page = await get(`${config.path}?${query}`);
  } catch (error) {
    filterForm.showError(error);
    return;
  }
  showPage(config, ctx, refs, listArea, problem, page, offset);
}

function showPage(config, ctx, refs, listArea, problem, page, offset) {
  const filtered = [...ctx.params.keys()].some((key) => !["offset", "new", "edit", "back", "ordering"].includes(key));
  if (!page.results.length) {
    fill(listArea, h("p", {class: "empty"}, filtered ? `No ${config.title.toLowerCase()} match these filters.`
      : `No ${config.title.toLowerCase()} yet.`));
    return;
  }
  const rows = page.results.map((item) => {
    const actions = h("td", {class: "actions"});
    const restore = () => fill(actions,
      h("a", {class: "button-link", href: `#${listHash(config, ctx.params, {edit: item.id})}`,
        "aria-label": `Edit ${config.noun} ${item.id}`}, "Edit"),
      h("button", {type: "button", class: "danger", "aria-label": `Delete ${config.noun} ${item.id}`,
        onclick: () => confirmDelete(config, ctx, item, actions, problem, restore)}, "Delete"));
    restore();
    return h("tr", {}, config.columns.map((column) => h("td", {"data-label": column.label}, column.cell(item, refs))), actions);
  });
  const last = Math.min(offset + page.results.length, page.count);
  fill(listArea,
    table(`${config.title}: ${offset + 1} to ${last} of ${page.count}`,
      [...config.columns.map((column) => column.label), "Actions"], rows),
    h("nav", {class: "pager", "aria-label": "Pages"},
      page.previous ? h("a", {class: "button-link", href: `#${listHash(config, ctx.params, {offset: Math.max(0, offset - PAGE_SIZE) || null})}`}, "Previous page") : null,
      page.next ? h("a", {class: "button-link", href: `#${listHash(config, ctx.params, {offset: offset + PAGE_SIZE})}`}, "Next page") : null));
}

function confirmDelete(config, ctx, item, actions, problem, restore) {
  const keep = h("button", {type: "button", onclick: () => { restore(); actions.querySelector("button")?.focus(); }}, "Keep");
  fill(actions,
    h("span", {class: "confirm"}, `Delete ${config.noun} ${item.id}?`),
    h("button", {type: "button", class: "danger", onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        await call("DELETE", `${config.path}${item.id}/`);
        ctx.navigate(listHash(config, ctx.params), `Deleted ${config.noun} ${item.id}.`);
      } catch (error) {
        restore();
        const text = describe(error);
        if (text !== null) fill(problem, h("p", {}, `${config.noun[0].toUpperCase()}${config.noun.slice(1)} ${item.id} was not deleted. ${text}`));
      }
    }}, "Yes, delete"),
    keep);
  keep.focus();
}

async function openForm(config, ctx, refs, formArea) {
  const editing = ctx.params.get("edit");
  let item = null;
  if (editing) {
    try {
      item = await get(`${config.path}${Number(editing)}/`);
    } catch (error) {
      fill(formArea, h("p", {class: "form-error", role: "alert"}, describe(error)));
      return;
    }
  }
  const back = ctx.params.get("back");
  const done = back ? back.replace(/^#/, "") : listHash(config, ctx.params);
  const heading = item ? `Edit ${config.noun} ${item.id}` : `New ${config.noun}`;
  const form = makeForm({
    label: heading,
    fields: config.fields(item, refs),
    submit: item ? "Save" : "Create",
    cancel: h("a", {class: "button-link", href: `#${done}`}, "Cancel"),
    onSubmit: async (values) => {
      const body = config.body ? config.body(values, item) : values;
      const saved = item
        ? await call("PATCH", `${config.path}${item.id}/`, {body})
        : await call("POST", config.path, {body});
      ctx.navigate(done, item ? `Saved ${config.noun} ${saved.id}.` : `Created ${config.noun} ${saved.id}.`);
    },
  });
  if (config.wire) config.wire(form, refs, item);
  fill(formArea, h("section", {class: "panel", "aria-label": heading}, h("h2", {}, heading), form.element));
  ctx.focusLater(() => form.focus());
}
