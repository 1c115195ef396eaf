// The fleet at a glance: migrations by state, the running ones with their
// bars, and what the inventory holds (with first steps for a new account).

import {ApiError, all, byId, get} from "../api.js";
import {bar, fill, h, stateBadge} from "../dom.js";
import {keepFresh} from "../live.js";
import {STATES, targetLabel, named} from "../labels.js";

const INVENTORY = [
  {label: "Credentials", path: "/api/v1/credentials/", href: "#/credentials"},
  {label: "Mount points", path: "/api/v1/mount_points/", href: "#/mount_points"},
  {label: "Workloads", path: "/api/v1/work_loads/", href: "#/workloads"},
  {label: "Targets", path: "/api/v1/migration_targets/", href: "#/targets"},
  {label: "Waves", path: "/api/v1/waves/", href: "#/waves"},
];

async function count(path) {
  try {
    return (await get(`${path}${path.includes("?") ? "&" : "?"}limit=1`)).count;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

const FIRST_STEPS = [
  ["Add the ", "credentials", " that log in to your source machines and your cloud."],
  ["Add the source machines' volumes as ", "mount points", " (C:\\ and the others)."],
  ["Describe each source machine as a ", "workload", ": its ip, login and volumes."],
  ["Add a ", "target", ": the cloud to migrate to."],
  ["Create a ", "migration", " of the volumes to keep, then run it."],
];
const STEP_LINKS = ["#/credentials", "#/mount_points", "#/workloads", "#/targets", "#/migrations"];

export const overview = {
  title: "Overview",
  async render(ctx) {
    const states = h("div");
    const running = h("div");
    const inventory = h("div");
    fill(ctx.root,
      h("h1", {tabindex: "-1"}, "Overview"),
      h("section", {"aria-labelledby": "states-heading"}, h("h2", {id: "states-heading"}, "Migrations by state"), states),
      h("section", {"aria-labelledby": "running-heading"}, h("h2", {id: "running-heading"}, "Running now"), running),
      h("section", {"aria-labelledby": "inventory-heading"}, h("h2", {id: "inventory-heading"}, "Inventory"), inventory));
    let runningCount = 0;

    async function refresh() {
      const [byState, active, totals, workloads, targets] = await Promise.all([
        Promise.all(STATES.map((state) => count(`/api/v1/migrations/?state=${state}`))),
        get("/api/v1/migrations/?state=running&limit=100"),
        Promise.all(INVENTORY.map((kind) => count(kind.path))),
        all("/api/v1/work_loads/"),
        all("/api/v1/migration_targets/"),
      ]);
      if (!ctx.alive) return;
      runningCount = active.count;
      fill(states, h("ul", {class: "tiles"}, STATES.map((state, index) => h("li", {},
        h("a", {href: `#/migrations?state=${state}`},
          h("span", {class: "tile-figure"}, String(byState[index])), " ", stateBadge(state))))));
      const workloadsById = byId(workloads);
      const targetsById = byId(targets);
      fill(running, active.results.length
        ? h("ul", {class: "running"}, active.results.map((item) => h("li", {},
          h("a", {href: `#/migrations/${item.id}`}, `Migration ${item.id}`),
          ` ${named(workloadsById, item.source, (workload) => workload.ip)} to ${named(targetsById, item.migration_target, targetLabel)} `,
          item.phase === "queued" ? h("span", {class: "queued"}, "queued ") : null,
          bar(item.progress, `Migration ${item.id} progress`))))
        : h("p", {class: "empty"}, "No migration is running."));
      fill(inventory,
        h("ul", {class: "tiles"}, INVENTORY.map((kind, index) => totals[index] === null ? null : h("li", {},
          h("a", {href: kind.href}, h("span", {class: "tile-figure"}, String(totals[index])), ` ${kind.label}`)))),
        totals[2] === 0 ? h("div", {class: "panel"}, h("h3", {}, "First steps"),
          h("ol", {}, FIRST_STEPS.map(([before, word, after], index) =>
            h("li", {}, before, h("a", {href: STEP_LINKS[index]}, word), after)))) : null);
    }

    await refresh();
    ctx.onLeave(keepFresh({refresh, busy: () => runningCount > 0}));
  },
};
