// Readiness (SPEC 2.11) wherever it shows: a migration's and a wave's checks,
// run from their pages, and what was found last, in the lists. Each check is
// named in words, passed or failed said in words (colour only helps), and
// every message is text.

import {call, describe} from "../api.js";
import {busyWhile, fill, h, table, when} from "../dom.js";
import {named, targetLabel} from "../labels.js";

const CHECKS = {
  source_login: "Source login",
  source_os: "Source system",
  source_tools: "Source programs",
  host_tools: "Host programs",
  volumes: "Volumes",
  host_login: "Host login",
  host_root: "Target's root on the host",
  host_space: "Space on the host",
  system_volume: "System volume",
  target_free: "Target free",
  hooks: "Hooks",
};

export function checkName(check) {
  return CHECKS[check] || String(check).replace(/_/g, " ");
}

/** A word with a mark: "✓ Passed", "✗ Failed" (the mark hidden from screen readers). */
export function outcome(ok, [yes, no] = ["Passed", "Failed"]) {
  return h("span", {class: ok ? "outcome outcome-ok" : "outcome outcome-failed"},
    h("span", {"aria-hidden": "true"}, ok ? "✓ " : "✗ "), ok ? yes : no);
}

function checkedAt(at) {
  return h("span", {class: "checked-at"}, `checked ${when(at)}`);
}

/** A migration's stored `readiness`: never checked, ready, or not ready and which checks failed. */
export function readinessView(readiness) {
  if (!readiness) return h("span", {class: "empty"}, "Never checked");
  const failed = readiness.failed || [];
  return h("span", {class: "readiness"},
    outcome(readiness.ready, ["Ready", "Not ready"]),
    !readiness.ready && failed.length ? `: ${failed.map(checkName).join(", ")}` : null,
    " ", checkedAt(readiness.at));
}

/** A workload's `last_check`: never checked, or ok or failed, when, and what it said (kept to two
 * lines in a list, the whole text still there for screen readers and as the title). */
export function lastCheckView(check) {
  if (!check) return h("span", {class: "empty"}, "Never checked");
  return h("span", {class: "last-check"},
    outcome(check.ok, ["OK", "Failed"]), " ", checkedAt(check.at),
    h("span", {class: "check-message", title: check.message}, check.message));
}

function checksTable(caption, checks) {
  return table(caption, ["Check", "Result", "Message"], checks.map((check) =>
    h("tr", {class: check.ok ? null : "failed"},
      h("td", {"data-label": "Check"}, checkName(check.check)),
      h("td", {"data-label": "Result"}, outcome(check.ok)),
      h("td", {"data-label": "Message"}, check.message))));
}

function verdict(checks) {
  const failed = checks.filter((check) => !check.ok).length;
  const all = `${checks.length} check${checks.length === 1 ? "" : "s"}`;
  return failed ? `Not ready: ${failed} of ${all} failed.` : `Ready: all ${all} passed.`;
}

/**
 * A readiness section: its button runs `check()` with the section busy, then
 * the status says what `check` answered (nothing after a refusal).
 */
function section(headingId, words, check) {
  const status = h("p", {role: "status", class: "check-status"});
  const problem = h("div", {class: "form-error", role: "alert"});
  const result = h("div");
  const button = h("button", {type: "button"}, "Check readiness");
  const stored = h("p");
  const element = h("section", {"aria-labelledby": headingId, class: "readiness-section"},
    h("h2", {id: headingId}, "Readiness"), stored, h("div", {class: "buttons"}, button), status, problem, result);
  const view = {element, stored, button, status, problem, result};
  button.addEventListener("click", async () => {
    fill(problem);
    fill(result);
    const said = await busyWhile(element, status, words, button, () => check(view));
    fill(status, said);
  });
  return view;
}

/** `refresh()`, whose failure the page's next refresh makes good. */
async function settled(refresh) {
  try {
    await refresh();
  } catch {
    // the stream's next message, or the next poll, tries again
  }
}

/** A refusal (an address outside the allowed networks: a 409's reason) or a failure, in words. */
function refused(problem, error) {
  const text = describe(error);
  if (text !== null) fill(problem, h("p", {}, `The readiness check was not made. ${text}`));
  return "";
}

/**
 * A migration's readiness: `update(item)` shows its stored readiness; the
 * button runs every check, shows each with its message, then `checked()`.
 */
export function migrationReadiness(ctx, id, checked) {
  const view = section("readiness-heading", "Checking: logging in to the machines and reading what a run needs…",
    async () => {
      let answer;
      try {
        answer = await call("POST", `/api/v1/migrations/${id}/preflight/`);
      } catch (error) {
        return refused(view.problem, error);
      }
      if (!ctx.alive) return "";
      const simulated = !answer.checks.some((check) => check.check === "source_login");
      fill(view.result,
        simulated ? h("p", {class: "note"},
          "The target has no host, so the copy is simulated: only the checks that need no machine are made.") : null,
        checksTable("Readiness checks", answer.checks));
      await settled(checked);
      return verdict(answer.checks);
    });
  return {
    element: view.element,
    update(item) {
      fill(view.stored, "Last check: ", readinessView(item.readiness));
    },
  };
}

function memberLine(item, refs) {
  if (!item) return null;
  return ` from ${named(refs.workloadsById, item.source, (workload) => workload.ip)}`
    + ` to ${named(refs.targetsById, item.migration_target, targetLabel)}`;
}

function memberResult(one, refs) {
  const name = `migration ${one.migration}`;
  const failed = one.checks.filter((check) => !check.ok);
  return h("li", {},
    h("h4", {}, h("a", {href: `#/migrations/${one.migration}`}, `Migration ${one.migration}`)),
    h("p", {}, outcome(one.ready, ["Ready", "Not ready"]), memberLine(refs.members().get(one.migration), refs)),
    failed.length ? checksTable(`Failed checks of ${name}`, failed) : null,
    h("details", {},
      h("summary", {}, `Every check of ${name} (${one.checks.length})`),
      checksTable(`Every check of ${name}`, one.checks)));
}

/**
 * A wave's readiness: the button checks every migration of the wave, then
 * shows how many are ready, the ones that are not first (their failed checks
 * shown), each one's every check a click away. refs: {workloadsById,
 * targetsById, members(): the wave's migrations by id}.
 */
export function waveReadiness(ctx, id, refs, checked) {
  const view = section("wave-readiness", "Checking every migration of this wave: logging in to their machines…",
    async () => {
      let answer;
      try {
        answer = await call("POST", `/api/v1/waves/${id}/preflight/`);
      } catch (error) {
        return refused(view.problem, error);
      }
      if (!ctx.alive) return "";
      const notReady = answer.migrations.filter((one) => !one.ready);
      const ready = answer.migrations.filter((one) => one.ready);
      fill(view.result,
        h("ul", {class: "tiles", "aria-label": "Readiness of the wave's migrations"},
          h("li", {}, h("span", {class: "tile-figure"}, String(answer.ready)), " ", outcome(true, ["ready", "not ready"])),
          h("li", {}, h("span", {class: "tile-figure"}, String(answer.not_ready)), " ", outcome(false, ["ready", "not ready"]))),
        notReady.length ? [h("h3", {}, `Not ready (${notReady.length})`),
          h("ul", {class: "readiness-list", "aria-label": "Not ready"}, notReady.map((one) => memberResult(one, refs)))] : null,
        ready.length ? [h("h3", {}, `Ready (${ready.length})`),
          h("ul", {class: "readiness-list", "aria-label": "Ready"}, ready.map((one) => memberResult(one, refs)))] : null,
        answer.migrations.length ? null : h("p", {class: "empty"}, "This wave has no migrations to check."));
      await settled(checked);
      return `${answer.ready} ready, ${answer.not_ready} not ready.`;
    });
  fill(view.stored, "Checks every migration of this wave, each machine logged in to once.");
  view.stored.className = "intro";
  return view.element;
}
