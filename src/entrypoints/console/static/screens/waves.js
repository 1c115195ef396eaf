import {all} from "../api.js";
import {h} from "../dom.js";
import {named, targetLabel} from "../labels.js";
import {resourceScreen} from "../resource.js";
import {migrationRefs} from "./migrations.js";

async function loadRefs() {
  const [refs, migrations] = await Promise.all([migrationRefs(), all("/api/v1/migrations/")]);
  return {...refs, migrations};
}

function migrationChoice(refs, item) {
  const source = named(refs.workloadsById, item.source, (workload) => workload.ip);
  return `Migration ${item.id}: ${source} to ${named(refs.targetsById, item.migration_target, targetLabel)}`;
}

export const waves = resourceScreen({
  title: "Waves",
  noun: "wave",
  route: "/waves",
  path: "/api/v1/waves/",
  intro: "A wave is a named group of migrations that run together. A migration is in one wave at most.",
  loadRefs,
  filters: () => [{name: "name", label: "Name"}],
  columns: [
    {label: "Wave", cell: (item) => h("a", {href: `#/waves/${item.id}`}, item.name)},
    {label: "Migrations", cell: (item) => item.migrations.length ? item.migrations.map((id) => `#${id}`).join(", ") : "—"},
  ],
  fields: (item, refs) => [
    {name: "name", label: "Name", value: item?.name, required: true},
    {name: "migrations", label: "Migrations", type: "checks", value: item?.migrations || [],
      empty: "No migrations yet: create them under Migrations.",
      options: refs.migrations.map((migration) => ({
        value: migration.id,
        label: migrationChoice(refs, migration),
        note: migration.wave && migration.wave !== item?.id
          ? `(in wave ${named(refs.wavesById, migration.wave, (wave) => wave.name)})` : null,
      }))},
  ],
});
