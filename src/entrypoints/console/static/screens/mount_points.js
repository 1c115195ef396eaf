import {all} from "../api.js";
import {bytes} from "../dom.js";
import {SIZE_HINT} from "../labels.js";
import {resourceScreen} from "../resource.js";

export const mountPoints = resourceScreen({
  title: "Mount points",
  noun: "mount point",
  route: "/mount_points",
  path: "/api/v1/mount_points/",
  intro: "The volumes of your source machines, such as C:\\ or /var. Each belongs to one workload at most.",
  loadRefs: async () => {
    const holders = new Map();
    for (const workload of await all("/api/v1/work_loads/")) {
      for (const id of workload.storage) holders.set(id, workload);
    }
    return {holders};
  },
  filters: () => [{name: "name", label: "Name"}],
  columns: [
    {label: "ID", cell: (item) => String(item.id)},
    {label: "Name", cell: (item) => item.name},
    {label: "Size", cell: (item) => `${bytes(item.size)} (${Number(item.size).toLocaleString()} bytes)`},
    {label: "Workload", cell: (item, refs) => refs.holders.get(item.id)?.ip || "—"},
  ],
  fields: (item) => [
    {name: "name", label: "Name", value: item?.name, required: true, hint: "C:\\ is the system volume: a migration runs only with it."},
    {name: "size", label: "Size", type: "size", value: item ? String(item.size) : "", required: true,
      inputmode: "text", hint: SIZE_HINT},
  ],
});
