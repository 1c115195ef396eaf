// One wave: run or cancel its migrations together, check whether they are
// ready, its counts by state and its progress weighed by bytes, and each
// member's bar and last readiness.

import {all, byId, call, describe, get} from "../api.js";
import {bar, bytes, fill, h, stateBadge, table, uid} from "../dom.js";
import {keepFresh, migrationOf} from "../live.js";
import {STATES, named, targetLabel} from "../labels.js";
import {readinessView, waveReadiness} from "./readiness.js";
import {phaseLabel} from "./warm.js";

export const wave = {
  title: "Wave",
  async render(ctx) {
    const id = Number(ctx.match[1]);
    const [found, workloads, targets] = await Promise.all([
      get(`/api/v1/waves/${id}/`), all("/api/v1/work_loads/"), all("/api/v1/migration_targets/"),
    ]);
    const workloadsById = byId(workloads);
    const targetsById = byId(targets);
    ctx.setTitle(`Wave ${found.name}`);
    const problem = h("div", {class: "form-error", role: "alert"});
    const outcome = h("div", {"aria-live": "polite"});
    const summary = h("div");
    const members = h("div");
    let membersById = new Map();
    let memberIds = new Set(found.migrations);
    let runningCount = 0;

    const act = (verb, label) => h("button", {type: "button", class: verb === "cancel" ? "danger" : "primary",
      onclick: async (event) => {
        const button = event.currentTarget;
        button.disabled = true;
        fill(problem);
        fill(outcome);
        try {
          const answer = await call("POST", `/api/v1/waves/${id}/${verb}/`);
          showOutcome(verb, answer);
        } catch (error) {
          const text = describe(error);
          if (text !== null) fill(problem, h("p", {}, text));
        }
        button.disabled = false;
        await refresh();
      }}, label);

    // A cutover stops each source's writes: asked first, in place of the outcome.
    const cutoverButton = h("button", {type: "button", class: "danger", onclick: () => askCutover()}, "Cut over the wave");

    function askCutover() {
      fill(problem);
      const questionId = uid("wave-cutover");
      const keep = h("button", {type: "button", onclick: () => { fill(outcome); cutoverButton.focus(); }},
        "No, keep them in sync");
      const yes = h("button", {type: "button", class: "danger", onclick: async (event) => {
        event.currentTarget.disabled = true;
        try {
          const answer = await call("POST", `/api/v1/waves/${id}/cutover/`, {body: {}});
          showOutcome("cutover", answer);
        } catch (error) {
          fill(outcome);
          const text = describe(error);
          if (text !== null) fill(problem, h("p", {}, `The wave was not cut over. ${text}`));
        }
        cutoverButton.focus();
        await refresh();
      }}, "Yes, cut over the wave");
      fill(outcome,
        h("p", {class: "confirm", id: questionId},
          "Cut over every running warm migration of this wave now? Each runs its hook before the cutover on its source,"
          + " makes a final sync, puts the copy in place and ends. The others are refused."),
        h("div", {class: "buttons", role: "group", "aria-labelledby": questionId}, yes, keep));
      keep.focus();
    }

    function showOutcome(verb, answer) {
      const list = (ids) => ids.length ? ids.map((one) => `migration ${one}`).join(", ") : "none";
      if (verb === "cancel") {
        fill(outcome, h("p", {}, `Cancelled: ${list(answer.cancelled || [])}.`));
        return;
      }
      const cutover = verb === "cutover";
      const refused = answer.refused || [];
      fill(outcome,
        h("p", {}, cutover ? `Cutting over: ${list(answer.cutting_over || [])}.` : `Started: ${list(answer.started || [])}.`),
        refused.length ? h("div", {class: "refused"}, h("p", {}, `${cutover ? "Not cut over" : "Not started"}: ${refused.length}.`),
          h("ul", {}, refused.map((one) => h("li", {},
            h("a", {href: `#/migrations/${one.migration}`}, `Migration ${one.migration}`), `: ${one.detail}`)))) : null);
    }

    fill(ctx.root,
      h("h1", {tabindex: "-1"}, `Wave ${found.name}`),
      h("div", {class: "buttons", role: "group", "aria-label": "Actions"},
        act("run", "Run the wave"), cutoverButton, act("cancel", "Cancel the wave"),
        h("a", {class: "button-link", href: `#/waves?edit=${id}&back=${encodeURIComponent(`/waves/${id}`)}`}, "Edit"),
        h("a", {class: "button-link", href: "#/waves"}, "All waves")),
      problem, outcome,
      waveReadiness(ctx, id, {workloadsById, targetsById, members: () => membersById}, () => refresh()),
      h("section", {"aria-labelledby": "wave-progress"}, h("h2", {id: "wave-progress"}, "Progress"), summary),
      h("section", {"aria-labelledby": "wave-members"}, h("h2", {id: "wave-members"}, "Migrations"), members));

    async function refresh() {
      const [state, page] = await Promise.all([
        get(`/api/v1/waves/${id}/state/`), get(`/api/v1/migrations/?wave=${id}&limit=1000`),
      ]);
      if (!ctx.alive) return;
      membersById = byId(page.results);
      memberIds = new Set(membersById.keys());
      runningCount = state.counts.running || 0;
      fill(summary,
        h("ul", {class: "tiles"}, STATES.map((one) => h("li", {},
          h("span", {class: "tile-figure"}, String(state.counts[one] ?? 0)), " ", stateBadge(one)))),
        h("p", {class: "overall"}, bar(state.progress, "Wave progress")),
        h("p", {}, `${bytes(state.bytes_copied)} of ${bytes(state.bytes_total)} copied${state.finished ? ": finished" : ""}.`));
      fill(members, page.results.length
        ? table("Migrations in this wave", ["Migration", "Source", "Target", "State", "Readiness", "Progress"], page.results.map((item) => h("tr", {},
          h("td", {"data-label": "Migration"}, h("a", {href: `#/migrations/${item.id}`}, `Migration ${item.id}`)),
          h("td", {"data-label": "Source"}, named(workloadsById, item.source, (workload) => workload.ip)),
          h("td", {"data-label": "Target"}, named(targetsById, item.migration_target, targetLabel)),
          h("td", {"data-label": "State"}, stateBadge(item.state), item.phase ? ` ${phaseLabel(item.phase)}` : "",
            item.error ? ` ${item.error}` : ""),
          h("td", {"data-label": "Readiness"}, readinessView(item.readiness)),
          h("td", {"data-label": "Progress"}, bar(item.progress, `Migration ${item.id} progress`)))))
        : h("p", {class: "empty"}, "This wave has no migrations yet: edit it to add some."));
    }

    await refresh();
    ctx.onLeave(keepFresh({refresh, wants: (message) => memberIds.has(migrationOf(message)), busy: () => runningCount > 0}));
  },
};
