// The "Started jobs" section of a job view: the jobs a selection (or any job
// that starts others: a compensated job) started, with their state and key.
// It stays hidden for a job that started none.

import { getJSON } from "./api.js";
import { h, isTerminal, setText, shortId } from "./dom.js";
import { jobsListUrl } from "./origin.js";

const SHOWN = 20;
// While the parent or a shown child is still moving; a plain job that starts
// nothing costs one small request per interval while it runs.
const REFRESH_MS = 3000;

function childRow(status) {
  const badge = h("span", { class: `badge state-${status.state}` }, status.state);
  return h(
    "tr",
    { "data-state": status.state },
    h("td", { class: "col-key" }, status.key ? h("code", {}, status.key) : h("span", { class: "muted" }, "no key")),
    h(
      "td",
      { class: "col-job" },
      h(
        "a",
        { href: `/jobs/${encodeURIComponent(status.id)}`, class: "job-link" },
        h("span", { class: "kind" }, status.kind),
        " ",
        h("code", { class: "id" }, shortId(status.id)),
      ),
    ),
    h("td", { class: "col-state" }, badge),
  );
}

/**
 * The section for the children of `parentId`: `el` to place in the view,
 * `follow(status)` to call with each status of the parent, `close()`.
 */
export function startedJobs(parentId, { signal }) {
  const count = h("p", { class: "muted children-count" });
  const tbody = h("tbody", {});
  const all = h("a", { href: jobsListUrl({ parent: parentId }) }, "See all started jobs in the jobs list");
  const el = h(
    "section",
    { class: "children", "aria-labelledby": "children-title", hidden: true },
    h("h2", { id: "children-title" }, "Started jobs"),
    count,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "children-table" },
        h("caption", { class: "sr-only" }, "Jobs this job started, newest first"),
        h(
          "thead",
          {},
          h("tr", {}, ["Key", "Job", "State"].map((name) => h("th", { scope: "col" }, name))),
        ),
        tbody,
      ),
    ),
    h("p", {}, all),
  );

  let started = false;
  let parentDone = false;
  let moving = true;
  let timer = null;
  let inflight = false;
  let again = false;
  let shown = "";

  async function load() {
    if (signal.aborted) return;
    // A look asked for during a request is taken after it: that request may
    // have left before the parent's last child was stored.
    if (inflight) {
      again = true;
      return;
    }
    inflight = true;
    clearTimeout(timer);
    timer = null;
    try {
      const page = await getJSON(
        `/api/jobs?parent=${encodeURIComponent(parentId)}&limit=${SHOWN}`,
        { signal },
      );
      show(page);
    } catch {
      // The section is extra: the next round tries again.
    } finally {
      inflight = false;
    }
    if (again) {
      again = false;
      load();
    } else {
      schedule();
    }
  }

  function show(page) {
    const items = page.items;
    moving = !parentDone || items.some((item) => !isTerminal(item));
    el.hidden = items.length === 0;
    const total = `${items.length} ${items.length === 1 ? "job" : "jobs"}`;
    setText(count, page.next ? `The newest ${items.length}:` : `${total}:`);
    // Rebuilt only when something changed, so a reader's place is kept.
    const drawn = JSON.stringify(items.map((item) => [item.id, item.version]));
    if (drawn !== shown) {
      shown = drawn;
      tbody.replaceChildren(...items.map(childRow));
    }
  }

  function schedule() {
    if (signal.aborted || !moving) return;
    timer = setTimeout(() => {
      timer = null;
      if (document.hidden) schedule();
      else load();
    }, REFRESH_MS);
  }

  /** Called with each status of the parent: the first one and its end start a fresh look. */
  function follow(status) {
    const finishing = isTerminal(status) && !parentDone;
    parentDone = isTerminal(status);
    if (!started || finishing) {
      started = true;
      moving = true;
      load();
    }
  }

  signal.addEventListener("abort", () => clearTimeout(timer));
  return { el, follow };
}
