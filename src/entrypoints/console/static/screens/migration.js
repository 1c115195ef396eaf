// One migration: run, cancel or retry it, watch it copy volume by volume,
// read its history, and see the VM it leaves in its target.

import {ApiError, all, byId, call, describe, get} from "../api.js";
import {bar, bytes, fill, h, stateBadge, table, when} from "../dom.js";
import {keepFresh, migrationOf} from "../live.js";
import {named, targetLabel} from "../labels.js";
import {migrationReadiness} from "./readiness.js";
import {targetVm} from "./targets.js";
import {hooksView, phaseLabel, warmSection} from "./warm.js";

/** What each volume's newest `volume_copied` event says, by mount point: bytes, files, verified (real copies). */
function copiedDetails(log) {
  const found = new Map();
  const newest = new Map();
  for (const event of log || []) {
    if (event.kind !== "volume_copied" || !event.detail || typeof event.detail !== "object") continue;
    const key = event.detail.mount_point;
    if (newest.has(key) && newest.get(key) > event.id) continue;
    newest.set(key, event.id);
    found.set(key, event.detail);
  }
  return found;
}

function verification(detail, volume, state) {
  if (detail) {
    if (detail.verified === true) {
      const count = (n, one, many) => `${Number(n).toLocaleString()} ${n === 1 ? one : many}`;
      let text = `Verified: ${Number(detail.bytes).toLocaleString()} bytes in ${count(detail.files, "file", "files")} sent`;
      if (detail.linked) text += `, ${count(detail.linked, "unchanged entry", "unchanged entries")} kept from the copy in place`;
      if (detail.dropped) text += `, ${count(detail.dropped, "entry", "entries")} removed`;
      return h("span", {class: "ok"}, `${text}; the same on both machines`);
    }
    return h("span", {class: "empty"}, "Simulated copy: nothing to verify");
  }
  if (state.state === "running" && volume.copied) return state.phase === "in_sync" ? "In sync: the last sync is in place" : "Copying…";
  if (state.state === "error" && volume.copied) return h("span", {class: "error-text"}, "Not in place: the run stopped");
  return "—";
}

/** A volume's files: those its verification counted, or those passed so far of the one a real run copies. */
function filesPassed(detail, volume, state) {
  if (detail && detail.files !== undefined) return Number(detail.files).toLocaleString();
  if (state.state === "running" && Number.isInteger(volume.files)) return `${volume.files.toLocaleString()} so far`;
  return "—";
}

function volumeRows(migration, state, mountPointsById, details) {
  // Services without per-volume figures: the selection, copied only once it succeeded.
  const volumes = state.volumes || migration.selected_mount_points.map((id) => {
    const volume = mountPointsById.get(id);
    return {mount_point: id, name: volume?.name ?? `mount point ${id}`, size: volume?.size ?? null,
      copied: state.state === "success" ? volume?.size ?? null : state.state === "not_started" ? 0 : null};
  });
  return volumes.map((volume) => {
    const label = `${volume.name} copied`;
    const detail = details.get(volume.mount_point);
    let meter;
    if (volume.copied === null || volume.copied === undefined) {
      meter = h("span", {class: "bar"}, h("progress", {max: "100", "aria-label": label}), h("span", {class: "bar-figure"}, "…"));
    } else {
      const percent = volume.size ? Math.floor((100 * volume.copied) / volume.size) : (state.state === "success" ? 100 : 0);
      meter = bar(percent, label);
    }
    return h("tr", {},
      h("td", {"data-label": "Volume"}, volume.name),
      h("td", {"data-label": "Copied"}, `${bytes(volume.copied)} of ${bytes(volume.size)}`),
      h("td", {"data-label": "Files"}, filesPassed(detail, volume, state)),
      h("td", {"data-label": "Verification"}, verification(detail, volume, state)),
      h("td", {"data-label": "Progress"}, meter));
  });
}

function detailText(detail) {
  if (detail === null || detail === undefined) return "";
  if (typeof detail !== "object") return String(detail);
  return Object.entries(detail)
    .map(([key, value]) => `${key}: ${value !== null && typeof value === "object" ? JSON.stringify(value) : value}`)
    .join(", ");
}

function by(actor) {
  return actor === null || actor === undefined ? "the service" : `user ${actor}`;
}

async function history(id, query = "", limit = 1000) {
  try {
    const page = await get(`/api/v1/migrations/${id}/events/?limit=${limit}${query}`);
    return Array.isArray(page) ? page : page.results;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

export const migration = {
  title: "Migration",
  async render(ctx) {
    const id = Number(ctx.match[1]);
    ctx.setTitle(`Migration ${id}`);
    const [workloads, targets, mountPoints] = await Promise.all([
      all("/api/v1/work_loads/"), all("/api/v1/migration_targets/"), all("/api/v1/mount_points/"),
    ]);
    const refs = {workloadsById: byId(workloads), targetsById: byId(targets), mountPointsById: byId(mountPoints)};
    const summary = h("p", {class: "intro"});
    const actions = h("div", {class: "buttons", role: "group", "aria-label": "Actions"});
    const problem = h("div", {class: "form-error", role: "alert"});
    const progress = h("div");
    const vm = h("div");
    const events = h("div");
    const warm = warmSection(ctx, id, () => refresh());
    const hooks = h("div", {class: "hooks"});
    const warmArea = h("div");
    const readiness = migrationReadiness(ctx, id, () => refresh());
    fill(ctx.root,
      h("h1", {tabindex: "-1"}, `Migration ${id}`),
      summary, actions, problem,
      readiness.element,
      h("section", {"aria-labelledby": "progress-heading"}, h("h2", {id: "progress-heading"}, "Progress"), progress),
      warmArea,
      h("section", {"aria-labelledby": "vm-heading"}, h("h2", {id: "vm-heading"}, "Target VM"), vm),
      h("section", {"aria-labelledby": "history-heading"}, h("h2", {id: "history-heading"}, "History"), events));

    let shownState = null;
    let current = null;

    const act = (verb, label) => h("button", {type: "button", class: verb === "cancel" ? "danger" : "primary",
      onclick: async (event) => {
        const button = event.currentTarget;
        button.disabled = true;
        fill(problem);
        try {
          await call("POST", `/api/v1/migrations/${id}/${verb}/`);
          ctx.say(`${label}: migration ${id}.`);
        } catch (error) {
          const text = describe(error);
          if (text !== null) fill(problem, h("p", {}, `Migration ${id} did not ${verb}. ${text}`));
        }
        await refresh();
        button.disabled = false;
      }}, label);

    function showActions(state) {
      const hadFocus = actions.contains(document.activeElement);
      fill(actions,
        state === "not_started" ? act("run", "Run") : null,
        state === "error" ? act("run", "Retry") : null,
        state === "running" ? act("cancel", "Cancel") : null,
        state !== "running" ? h("a", {class: "button-link",
          href: `#/migrations?edit=${id}&back=${encodeURIComponent(`/migrations/${id}`)}`}, "Edit") : null,
        h("a", {class: "button-link", href: "#/migrations"}, "All migrations"));
      if (hadFocus) actions.querySelector("button, a")?.focus();
    }

    async function refresh() {
      // The volumes' own events apart: the newest, however long the history.
      const [item, state, log, copies] = await Promise.all([
        get(`/api/v1/migrations/${id}/`), get(`/api/v1/migrations/${id}/state/`), history(id),
        history(id, "&kind=volume_copied&ordering=-id"),
      ]);
      // A warm migration's syncs and hook runs, the newest, however long the history.
      const [synced, failed, hookRuns] = item.mode === "warm" ? await Promise.all(
        ["synced", "sync_failed", "hook_ran"].map((kind) => history(id, `&kind=${kind}&ordering=-id`, 50)),
      ) : [];
      if (!ctx.alive) return;
      current = state.state;
      readiness.update(item);
      fill(summary,
        `From ${named(refs.workloadsById, item.source, (workload) => workload.ip)} to ${named(refs.targetsById, item.migration_target, targetLabel)}.`,
        item.wave ? [" In ", h("a", {href: `#/waves/${item.wave}`}, `wave ${item.wave}`), "."] : null);
      if (state.state !== shownState) {
        showActions(state.state);
        shownState = state.state;
      }
      fill(progress,
        h("p", {}, stateBadge(state.state),
          state.phase ? h("span", {class: "phase"}, ` Phase: ${phaseLabel(state.phase)}`) : null),
        state.phase === "queued" ? h("p", {class: "queued"},
          `Waiting for a copy slot: number ${state.queue_position ?? "?"} in the queue that every instance serves.`) : null,
        state.error ? h("p", {class: "error-text run-error"},
          state.error === "cancelled" ? "The run was cancelled." : `The run failed: ${state.error}`) : null,
        h("p", {class: "overall"}, bar(state.progress, "Overall progress")),
        state.bytes_total !== undefined
          ? h("p", {}, `${bytes(state.bytes_copied)} of ${bytes(state.bytes_total)} copied`,
            state.eta && !state.finished && state.phase !== "in_sync" ? `, done about ${when(state.eta)}` : "", ".")
          : null,
        table("Volumes", ["Volume", "Copied", "Files", "Verification", "Progress"],
          volumeRows(item, state, refs.mountPointsById, copiedDetails(copies))));
      showWarm(item, state, synced, failed, hookRuns);
      await showVm(item, state);
      showHistory(log);
    }

    function showWarm(item, state, synced, failed, hookRuns) {
      if (item.mode !== "warm") {
        fill(warmArea);
        return;
      }
      warm.update(item, state, synced || [], failed || []);
      fill(hooks, hooksView(item, hookRuns || []));
      if (!warmArea.firstChild) {
        fill(warmArea, warm.element,
          h("section", {"aria-labelledby": "hooks-heading"}, h("h2", {id: "hooks-heading"}, "Hooks"), hooks));
      }
    }

    async function showVm(item, state) {
      if (state.state !== "success") {
        fill(vm, h("p", {class: "empty"}, "The target VM is shown here once this migration succeeds."));
        return;
      }
      const target = await get(`/api/v1/migration_targets/${item.migration_target}/`);
      if (ctx.alive) fill(vm, targetVm(target.target_vm));
    }

    function showHistory(log) {
      if (log === null) {
        fill(events, h("p", {class: "empty"}, "This service keeps no history of migrations."));
      } else if (!log.length) {
        fill(events, h("p", {class: "empty"}, "Nothing has happened yet."));
      } else {
        fill(events, table("Events, oldest first", ["When", "What", "Details", "By"], log.map((event) =>
          h("tr", {},
            h("td", {"data-label": "When"}, when(event.at ?? event.time)),
            h("td", {"data-label": "What"}, String(event.kind).replace(/_/g, " ")),
            h("td", {"data-label": "Details"}, detailText(event.detail)),
            h("td", {"data-label": "By"}, by(event.actor ?? event.user))))));
      }
    }

    await refresh();
    ctx.onLeave(keepFresh({refresh, wants: (message) => migrationOf(message) === id, busy: () => current === "running"}));
  },
};
