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

export const targets = resourceScreen({
  title: "Targets",
  noun: "target",
  route: "/targets",
  path: "/api/v1/migration_targets/",
  intro: "Where migrations go: a cloud and the login to it. A target holds the VM its last successful migration made.",
  loadRefs: async () => {
    const credentials = await all("/api/v1/credentials/");
    return {credentials, credentialsById: byId(credentials)};
  },
  filters: () => [{name: "cloud_type", label: "Cloud", type: "select", placeholder: "Any",
    options: CLOUD_TYPES.map((type) => ({value: type, label: type}))}],
  columns: [
    {label: "ID", cell: (item) => String(item.id)},
    {label: "Cloud", cell: (item) => item.cloud_type},
    {label: "Login", cell: (item, refs) => named(refs.credentialsById, item.cloud_credentials, login)},
    {label: "Target VM", cell: (item) => targetVm(item.target_vm)},
  ],
  fields: (item, refs) => [
    {name: "cloud_type", label: "Cloud", type: "select", required: true, value: item?.cloud_type,
      options: CLOUD_TYPES.map((type) => ({value: type, label: type}))},
    {name: "cloud_credentials", label: "Cloud login", type: "select", numeric: true, required: true,
      value: item?.cloud_credentials,
      options: refs.credentials.map((credentials) => ({value: credentials.id, label: credentialsLabel(credentials)}))},
  ],
});
