import {all, byId} from "../api.js";
import {bar, h, stateBadge} from "../dom.js";
import {STATES, allIfOffered, named, targetLabel, volumeLabel} from "../labels.js";
import {resourceScreen} from "../resource.js";
import {readinessView} from "./readiness.js";

export async function migrationRefs() {
  const [workloads, targets, mountPoints, waves] = await Promise.all([
    all("/api/v1/work_loads/"), all("/api/v1/migration_targets/"), all("/api/v1/mount_points/"),
    allIfOffered("/api/v1/waves/"),
  ]);
  return {
    workloads, targets, waves,
    workloadsById: byId(workloads), targetsById: byId(targets), mountPointsById: byId(mountPoints),
    wavesById: byId(waves || []),
  };
}

function volumeChoices(refs, workloadId) {
  const workload = refs.workloadsById.get(workloadId);
  if (!workload) return [];
  return workload.storage.map((id) => {
    const volume = refs.mountPointsById.get(id);
    return {value: id, label: volume ? volumeLabel(volume) : `mount point ${id}`};
  });
}

const MODES = [
  {value: "cold", label: "Cold: one copy"},
  {value: "warm", label: "Warm: keep in sync while the source runs, then cut over"},
];
const WARM_FIELDS = ["sync_interval", "pre_cutover", "post_cutover"];

/** The body to send: a cold migration's hidden fields stay as they are; an
 * empty hook is none (null), an empty interval the service's default. */
function migrationBody(values) {
  const body = {...values};
  if (body.mode !== "warm") {
    for (const name of WARM_FIELDS) delete body[name];
    return body;
  }
  const interval = String(body.sync_interval).trim();
  if (interval === "") delete body.sync_interval;
  // Anything but digits goes as typed, for the API to refuse in its own words.
  else body.sync_interval = /^\d+$/.test(interval) ? Number(interval) : interval;
  for (const hook of ["pre_cutover", "post_cutover"]) {
    body[hook] = body[hook].trim() === "" ? null : body[hook];
  }
  return body;
}

function migrationLink(item) {
  return h("a", {href: `#/migrations/${item.id}`}, `Migration ${item.id}`);
}

export const migrations = resourceScreen({
  title: "Migrations",
  noun: "migration",
  route: "/migrations",
  path: "/api/v1/migrations/",
  intro: "A migration copies a workload onto a target, keeping only the volumes you select. It runs only with C:\\ selected.",
  loadRefs: migrationRefs,
  filters: (refs) => [
    {name: "state", label: "State", type: "select", placeholder: "Any",
      options: STATES.map((state) => ({value: state, label: state.replace("_", " ")}))},
    {name: "source", label: "Source", type: "select", placeholder: "Any",
      options: refs.workloads.map((workload) => ({value: workload.id, label: workload.ip}))},
    {name: "migration_target", label: "Target", type: "select", placeholder: "Any",
      options: refs.targets.map((target) => ({value: target.id, label: targetLabel(target)}))},
    refs.waves ? {name: "wave", label: "Wave", type: "select", placeholder: "Any",
      options: refs.waves.map((wave) => ({value: wave.id, label: wave.name}))} : null,
  ].filter(Boolean),
  columns: [
    {label: "Migration", cell: migrationLink},
    {label: "Source", cell: (item, refs) => named(refs.workloadsById, item.source, (workload) => workload.ip)},
    {label: "Target", cell: (item, refs) => named(refs.targetsById, item.migration_target, targetLabel)},
    {label: "Volumes", cell: (item, refs) => item.selected_mount_points.map((id) => named(refs.mountPointsById, id, (volume) => volume.name)).join(", ")},
    {label: "State", cell: (item) => h("span", {}, stateBadge(item.state), item.mode === "warm" ? " warm" : "",
      item.phase ? ` ${item.phase.replace(/_/g, " ")}` : "", item.error ? ` ${item.error}` : "")},
    {label: "Progress", cell: (item) => bar(item.progress, `Migration ${item.id} progress`)},
    {label: "Readiness", cell: (item) => readinessView(item.readiness)},
  ],
  fields: (item, refs) => [
    {name: "source", label: "Source workload", type: "select", numeric: true, required: true, value: item?.source,
      options: refs.workloads.map((workload) => ({value: workload.id, label: workload.ip}))},
    {name: "migration_target", label: "Target", type: "select", numeric: true, required: true,
      value: item?.migration_target,
      options: refs.targets.map((target) => ({value: target.id, label: targetLabel(target)}))},
    {name: "selected_mount_points", label: "Volumes to migrate", type: "checks",
      value: item?.selected_mount_points || [], hint: "C:\\ must be among them for the migration to run.",
      empty: "Choose a source workload first.", options: item ? volumeChoices(refs, item.source) : []},
    {name: "mode", label: "Mode", type: "select", placeholder: false, value: item?.mode || "cold",
      options: MODES},
    {name: "sync_interval", label: "Sync interval (seconds)", inputmode: "numeric",
      value: item?.sync_interval ?? "", hint: "How long after one sync ends the next starts: 60 (a minute) to 604800 (a week). Empty: the service's default."},
    {name: "pre_cutover", label: "Before the cutover (on the source)", type: "textarea", rows: 3,
      value: item?.pre_cutover ?? "", hint: "Shell commands run on the source before the final sync, to stop what writes there. A non-zero exit stops the cutover. Empty: none."},
    {name: "post_cutover", label: "After the cutover (on the target's host)", type: "textarea", rows: 3,
      value: item?.post_cutover ?? "", hint: "Shell commands run on the target's host once the final copy is in place. Empty: none."},
  ],
  body: migrationBody,
  wire: (form, refs) => {
    const volumes = form.field("selected_mount_points");
    form.field("source").input.addEventListener("change", () => {
      volumes.setOptions(volumeChoices(refs, form.field("source").read()));
    });
    // The interval and the hooks matter to a warm migration only.
    const mode = form.field("mode");
    const showWarm = () => {
      for (const name of WARM_FIELDS) form.field(name).row.hidden = mode.read() !== "warm";
    };
    mode.input.addEventListener("change", showWarm);
    showWarm();
  },
});
