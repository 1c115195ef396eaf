import {all, byId} from "../api.js";
import {h} from "../dom.js";
import {CLOUD_TYPES, credentialsLabel, login, named, volumeLabel} from "../labels.js";
import {resourceScreen} from "../resource.js";

/** The VM a successful migration left in a target, or a word that there is none yet. */
export function targetVm(vm) {
  if (!vm) return h("span", {class: "empty"}, "None yet");
  return h("div", {class: "vm"},
    h("p", {}, `${vm.ip}, login ${login(vm.credentials)}`),
    h("ul", {"aria-label": "Volumes"}, vm.storage.map((volume) => h("li", {}, volumeLabel(volume)))));
}

/** Where a target's copies land: a host workload and a root, or a simulated copy. */
export function targetHost(target, workloadsById) {
  if (target.host === null || target.host === undefined) return h("span", {class: "empty"}, "None: a simulated copy");
  const host = workloadsById.get(target.host);
  return h("span", {},
    host ? h("a", {href: `#/workloads/${host.id}`}, host.ip) : `workload ${target.host}`,
    target.root ? ` under ${target.root}` : "");
}

export const targets = resourceScreen({
  title: "Targets",
  noun: "target",
  route: "/targets",
  path: "/api/v1/migration_targets/",
  intro: "Where migrations go: a cloud and the login to it, and the host machine that receives a real copy"
    + " (without one, runs are simulated). A target holds the VM its last successful migration made.",
  loadRefs: async () => {
    const [credentials, workloads] = await Promise.all([all("/api/v1/credentials/"), all("/api/v1/work_loads/")]);
    return {credentials, workloads, credentialsById: byId(credentials), workloadsById: byId(workloads)};
  },
  filters: () => [{name: "cloud_type", label: "Cloud", type: "select", placeholder: "Any",
    options: CLOUD_TYPES.map((type) => ({value: type, label: type}))}],
  columns: [
    {label: "ID", cell: (item) => String(item.id)},
    {label: "Cloud", cell: (item) => item.cloud_type},
    {label: "Login", cell: (item, refs) => named(refs.credentialsById, item.cloud_credentials, login)},
    {label: "Host", cell: (item, refs) => targetHost(item, refs.workloadsById)},
    {label: "Target VM", cell: (item) => targetVm(item.target_vm)},
  ],
  fields: (item, refs) => [
    {name: "cloud_type", label: "Cloud", type: "select", required: true, value: item?.cloud_type,
      options: CLOUD_TYPES.map((type) => ({value: type, label: type}))},
    {name: "cloud_credentials", label: "Cloud login", type: "select", numeric: true, required: true,
      value: item?.cloud_credentials,
      options: refs.credentials.map((credentials) => ({value: credentials.id, label: credentialsLabel(credentials)}))},
    {name: "host", label: "Host", type: "select", numeric: true, value: item?.host,
      placeholder: "None: a simulated copy",
      hint: "The workload that receives the copy over SSH. Only Linux hosts are copied to.",
      options: refs.workloads.map((workload) => ({value: workload.id, label: `${workload.ip} (workload ${workload.id})`}))},
    {name: "root", label: "Root on the host", value: item?.root ?? "",
      hint: "Required with a host: the absolute path on it under which the volumes land, for example /srv/restore."},
  ],
  body: (values) => ({...values, root: values.host === null || values.root === "" ? null : values.root}),
  wire: (form) => {
    // The root belongs to a host: without one it is neither asked nor sent.
    const host = form.field("host");
    const root = form.field("root");
    const follow = () => {
      const none = host.read() === null;
      root.input.disabled = none;
      root.input.required = !none;
    };
    host.input.addEventListener("change", follow);
    follow();
  },
});
