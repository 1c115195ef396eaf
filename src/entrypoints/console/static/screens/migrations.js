import {all, byId} from "../api.js";
import {bar, h, stateBadge} from "../dom.js";
import {STATES, allIfOffered, named, targetLabel, volumeLabel} from "../labels.js";
import {resourceScreen} from "../resource.js";

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
    {label: "State", cell: (item) => h("span", {}, stateBadge(item.state), item.error ? ` ${item.error}` : "")},
    {label: "Progress", cell: (item) => bar(item.progress, `Migration ${item.id} progress`)},
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
  ],
  wire: (form, refs) => {
    const volumes = form.field("selected_mount_points");
    form.field("source").input.addEventListener("change", () => {
      volumes.setOptions(volumeChoices(refs, form.field("source").read()));
    });
  },
});
