// The shell: the router (the place is the URL's hash), the header and its
// navigation, sign-out, and where the user goes when the session ends.

import {describe, onSignedOut, session} from "./api.js";
import {fill, h} from "./dom.js";
import {live} from "./live.js";
import {signIn, signUp} from "./screens/auth.js";
import {credentials} from "./screens/credentials.js";
import {inventory} from "./screens/inventory.js";
import {migration} from "./screens/migration.js";
import {migrations} from "./screens/migrations.js";
import {mountPoints} from "./screens/mount_points.js";
import {overview} from "./screens/overview.js";
import {targets} from "./screens/targets.js";
import {wave} from "./screens/wave.js";
import {waves} from "./screens/waves.js";
import {workload} from "./screens/workload.js";
import {workloads} from "./screens/workloads.js";

const ROUTES = [
  {pattern: /^\/$/, screen: overview, nav: "Overview", href: "/"},
  {pattern: /^\/signin$/, screen: signIn, public: true},
  {pattern: /^\/signup$/, screen: signUp, public: true},
  {pattern: /^\/credentials$/, screen: credentials, nav: "Credentials", href: "/credentials"},
  {pattern: /^\/mount_points$/, screen: mountPoints, nav: "Mount points", href: "/mount_points"},
  {pattern: /^\/workloads$/, screen: workloads, nav: "Workloads", href: "/workloads"},
  {pattern: /^\/workloads\/(\d+)$/, screen: workload, section: "/workloads"},
  {pattern: /^\/targets$/, screen: targets, nav: "Targets", href: "/targets"},
  {pattern: /^\/migrations$/, screen: migrations, nav: "Migrations", href: "/migrations"},
  {pattern: /^\/migrations\/(\d+)$/, screen: migration, section: "/migrations"},
  {pattern: /^\/waves$/, screen: waves, nav: "Waves", href: "/waves"},
  {pattern: /^\/waves\/(\d+)$/, screen: wave, section: "/waves"},
  {pattern: /^\/import$/, screen: inventory, nav: "Import and export", href: "/import"},
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const status = document.getElementById("status");
const liveSign = document.getElementById("live");
let leaving = [];
let pendingMessage = null;
let generation = 0;

/** The place: the hash without its "#", "/" when there is none. */
function here() {
  const hash = location.hash.replace(/^#/, "");
  return hash.startsWith("/") ? hash : "/";
}

export function navigate(to, message = null) {
  pendingMessage = message;
  if (`#${to}` === location.hash) {
    render();
  } else {
    location.hash = to;
  }
}

function say(text) {
  fill(status, text ? h("p", {}, text) : null);
}

function showNav(path) {
  const current = ROUTES.find((route) => route.pattern.test(path));
  const section = current?.section || path;
  fill(nav, h("ul", {}, ROUTES.filter((route) => route.nav).map((route) => {
    return h("li", {}, h("a", {href: `#${route.href}`, "aria-current": route.href === section ? "page" : null}, route.nav));
  })));
}

function showSession() {
  const signedIn = session.signedIn;
  nav.hidden = !signedIn;
  document.getElementById("session").hidden = !signedIn;
  fill(document.getElementById("who"), signedIn ? `Signed in as ${session.username}` : "");
  showLive();
}

const LIVE_SIGNS = {
  connecting: ["live wait", "Live updates: connecting…"],
  up: ["live up", "Live"],
  lost: ["live down", "Live updates lost: reconnecting…"],
};

function showLive() {
  const [className, text] = LIVE_SIGNS[live.state];
  liveSign.className = className;
  fill(liveSign, text);
}

async function render() {
  generation += 1;
  const mine = generation;
  for (const fn of leaving) fn();
  leaving = [];
  const [path, queryText = ""] = here().split("?");
  const route = ROUTES.find((candidate) => candidate.pattern.test(path));
  if (!route) {
    navigate("/");
    return;
  }
  if (!route.public && !session.signedIn) {
    navigate(`/signin?next=${encodeURIComponent(here())}`);
    return;
  }
  if (session.signedIn) live.start();
  say(pendingMessage);
  pendingMessage = null;
  showSession();
  showNav(path);
  const root = h("div", {class: "screen"});
  main.replaceChildren(root);
  main.setAttribute("aria-busy", "true");
  document.title = route.screen.title ? `${route.screen.title} · Migrations console` : "Migrations console";
  let focusTarget = null;
  const ctx = {
    root,
    path,
    params: new URLSearchParams(queryText),
    match: route.pattern.exec(path),
    navigate,
    say,
    here,
    get alive() { return mine === generation; },
    onLeave: (fn) => leaving.push(fn),
    focusLater: (fn) => { focusTarget = fn; },
    setTitle: (title) => { document.title = `${title} · Migrations console`; },
  };
  try {
    await route.screen.render(ctx);
  } catch (error) {
    const text = describe(error);
    if (text !== null && ctx.alive) root.append(h("p", {class: "form-error", role: "alert"}, text));
  }
  if (!ctx.alive) return;
  main.removeAttribute("aria-busy");
  main.dataset.place = here(); // the place this screen shows, once it is ready
  if (focusTarget) focusTarget();
  else root.querySelector("h1")?.focus({preventScroll: true});
}

onSignedOut(() => {
  live.stop();
  const [path] = here().split("?");
  if (path === "/signin") return;
  navigate(`/signin?next=${encodeURIComponent(here())}`, "Your session has ended: sign in again to carry on where you were.");
});

document.getElementById("sign-out").addEventListener("click", () => {
  session.clear();
  live.stop();
  navigate("/signin", "Signed out.");
});

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault(); // the hash is the place: keep it
  main.focus();
});

live.watch(() => showLive());
window.addEventListener("hashchange", render);
render();
