import {all, byId} from "../api.js";
import {h} from "../dom.js";
import {OPERATING_SYSTEMS, credentialsLabel, login, named, osLabel, volumeLabel} from "../labels.js";
import {resourceScreen} from "../resource.js";
import {lastCheckView} from "./readiness.js";

async function loadRefs() {
  const [credentials, mountPoints, workloads] = await Promise.all([
    all("/api/v1/credentials/"), all("/api/v1/mount_points/"), all("/api/v1/work_loads/"),
  ]);
  const holders = new Map();
  for (const workload of workloads) {
    for (const id of workload.storage) holders.set(id, workload);
  }
  return {credentials, mountPoints, holders, credentialsById: byId(credentials), mountPointsById: byId(mountPoints)};
}

export const workloads = resourceScreen({
  title: "Workloads",
  noun: "workload",
  route: "/workloads",
  path: "/api/v1/work_loads/",
  intro: "The source machines to migrate: an ip, the login to reach it, and its volumes.",
  loadRefs,
  filters: () => [{name: "ip", label: "IP address"}],
  columns: [
    {label: "ID", cell: (item) => String(item.id)},
    {label: "IP address", cell: (item) => h("a", {href: `#/workloads/${item.id}`}, item.ip)},
    {label: "OS", cell: (item) => osLabel(item.os)},
    {label: "Login", cell: (item, refs) => named(refs.credentialsById, item.credentials, login)},
    {label: "Volumes", cell: (item, refs) => item.storage.map((id) => named(refs.mountPointsById, id, (volume) => volume.name)).join(", ") || "—"},
    {label: "Last check", cell: (item) => lastCheckView(item.last_check)},
  ],
  fields: (item, refs) => [
    item
      ? {name: "ip", label: "IP address", value: item.ip, readOnly: true, hint: "A workload's ip never changes.", skip: () => true}
      : {name: "ip", label: "IP address", required: true, hint: "IPv4 or IPv6, for example 10.0.0.5."},
    {name: "credentials", label: "Login", type: "select", numeric: true, required: true, value: item?.credentials,
      options: refs.credentials.map((credentials) => ({value: credentials.id, label: credentialsLabel(credentials)}))},
    {name: "storage", label: "Volumes", type: "checks", value: item?.storage || [],
      empty: "No mount points yet: add them under Mount points.",
      options: refs.mountPoints.map((volume) => {
        const holder = refs.holders.get(volume.id);
        const elsewhere = holder && holder.id !== item?.id;
        return {value: volume.id, label: volumeLabel(volume), note: elsewhere ? `(in workload ${holder.ip})` : null};
      })},
    {name: "os", label: "Operating system", type: "select", value: item?.os, placeholder: "Unknown",
      options: OPERATING_SYSTEMS.map((os) => ({value: os, label: os})),
      hint: "Unknown until you say or a check finds it. Only Linux machines have their volumes discovered and are copied for real."},
    {name: "port", label: "SSH port", value: item ? String(item.port ?? 22) : "22", inputmode: "numeric"},
    {name: "root", label: "Root", value: item?.root ?? "/",
      hint: "The absolute path of the machine's tree once logged in: / for the machine itself, or a snapshot's mount."},
  ],
  body: (values) => {
    const body = {...values};
    const port = String(body.port).trim();
    if (port === "") delete body.port;
    else body.port = /^\d+$/.test(port) ? Number(port) : port; // anything else for the API to refuse in its words
    if (body.root === "") delete body.root;
    return body;
  },
});
