// The page's entry point: a small history.pushState router over six views.
//   /overview    counts per kind and state, the last hour as a chart
//   /            the jobs list
//   /jobs/{id}   one job, live
//   /new         the New job form
//   /schedules   the schedules, their next and recent runs
//   /dead-letters   what could not run, to requeue or delete
// The server answers each of these URLs with index.html, so any of them can
// be pasted, bookmarked and reloaded.

import { h } from "./dom.js";
import { listView } from "./joblist.js";
import { jobView } from "./jobview.js";
import { newJobView } from "./newjob.js";
import { overviewView } from "./overview.js";
import { schedulesView } from "./schedules.js";
import { deadLettersView } from "./deadletters.js";

const routes = [
  [/^\/overview$/, overviewView],
  [/^\/$/, listView],
  [/^\/jobs\/([^/]+)$/, jobView, ["id"]],
  [/^\/new$/, newJobView],
  [/^\/schedules$/, schedulesView],
  [/^\/dead-letters$/, deadLettersView],
];

const main = document.getElementById("main");
let cleanup = null;

function notFound(root) {
  document.title = "Not found · asyncproc";
  root.replaceChildren(
    h("h1", { tabindex: "-1" }, "Page not found"),
    h("p", {}, h("a", { href: "/" }, "See all jobs")),
  );
  return null;
}

function match(pathname) {
  for (const [pattern, view, names = []] of routes) {
    const found = pattern.exec(pathname);
    if (!found) continue;
    const params = {};
    names.forEach((name, index) => {
      params[name] = decodeURIComponent(found[index + 1]);
    });
    return { view, params };
  }
  return { view: notFound, params: {} };
}

function markNavigation(pathname) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    const here =
      link.dataset.nav === pathname || (link.dataset.nav === "/" && pathname.startsWith("/jobs/"));
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function render({ focus = false } = {}) {
  cleanup?.();
  cleanup = null;
  const { view, params } = match(location.pathname);
  const query = Object.fromEntries(new URLSearchParams(location.search));
  markNavigation(location.pathname);
  cleanup = view(main, { params, query, navigate }) ?? null;
  // After an in-page navigation, move focus to the new heading so keyboard
  // and screen-reader users start at the top of the new view.
  if (focus) main.querySelector("h1")?.focus({ preventScroll: false });
}

/** Go to a page URL without reloading; `replace` keeps the history entry. */
export function navigate(url, { replace = false, state = null } = {}) {
  if (replace) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
  window.scrollTo(0, 0);
  render({ focus: true });
}

function isPage(pathname) {
  return routes.some(([pattern]) => pattern.test(pathname));
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download")) return;
  if (link.getAttribute("href").startsWith("#")) return;
  if (link.origin !== location.origin || !isPage(link.pathname)) return;
  event.preventDefault();
  // The hash goes along: /schedules#schedule-x points at one schedule.
  navigate(link.pathname + link.search + link.hash);
});

window.addEventListener("popstate", () => render({ focus: true }));
render();
