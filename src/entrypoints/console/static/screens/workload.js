// One workload, the machine itself: its facts, the host key pinned at first
// contact (cleared only after a confirmation), a check over SSH, and a
// discovery of its volumes that shows its dry run before it writes anything.

import {all, byId, call, describe, get} from "../api.js";
import {bytes, fill, h, table} from "../dom.js";
import {login, named, osLabel} from "../labels.js";
import {lastCheckView} from "./readiness.js";

const BASE = "/api/v1/work_loads/";

/** A refusal (a 409's reason) or any failure, in words, after `what` ("The check was not run."). */
function refusal(what, error) {
  const text = describe(error);
  return text === null ? null : `${what} ${text}`;
}

function facts(rows) {
  return h("dl", {class: "facts"}, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function yesNo(value) {
  return value ? "yes" : "missing";
}

function checkReport(report) {
  const tools = report.tools || {};
  return [
    h("p", {class: report.ok ? "ok" : "error-text"}, report.ok ? `Check passed: ${report.message}` : `Check failed: ${report.message}`),
    report.hostname || report.kernel || report.os
      ? facts([
        ["Operating system", osLabel(report.os)],
        ["Hostname", report.hostname || "—"],
        ["Kernel", report.kernel || "—"],
        ["tar", yesNo(tools.tar)],
        ["sha256sum", yesNo(tools.sha256sum)],
        ["Host key met", report.host_key || "—"],
      ])
      : null,
  ];
}

function changeList(report, dryRun) {
  const verb = dryRun ? ["Would add", "Would update", "Would stay as they are"] : ["Added", "Updated", "Unchanged"];
  const sections = [];
  if (report.added.length) {
    sections.push(h("h3", {}, `${verb[0]} (${report.added.length})`),
      h("ul", {"aria-label": verb[0]}, report.added.map((volume) => h("li", {}, `${volume.name} (${bytes(volume.size)})`))));
  }
  if (report.updated.length) {
    sections.push(h("h3", {}, `${verb[1]} (${report.updated.length})`),
      h("ul", {"aria-label": verb[1]}, report.updated.map((volume) =>
        h("li", {}, `${volume.name}: ${bytes(volume.was)} → ${bytes(volume.size)}`))));
  }
  if (report.unchanged.length) {
    sections.push(h("h3", {}, `${verb[2]} (${report.unchanged.length})`),
      h("ul", {"aria-label": verb[2]}, report.unchanged.map((name) => h("li", {}, name))));
  }
  return sections;
}

export const workload = {
  title: "Workload",
  async render(ctx) {
    const id = Number(ctx.match[1]);
    const [credentials, mountPoints] = await Promise.all([all("/api/v1/credentials/"), all("/api/v1/mount_points/")]);
    const credentialsById = byId(credentials);
    let mountPointsById = byId(mountPoints);
    let item = await get(`${BASE}${id}/`);
    if (!ctx.alive) return;

    const heading = h("h1", {tabindex: "-1"});
    const about = h("div");
    const keyArea = h("div", {class: "host-key"});
    const problem = h("div", {class: "form-error", role: "alert"});
    const checkArea = h("div", {"aria-live": "polite"});
    const discoverArea = h("div", {"aria-live": "polite"});
    const volumes = h("div");

    const busy = async (button, work) => {
      button.disabled = true;
      fill(problem);
      try {
        await work();
      } finally {
        button.disabled = false;
      }
    };

    const checkButton = h("button", {type: "button", class: "primary", onclick: () => busy(checkButton, async () => {
      fill(checkArea, h("p", {}, "Checking: connecting and logging in…"));
      try {
        const report = await call("POST", `${BASE}${id}/check/`);
        if (!ctx.alive) return;
        fill(checkArea, checkReport(report));
        await reload(); // a check pins the host key and may set the os
      } catch (error) {
        fill(checkArea);
        const text = refusal("The check was not run.", error);
        if (text !== null) fill(problem, h("p", {}, text));
      }
    })}, "Check");

    const discoverButton = h("button", {type: "button", onclick: () => busy(discoverButton, dryRun)}, "Discover volumes");

    // One discovery call: its report, or null once a refusal or a failure is shown.
    async function discover(query, refusedWords) {
      let report;
      try {
        report = await call("POST", `${BASE}${id}/discover/${query}`);
      } catch (error) {
        if (query) fill(discoverArea);
        const text = refusal(refusedWords, error);
        if (text !== null) fill(problem, h("p", {}, text));
        return null;
      }
      if (!ctx.alive) return null;
      if (!report.ok) {
        fill(discoverArea, h("p", {class: "error-text"}, `Discovery failed: ${report.message}`));
        return null;
      }
      return report;
    }

    async function dryRun() {
      fill(discoverArea, h("p", {}, "Reading the machine's filesystems (a dry run: nothing is written)…"));
      const report = await discover("?dry_run=true", "The discovery was not run.");
      if (report === null) return;
      const changes = report.added.length + report.updated.length;
      if (!changes) {
        fill(discoverArea, h("section", {class: "panel", "aria-label": "Discovery"},
          h("h2", {}, "Discovery"), h("p", {}, "Nothing would change: the volumes are as the machine has them."),
          changeList(report, true)));
        return;
      }
      const apply = h("button", {type: "button", class: "primary", onclick: () => busy(apply, write)}, "Apply these changes");
      const drop = h("button", {type: "button", onclick: () => { fill(discoverArea); discoverButton.focus(); }}, "Discard");
      fill(discoverArea, h("section", {class: "panel", "aria-label": "Discovery"},
        h("h2", {}, "Discovery: dry run"),
        h("p", {}, `A dry run: nothing is written yet. ${report.added.length} to add, ${report.updated.length} to update.`),
        changeList(report, true),
        h("div", {class: "buttons"}, apply, drop)));
      apply.focus();
    }

    async function write() {
      const report = await discover("", "The discovery was not written.");
      if (report === null) return;
      fill(discoverArea, h("section", {class: "panel", "aria-label": "Discovery"},
        h("h2", {}, "Discovery: written"),
        h("p", {class: "ok"}, `Discovery written: ${report.added.length} added, ${report.updated.length} updated.`),
        changeList(report, false)));
      mountPointsById = byId(await all("/api/v1/mount_points/"));
      await reload();
      discoverButton.focus();
    }

    function showKey() {
      if (!item.host_key) {
        fill(keyArea, h("p", {class: "empty"}, "No host key pinned yet: the first check or copy pins the key it meets."));
        return;
      }
      const clear = h("button", {type: "button", class: "danger", onclick: () => confirmClear()}, "Clear host key");
      fill(keyArea, h("p", {}, h("code", {class: "fingerprint"}, item.host_key)), h("div", {class: "buttons"}, clear));
    }

    function confirmClear() {
      const yes = h("button", {type: "button", class: "danger", onclick: () => busy(yes, async () => {
        try {
          item = await call("PATCH", `${BASE}${id}/`, {body: {host_key: null}});
          ctx.say(`Cleared the host key of workload ${item.ip}.`);
        } catch (error) {
          const text = refusal("The host key was not cleared.", error);
          if (text !== null) fill(problem, h("p", {}, text));
        }
        show();
        keyArea.querySelector("button")?.focus();
      })}, "Yes, clear it");
      const keep = h("button", {type: "button", onclick: () => { showKey(); keyArea.querySelector("button")?.focus(); }}, "Keep it");
      fill(keyArea,
        h("p", {}, h("code", {class: "fingerprint"}, item.host_key)),
        h("p", {class: "confirm", id: `clear-${id}`},
          "Clear the pinned host key? The next contact then trusts whatever key the machine shows."),
        h("div", {class: "buttons", role: "group", "aria-labelledby": `clear-${id}`}, yes, keep));
      keep.focus();
    }

    function show() {
      ctx.setTitle(`Workload ${item.ip}`);
      fill(heading, `Workload ${item.ip}`);
      fill(about, facts([
        ["IP address", item.ip],
        ["Login", named(credentialsById, item.credentials, login)],
        ["Operating system", osLabel(item.os)],
        ["SSH port", String(item.port ?? 22)],
        ["Root", item.root ?? "/"],
        ["Last check", lastCheckView(item.last_check)],
      ]));
      showKey();
      const rows = item.storage.map((mountPoint) => {
        const volume = mountPointsById.get(mountPoint);
        return h("tr", {},
          h("td", {"data-label": "Volume"}, volume ? volume.name : `mount point ${mountPoint}`),
          h("td", {"data-label": "Size"}, volume ? bytes(volume.size) : "—"));
      });
      fill(volumes, rows.length ? table("Volumes of this workload", ["Volume", "Size"], rows)
        : h("p", {class: "empty"}, "No volumes yet: discover them, or add mount points by hand."));
    }

    async function reload() {
      item = await get(`${BASE}${id}/`);
      if (ctx.alive) show();
    }

    fill(ctx.root,
      heading,
      h("div", {class: "buttons", role: "group", "aria-label": "Actions"},
        checkButton, discoverButton,
        h("a", {class: "button-link", href: `#/workloads?edit=${id}&back=${encodeURIComponent(`/workloads/${id}`)}`}, "Edit"),
        h("a", {class: "button-link", href: "#/workloads"}, "All workloads")),
      problem,
      about,
      h("section", {"aria-labelledby": "key-heading"}, h("h2", {id: "key-heading"}, "Pinned host key"), keyArea),
      h("section", {"aria-labelledby": "check-heading"}, h("h2", {id: "check-heading"}, "Check"), checkArea),
      discoverArea,
      h("section", {"aria-labelledby": "volumes-heading"}, h("h2", {id: "volumes-heading"}, "Volumes"), volumes));
    show();
    fill(checkArea, h("p", {class: "empty"}, "Not checked from here yet: Check logs in over SSH and reads the machine's facts."));
  },
};
