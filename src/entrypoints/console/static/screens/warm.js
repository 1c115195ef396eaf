// A warm migration on its page (SPEC 2.9): its syncs as a history and a
// chart, the downtime to expect, the next sync and the planned cutover, the
// actions that change them (each asks first), and what its hooks printed.

import {call, describe} from "../api.js";
import {bytes, fill, h, table, uid, when} from "../dom.js";

const SVG = "http://www.w3.org/2000/svg";
const CHART_SYNCS = 20;
const CHART_WIDTH = 200;
const CHART_HEIGHT = 60;

export const PHASES = {
  queued: "queued: waiting for a copy slot",
  copying: "copying",
  syncing: "syncing",
  in_sync: "in sync",
  cutting_over: "cutting over",
};

export function phaseLabel(phase) {
  return PHASES[phase] || String(phase).replace(/_/g, " ");
}

/** "0.2 s", "45 s", "3 min 20 s", "2 h 5 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
  const value = Number(seconds);
  if (value < 10) return `${value.toFixed(1)} s`;
  if (value < 60) return `${Math.round(value)} s`;
  const minutes = Math.floor(value / 60);
  if (minutes < 60) {
    const rest = Math.round(value - minutes * 60);
    return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
}

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  for (const child of children) element.append(child);
  return element;
}

/** The last syncs' durations as bars, oldest on the left: an SVG built node by
 * node, coloured by the style sheet (the CSP allows no inline style). */
export function syncChart(synced) {
  const last = synced.slice(0, CHART_SYNCS).reverse();
  const longest = Math.max(...last.map((event) => Number(event.detail.seconds) || 0), 0.001);
  const slot = CHART_WIDTH / Math.max(last.length, 8);
  const titleId = uid("sync-chart-title");
  const descId = uid("sync-chart-desc");
  const described = last.map((event) => `${duration(event.detail.seconds)}${event.detail.cutover ? " (the cutover)" : ""}`);
  const chart = svg("svg", {
    class: "sync-chart", viewBox: `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`, preserveAspectRatio: "none",
    role: "img", "aria-labelledby": titleId, "aria-describedby": descId,
  },
  svg("title", {id: titleId}, `How long the last ${last.length === 1 ? "sync" : `${last.length} syncs`} took`),
  svg("desc", {id: descId}, `Oldest first: ${described.join(", ")}.`));
  last.forEach((event, index) => {
    const seconds = Number(event.detail.seconds) || 0;
    const height = Math.max(1, (seconds / longest) * (CHART_HEIGHT - 4));
    chart.append(svg("rect", {
      class: event.detail.cutover ? "sync-bar final" : "sync-bar",
      x: (index * slot + slot * 0.15).toFixed(2), y: (CHART_HEIGHT - height).toFixed(2),
      width: (slot * 0.7).toFixed(2), height: height.toFixed(2),
    }, svg("title", {}, `${when(event.at)}: ${duration(seconds)}`)));
  });
  chart.append(svg("line", {class: "sync-axis", x1: 0, y1: CHART_HEIGHT - 0.5, x2: CHART_WIDTH, y2: CHART_HEIGHT - 0.5}));
  return h("figure", {class: "sync-figure"}, chart,
    h("figcaption", {}, `How long each of the last ${last.length === 1 ? "sync" : `${last.length} syncs`} took, oldest on the left;`
      + ` the longest ${duration(longest)}.`));
}

function facts(rows) {
  return h("dl", {class: "facts"}, rows.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function count(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString();
}

function syncRows(synced, failed) {
  const events = [...synced, ...failed].sort((a, b) => b.id - a.id);
  return events.map((event) => {
    const detail = event.detail || {};
    if (event.kind === "sync_failed") {
      return h("tr", {},
        h("td", {"data-label": "When"}, when(event.at)),
        h("td", {"data-label": "How long"}, "—"),
        h("td", {"data-label": "Sent"}, "—"),
        h("td", {"data-label": "Files"}, "—"),
        h("td", {"data-label": "Outcome"}, h("span", {class: "error-text"}, `Failed: ${detail.reason ?? "no reason given"}`)));
    }
    let outcome = detail.cutover ? "The cutover's final sync" : "Verified";
    if (detail.changed) outcome += `; ${count(detail.changed)} changed while it ran (the next sync sends them)`;
    return h("tr", {},
      h("td", {"data-label": "When"}, when(event.at)),
      h("td", {"data-label": "How long"}, duration(detail.seconds)),
      h("td", {"data-label": "Sent"}, bytes(detail.bytes)),
      h("td", {"data-label": "Files"}, `${count(detail.files)} sent, ${count(detail.removed)} removed`),
      h("td", {"data-label": "Outcome"}, outcome));
  });
}

const HOOKS = [
  ["pre_cutover", "Before the cutover, on the source"],
  ["post_cutover", "After the cutover, on the target's host"],
];

function hookRun(event) {
  const detail = event.detail || {};
  const name = HOOKS.find(([key]) => key === detail.hook)?.[1] || String(detail.hook);
  const status = detail.exit_status === null || detail.exit_status === undefined ? "not run"
    : `exit status ${detail.exit_status}`;
  return h("li", {},
    h("p", {}, h("strong", {}, name), ` (${when(event.at)}): `,
      h("span", {class: detail.exit_status ? "error-text" : null}, status)),
    detail.output ? h("pre", {class: "hook-output", tabindex: "0", "aria-label": `Output of: ${name}`}, detail.output)
      : h("p", {class: "empty"}, "No output."));
}

/** The hooks as set, and what they printed when they ran (newest first): all text, never HTML. */
export function hooksView(item, runs) {
  return [
    HOOKS.map(([key, name]) => [h("h3", {}, name),
      item[key] ? h("pre", {class: "hook-command"}, item[key]) : h("p", {class: "empty"}, "None.")]),
    h("h3", {}, "What they printed"),
    runs.length ? h("ul", {class: "hook-runs"}, runs.map(hookRun))
      : h("p", {class: "empty"}, "No hook has run yet: they run at the cutover."),
  ];
}

/** A datetime-local value (the browser's time zone) for `moment`. */
function localInput(moment) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}T${pad(moment.getHours())}:${pad(moment.getMinutes())}`;
}

/**
 * The syncs' section: `update(item, state, synced, failed)` shows them (the
 * events newest first); its buttons call the API, then `refresh()`.
 */
export function warmSection(ctx, id, refresh) {
  const about = h("div");
  const controls = h("div", {class: "warm-controls"});
  const outcome = h("div", {class: "form-error", role: "alert"});
  const chart = h("div");
  const list = h("div");
  const element = h("section", {"aria-labelledby": "syncs-heading"},
    h("h2", {id: "syncs-heading"}, "Syncs"), about, controls, outcome, chart, list);
  let asking = false;
  let shownKey = null;
  let last = null;
  let focusAfter = null; // the button to give the focus once the buttons are shown again

  /** Show the buttons again at the next update, the focus on `label`'s. */
  function answered(label) {
    asking = false;
    shownKey = null;
    focusAfter = label;
  }

  async function send(method, path, body, done, after) {
    fill(outcome);
    try {
      await call(method, path, {body});
      ctx.say(done);
    } catch (error) {
      const text = describe(error);
      if (text !== null) fill(outcome, h("p", {}, text));
    }
    answered(after);
    await refresh();
  }

  function ask(opener, question, yes, extra = []) {
    asking = true;
    fill(outcome);
    const questionId = uid("ask");
    const keep = h("button", {type: "button", onclick: () => {
      answered(opener);
      showControls();
    }}, "No, keep it as it is");
    fill(controls,
      h("p", {class: "confirm", id: questionId}, question),
      extra,
      h("div", {class: "buttons", role: "group", "aria-labelledby": questionId}, yes, keep));
    (controls.querySelector("input") || keep).focus();
  }

  const button = (label, onclick, attributes = {}) => h("button", {type: "button", onclick, ...attributes}, label);

  function askSync(event) {
    if (event.currentTarget.getAttribute("aria-disabled") === "true") {
      fill(outcome, h("p", {}, "A sync is under way or queued already: the next one can start once it ends."));
      return;
    }
    const yes = button("Yes, sync now", (click) => {
      click.currentTarget.disabled = true;
      send("POST", `/api/v1/migrations/${id}/sync/`, undefined, `Sync queued: migration ${id}.`, "Sync now");
    }, {class: "primary"});
    ask("Sync now", "Sync now? Only what changed since the last sync is sent; the next sync then comes an interval after this one.", yes);
  }

  function askCutover() {
    const yes = button("Yes, cut over now", (event) => {
      event.currentTarget.disabled = true;
      send("POST", `/api/v1/migrations/${id}/cutover/`, {}, `Cutting over: migration ${id}.`, "Cut over now");
    }, {class: "danger"});
    const downtime = last?.state.last_sync_seconds;
    ask("Cut over now", `Cut over now? The hook before the cutover stops the source's writes, a final sync copies the last changes`
      + ` (about ${duration(downtime)}, as long as the last sync took), then the copy is put in place and this migration ends.`, yes);
  }

  function askCutoverAt() {
    const inputId = uid("cutover-at");
    const errorId = `${inputId}-error`;
    const error = h("p", {class: "field-error", id: errorId, hidden: true});
    const planned = last?.state.cutover_at ? new Date(last.state.cutover_at) : new Date(Date.now() + 3600_000);
    const input = h("input", {type: "datetime-local", id: inputId, name: "cutover_at", required: true,
      value: localInput(planned), "aria-describedby": errorId});
    const showError = (text) => {
      fill(error, text);
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
    };
    const yes = button("Yes, plan the cutover", async (event) => {
      const moment = new Date(input.value); // the browser's own time zone, as the input shows it
      if (!input.value || Number.isNaN(moment.getTime())) {
        showError("Choose a date and a time.");
        return;
      }
      event.currentTarget.disabled = true;
      try {
        await call("POST", `/api/v1/migrations/${id}/cutover/`, {body: {at: moment.toISOString()}});
      } catch (failure) {
        event.currentTarget.disabled = false;
        const text = describe(failure);
        if (text !== null) showError(failure.fieldErrors?.at ? failure.fieldErrors.at.join(" ") : text);
        return;
      }
      ctx.say(`Cutover planned: migration ${id} cuts over at ${when(moment.toISOString())}.`);
      answered("Withdraw the planned cutover");
      await refresh();
    }, {class: "primary"});
    ask("Cut over at…", "Cut over at a time? This migration then cuts over by itself then, as Cut over now would.", yes,
      h("div", {class: "field"}, h("label", {for: inputId}, "Cut over at (your local time)"), input, error));
  }

  function showControls() {
    if (!last) return;
    const {state} = last;
    const wanted = focusAfter || (controls.contains(document.activeElement) ? document.activeElement.textContent : null);
    focusAfter = null;
    if (state.state !== "running") {
      fill(controls);
      return;
    }
    if (state.phase === "cutting_over") {
      fill(controls, h("p", {}, "Cutting over: the final sync and the swap run now."));
      return;
    }
    const busy = state.phase === "queued" || state.phase === "syncing";
    fill(controls,
      h("div", {class: "buttons", role: "group", "aria-label": "Sync and cutover"},
        // Focusable while it waits (aria-disabled, not disabled): the focus never falls off the page.
        button("Sync now", askSync, {"aria-disabled": busy ? "true" : null, "aria-describedby": busy ? "sync-busy" : null}),
        button("Cut over now", askCutover, {class: "danger"}),
        button("Cut over at…", askCutoverAt),
        state.cutover_at ? button("Withdraw the planned cutover", (event) => {
          event.currentTarget.disabled = true;
          send("PATCH", `/api/v1/migrations/${id}/`, {cutover_at: null}, `Planned cutover withdrawn: migration ${id}.`,
            "Cut over at…");
        }) : null),
      busy ? h("p", {class: "hint", id: "sync-busy"}, "A sync is under way or queued: Sync now waits until it ends.") : null);
    if (wanted) {
      const again = [...controls.querySelectorAll("button")].find((one) => one.textContent === wanted);
      (again || controls.querySelector("button"))?.focus();
    }
  }

  function update(item, state, synced, failed) {
    last = {item, state};
    const running = state.state === "running";
    const syncs = state.syncs ?? synced.filter((event) => !event.detail?.cutover).length;
    fill(about, facts([
      running ? ["Phase", state.phase ? phaseLabel(state.phase) : "—"] : null,
      ["Interval", `${duration(item.sync_interval)} after the end of each sync`],
      ["Verified syncs", count(syncs)],
      state.last_synced_at ? ["Last sync", `${when(state.last_synced_at)}, took ${duration(state.last_sync_seconds)}`] : null,
      running ? ["Estimated downtime", state.last_sync_seconds === null || state.last_sync_seconds === undefined
        ? "Known after the first sync"
        : `About ${duration(state.last_sync_seconds)}: the cutover's final sync takes about as long as the last sync`] : null,
      running ? ["Next sync", state.next_sync_at ? when(state.next_sync_at) : "—"] : null,
      running ? ["Planned cutover", state.cutover_at ? when(state.cutover_at) : "None planned"] : null,
      state.last_sync_error ? ["Last sync error", h("span", {class: "error-text"}, state.last_sync_error)] : null,
    ]));
    const key = `${state.state}|${state.phase}|${state.cutover_at}`;
    if (!asking && key !== shownKey) {
      shownKey = key;
      showControls();
    }
    if (!running) {
      asking = false;
      fill(controls);
    }
    const finished = synced.filter((event) => event.detail && typeof event.detail === "object");
    fill(chart, finished.length ? syncChart(finished) : null);
    fill(list, synced.length || failed.length
      ? table("Syncs, newest first", ["When", "How long", "Sent", "Files", "Outcome"], syncRows(finished, failed))
      : h("p", {class: "empty"}, state.state === "not_started"
        ? "Run keeps the target's copy in sync while the source runs: the first sync copies everything, the next ones what changed."
        : "No sync has ended yet."));
  }

  return {element, update};
}
