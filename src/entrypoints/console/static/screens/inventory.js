// Import a CSV of workloads (a dry run first; every bad row listed by its
// number, fixable right here), discover the volumes of the workloads it
// created, and export the inventory as a file.

import {ApiError, call, describe, get} from "../api.js";
import {busyWhile, bytes, fill, h, table, uid} from "../dom.js";
import {volumeLabel} from "../labels.js";
import {outcome} from "./readiness.js";

const IMPORT = "/api/v1/inventory/import/";
const EXPORT = "/api/v1/inventory/export/";
const DISCOVER = "/api/v1/inventory/discover/";
const WORKLOADS = "/api/v1/work_loads/";
const PAGE = 1000; // the API's largest page, and the most workloads one discovery takes

function counts(answer) {
  return `${answer.created} to create, ${answer.updated} to update, ${answer.unchanged} unchanged`;
}

function rowErrors(error) {
  const rows = [...(error.body.rows || [])].sort((a, b) => a.row - b.row);
  return [
    h("p", {}, error.body.detail || "Some rows cannot be imported."),
    rows.length ? table(`Rows to fix (${rows.length})`, ["Row", "Column", "Problem"], rows.map((row) => h("tr", {},
      h("td", {"data-label": "Row"}, String(row.row)),
      h("td", {"data-label": "Column"}, row.field || "—"),
      h("td", {"data-label": "Problem"}, row.message)))) : null,
  ];
}

/** The workloads of `ids` (an import's `created_workloads`), in that order. They are the newest,
 * so the pages are read newest first until every one is found. */
async function workloadsOf(ids) {
  const wanted = new Set(ids);
  const found = new Map();
  for (let offset = 0; found.size < wanted.size; offset += PAGE) {
    const page = await get(`${WORKLOADS}?ordering=-id&limit=${PAGE}&offset=${offset}`);
    for (const workload of page.results) if (wanted.has(workload.id)) found.set(workload.id, workload);
    if (!page.next) break;
  }
  return ids.filter((id) => found.has(id)).map((id) => found.get(id));
}

/** What a discovery changed (or would), in a line. */
function changes(report, dryRun) {
  const [add, update, same] = dryRun ? ["would add", "would update", "would stay as they are"] : ["added", "updated", "unchanged"];
  const said = [];
  if (report.added.length) said.push(`${add} ${report.added.map(volumeLabel).join(", ")}`);
  if (report.updated.length) {
    said.push(`${update} ${report.updated.map((volume) => `${volume.name} (${bytes(volume.was)} → ${bytes(volume.size)})`).join(", ")}`);
  }
  if (report.unchanged.length) said.push(`${report.unchanged.length} ${same}`);
  return said.length ? `${said.join("; ")}.` : "No volumes found.";
}

/**
 * The offer made after an import created workloads: discover their volumes,
 * a dry run first (nothing written), then apply what it found.
 */
function discoverOffer(ctx, created) {
  const ips = new Map(created.map((workload) => [workload.id, workload.ip]));
  const many = created.length === 1 ? "the workload just created" : `the ${created.length} workloads just created`;
  const status = h("p", {role: "status", class: "check-status"});
  const problem = h("div", {class: "form-error", role: "alert"});
  const result = h("div");
  const offer = h("button", {type: "button", class: "primary"}, `Discover the volumes of ${many}`);
  const element = h("section", {class: "panel", "aria-labelledby": "discover-heading"},
    h("h2", {id: "discover-heading"}, "Discover their volumes"),
    h("p", {class: "intro"}, `Read the volumes of ${many} from the machines themselves, over SSH: a dry run first, `
      + "nothing is written until you apply it. A machine that cannot be reached is named with the reason."),
    h("div", {class: "buttons"}, offer), status, problem, result);

  // One discovery of `ids`, a page at a time, `button` busy; the results, or null once a failure is shown.
  function discover(button, ids, dryRun, words) {
    fill(problem);
    return busyWhile(element, status, `${words}…`, button, async () => {
      const results = [];
      try {
        for (let start = 0; start < ids.length; start += PAGE) {
          if (start) fill(status, `${words} (${start} of ${ids.length} done)…`);
          const answer = await call("POST", `${DISCOVER}${dryRun ? "?dry_run=true" : ""}`,
            {body: {workloads: ids.slice(start, start + PAGE)}});
          results.push(...answer.results);
        }
        return results;
      } catch (error) {
        const text = describe(error);
        if (text !== null) fill(problem, h("p", {}, `The discovery was not made. ${text}`));
        return null;
      }
    });
  }

  function report(caption, results, dryRun) {
    return table(caption, ["Workload", "Result", "Volumes"], results.map((one) => h("tr", {class: one.ok ? null : "failed"},
      h("td", {"data-label": "Workload"}, h("a", {href: `#/workloads/${one.workload}`}, ips.get(one.workload) ?? `Workload ${one.workload}`)),
      h("td", {"data-label": "Result"}, outcome(one.ok, ["OK", "Failed"])),
      h("td", {"data-label": "Volumes"}, one.ok ? changes(one, dryRun) : one.message))));
  }

  const tally = (results) => {
    const failed = results.filter((one) => !one.ok).length;
    return `${results.length - failed} read, ${failed} failed`;
  };

  offer.addEventListener("click", async () => {
    fill(result);
    const found = await discover(offer, [...ips.keys()], true, "Reading the machines' filesystems (a dry run: nothing is written)");
    if (found === null || !ctx.alive) return;
    const changing = found.filter((one) => one.ok && one.added.length + one.updated.length).map((one) => one.workload);
    fill(status, `Dry run done: ${tally(found)}. ${changing.length} to change.`);
    if (!changing.length) {
      fill(result, report("Discovery: dry run, nothing to change", found, true));
      return;
    }
    const apply = h("button", {type: "button", class: "primary", onclick: async () => {
      const written = await discover(apply, changing, false, "Writing the volumes found");
      if (written === null || !ctx.alive) return;
      fill(result, report("Discovery: written", written, false));
      fill(status, `Discovery written: ${tally(written)}.`);
      offer.focus();
    }}, `Apply these changes (${changing.length} workload${changing.length === 1 ? "" : "s"})`);
    const drop = h("button", {type: "button", onclick: () => { fill(result); fill(status); offer.focus(); }}, "Discard");
    fill(result,
      report("Discovery: dry run", found, true),
      h("div", {class: "buttons"}, apply, drop));
    apply.focus();
  });
  return {element, focus: () => offer.focus()};
}

export const inventory = {
  title: "Import and export",
  async render(ctx) {
    const fileId = uid("csv-file");
    const textId = uid("csv-text");
    const text = h("textarea", {id: textId, rows: 10, spellcheck: "false", "aria-describedby": `${textId}-hint`, wrap: "off"});
    const file = h("input", {type: "file", id: fileId, accept: ".csv,text/csv"});
    const result = h("div", {"aria-live": "polite"});
    const offerArea = h("div");
    const importButton = h("button", {type: "button", class: "primary", disabled: true}, "Import");
    const checkButton = h("button", {type: "submit"}, "Check (dry run)");
    const exportProblem = h("div", {class: "form-error", role: "alert"});
    let checked = null; // the text whose dry run passed

    async function send(dryRun) {
      const body = text.value;
      const answer = await call("POST", `${IMPORT}${dryRun ? "?dry_run=true" : ""}`, {body, type: "text/csv; charset=utf-8"});
      return {answer, body};
    }

    /** After an import that created workloads: the offer to discover them, when they are found. */
    async function offerDiscovery(ids) {
      let created;
      try {
        created = await workloadsOf(ids);
      } catch {
        return; // the import is done; only the offer is missing
      }
      if (!created.length || !ctx.alive) return;
      const offer = discoverOffer(ctx, created);
      fill(offerArea, offer.element);
      if (!document.activeElement || document.activeElement === document.body) offer.focus();
    }

    async function attempt(dryRun) {
      fill(result);
      fill(offerArea);
      checkButton.disabled = true;
      importButton.disabled = true;
      try {
        const {answer, body} = await send(dryRun);
        if (dryRun) {
          checked = body;
          fill(result, h("p", {class: "ok"}, `Dry run passed: ${counts(answer)}. Nothing is written yet: import to apply it.`));
        } else {
          checked = null;
          fill(result, h("p", {class: "ok"}, `Imported: ${answer.created} created, ${answer.updated} updated, ${answer.unchanged} unchanged.`));
          if (answer.created_workloads.length) await offerDiscovery(answer.created_workloads);
        }
      } catch (error) {
        checked = null;
        if (error instanceof ApiError && error.status === 400) {
          fill(result, h("div", {class: "form-error", role: "alert"}, rowErrors(error)));
        } else {
          const words = describe(error);
          if (words !== null) fill(result, h("p", {class: "form-error", role: "alert"}, words));
        }
      } finally {
        checkButton.disabled = false;
        importButton.disabled = checked === null || checked !== text.value;
      }
    }

    file.addEventListener("change", async () => {
      const chosen = file.files[0];
      if (!chosen) return;
      text.value = await chosen.text();
      text.dispatchEvent(new Event("input"));
    });
    text.addEventListener("input", () => {
      importButton.disabled = checked === null || checked !== text.value;
    });
    importButton.addEventListener("click", () => attempt(false));

    const form = h("form", {class: "form", novalidate: true, "aria-label": "Import a CSV",
      onsubmit: (event) => { event.preventDefault(); attempt(true); }},
      h("div", {class: "field"}, h("label", {for: fileId}, "CSV file"), file),
      h("div", {class: "field"}, h("label", {for: textId}, "CSV to import"),
        h("p", {class: "hint", id: `${textId}-hint`},
          "One workload a row, with a header row: ip, username, password, domain, volumes (NAME=SIZE;…), and optionally "
          + "port, os, root, cloud_type, cloud_username, cloud_password, cloud_domain, select, wave, mode (cold or warm), sync_interval. "
          + "Fix a row here, then check again."),
        text),
      h("div", {class: "buttons"}, checkButton, importButton));

    const exportButton = h("button", {type: "button", onclick: async () => {
      fill(exportProblem);
      exportButton.disabled = true;
      try {
        const response = await call("GET", EXPORT, {raw: true});
        const link = h("a", {href: URL.createObjectURL(await response.blob()), download: "inventory.csv"});
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
        ctx.say("The inventory was downloaded as inventory.csv.");
      } catch (error) {
        const words = describe(error);
        if (words !== null) fill(exportProblem, h("p", {}, words));
      } finally {
        exportButton.disabled = false;
      }
    }}, "Download inventory.csv");

    fill(ctx.root,
      h("h1", {tabindex: "-1"}, "Import and export"),
      h("section", {class: "panel", "aria-labelledby": "import-heading"},
        h("h2", {id: "import-heading"}, "Import"),
        h("p", {class: "intro"}, "Rows are matched to your workloads by ip: a new ip creates, a known one updates. "
          + "Check first: nothing is written unless every row is good."),
        form, result),
      offerArea,
      h("section", {class: "panel", "aria-labelledby": "export-heading"},
        h("h2", {id: "export-heading"}, "Export"),
        h("p", {class: "intro"}, "Every workload with its planned target, migration and wave, passwords left empty."),
        h("div", {class: "buttons"}, exportButton), exportProblem));
  },
};
