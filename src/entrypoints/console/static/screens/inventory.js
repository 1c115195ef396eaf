// Import a CSV of workloads (a dry run first; every bad row listed by its
// number, fixable right here) and export the inventory as a file.

import {ApiError, call, describe} from "../api.js";
import {fill, h, table, uid} from "../dom.js";

const IMPORT = "/api/v1/inventory/import/";
const EXPORT = "/api/v1/inventory/export/";

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

export const inventory = {
  title: "Import and export",
  async render(ctx) {
    const fileId = uid("csv-file");
    const textId = uid("csv-text");
    const text = h("textarea", {id: textId, rows: 10, spellcheck: "false", "aria-describedby": `${textId}-hint`, wrap: "off"});
    const file = h("input", {type: "file", id: fileId, accept: ".csv,text/csv"});
    const result = h("div", {"aria-live": "polite"});
    const importButton = h("button", {type: "button", class: "primary", disabled: true}, "Import");
    const checkButton = h("button", {type: "submit"}, "Check (dry run)");
    const exportProblem = h("div", {class: "form-error", role: "alert"});
    let checked = null; // the text whose dry run passed

    async function send(dryRun) {
      const body = text.value;
      const answer = await call("POST", `${IMPORT}${dryRun ? "?dry_run=true" : ""}`, {body, type: "text/csv; charset=utf-8"});
      return {answer, body};
    }

    async function attempt(dryRun) {
      fill(result);
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
          + "cloud_type, cloud_username, cloud_password, cloud_domain, select, wave, mode (cold or warm), sync_interval. "
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
      h("section", {class: "panel", "aria-labelledby": "export-heading"},
        h("h2", {id: "export-heading"}, "Export"),
        h("p", {class: "intro"}, "Every workload with its planned target, migration and wave, passwords left empty."),
        h("div", {class: "buttons"}, exportButton), exportProblem));
  },
};
