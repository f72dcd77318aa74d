// The jobs list at /: newest first, filtered by kind and state (the form),
// by key and by parent (from the URL: the job view links here), paged by
// cursor, kept up to date while it is open.

import { getJSON, serverNow, watchJob } from "./api.js";
import { progressBar } from "./bar.js";
import {
  STATES,
  formatDateTime,
  formatDuration,
  formatPercent,
  h,
  isTerminal,
  jobDuration,
  setText,
  shortId,
} from "./dom.js";
import { jobsListUrl } from "./origin.js";

const PAGE_SIZE = 25;
// A gentle refresh finds new jobs; the few active jobs on screen are also
// long-polled so their progress moves without a request storm (the browser
// allows six connections per server, and the page keeps some for itself).
const REFRESH_MS = 5000;
const WATCHED = 3;
const WATCH_GAP_MS = 1000;

// The filters of the list, in URL order; key and parent have no form field.
const FILTERS = ["kind", "state", "key", "parent"];

function listUrl(query) {
  return jobsListUrl(Object.fromEntries([...FILTERS, "cursor"].map((name) => [name, query[name]])));
}

/** "Key k-1 ✕" and "Started by job 1a2b… ✕": the URL-only filters, each removable. */
function urlFilters(query) {
  const chips = [];
  const without = (name) => listUrl({ ...query, [name]: "", cursor: "" });
  if (query.key) {
    chips.push(
      h(
        "li",
        { class: "chip" },
        "Key ",
        h("code", {}, query.key),
        h("a", { href: without("key"), class: "chip-remove", "aria-label": "Remove the key filter" }, "✕"),
      ),
    );
  }
  if (query.parent) {
    chips.push(
      h(
        "li",
        { class: "chip" },
        "Started by ",
        h("a", { href: `/jobs/${encodeURIComponent(query.parent)}` }, "job ", h("code", {}, shortId(query.parent))),
        h(
          "a",
          { href: without("parent"), class: "chip-remove", "aria-label": "Remove the parent filter" },
          "✕",
        ),
      ),
    );
  }
  if (chips.length === 0) return null;
  return h(
    "div",
    { class: "url-filters" },
    h("span", { class: "muted", id: "url-filters-label" }, "Showing only:"),
    h("ul", { "aria-labelledby": "url-filters-label" }, chips),
  );
}

function jobRow(status) {
  const bar = progressBar(`Progress of ${status.kind} ${shortId(status.id)}`, { small: true });
  const badge = h("span", { class: "badge" });
  const percent = h("span", { class: "percent" });
  const step = h("span", { class: "biz-step" });
  const created = h("time", {});
  const duration = h("span", {});
  const link = h(
    "a",
    { href: `/jobs/${encodeURIComponent(status.id)}`, class: "job-link" },
    h("span", { class: "kind" }, status.kind),
    " ",
    h("code", { class: "id" }, shortId(status.id)),
  );
  const el = h(
    "tr",
    {},
    h("td", { class: "col-job" }, link),
    h("td", { class: "col-state" }, badge),
    h("td", { class: "col-progress" }, h("div", { class: "bar-row" }, bar.el, percent), step),
    h("td", { class: "col-duration" }, duration),
    h("td", { class: "col-created" }, created),
  );
  let version = -1;

  // A running job's duration grows between changes: redrawn on every refresh.
  function showDuration(job) {
    const took = jobDuration(job, serverNow());
    setText(duration, took === null ? "—" : formatDuration(took));
    duration.title = isTerminal(job) || took === null ? "" : "running so far";
    // On a phone the column has no header in sight: the card says "took 3.2 s".
    const label = took === null ? "" : isTerminal(job) ? "took" : "running for";
    if (duration.dataset.label !== label) duration.dataset.label = label;
  }

  function update(next) {
    if (next.version < version) return;
    showDuration(next);
    if (next.version === version) return;
    version = next.version;
    el.dataset.state = next.state;
    setText(badge, next.state);
    badge.className = `badge state-${next.state}`;
    bar.update(next);
    const value = next.progress?.percent;
    setText(percent, value === null || value === undefined ? "" : formatPercent(value));
    setText(step, next.progress?.bizStep ?? "");
    setText(created, formatDateTime(next.createdAt));
    created.setAttribute("datetime", next.createdAt);
  }
  update(status);
  return { el, update };
}

function select(label, name, options, value) {
  const id = `filter-${name}`;
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    h(
      "select",
      { id, name },
      options.map(([optionValue, text]) =>
        h("option", { value: optionValue, selected: optionValue === (value ?? "") }, text),
      ),
    ),
  );
}

/** Mount the jobs list into `root`; returns the cleanup function. */
export function listView(root, { query: initial }) {
  const controller = new AbortController();
  const rows = new Map();
  const watchers = new Map();
  let query = {
    kind: initial.kind ?? "",
    state: initial.state ?? "",
    key: initial.key ?? "",
    parent: initial.parent ?? "",
    cursor: initial.cursor ?? "",
  };
  // Cursors of the pages before this one, kept in the history entry so Newer
  // and the browser's Back both work.
  let cursors = Array.isArray(history.state?.cursors) ? history.state.cursors : [];
  let next = null;
  let inflight = null;
  let timer = null;
  let closed = false;

  const kindSelect = select("Kind", "kind", [["", "All kinds"]], query.kind);
  const stateSelect = select(
    "State",
    "state",
    [["", "All states"], ...STATES.map((state) => [state, state])],
    query.state,
  );
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter jobs" },
    kindSelect,
    stateSelect,
  );
  const status = h("p", { class: "list-status", role: "status" });
  const tbody = h("tbody", {});
  const table = h(
    "table",
    { class: "jobs" },
    h("caption", { class: "sr-only" }, "Jobs, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Job", "State", "Progress", "Duration", "Created"].map((name) =>
          h("th", { scope: "col" }, name),
        ),
      ),
    ),
    tbody,
  );
  const heading = h("h1", { tabindex: "-1" }, "Jobs");
  // The key and parent filters, redrawn with each query so their Remove links keep the rest.
  const chips = h("div", {}, urlFilters(query));
  const newest = h("button", { type: "button", class: "secondary", hidden: true }, "Newest");
  const newer = h("button", { type: "button", class: "secondary", hidden: true }, "← Newer");
  const older = h("button", { type: "button", class: "secondary", hidden: true }, "Older →");
  const pager = h("nav", { class: "pager", "aria-label": "Pages" }, newest, newer, older);

  root.replaceChildren(
    h("div", { class: "list-head" }, heading, h("a", { href: "/new", class: "button" }, "New job")),
    filters,
    chips,
    status,
    h("div", { class: "table-wrap" }, table),
    pager,
  );
  document.title = "Jobs · asyncproc";

  function stopWatchers() {
    for (const stop of watchers.values()) stop();
    watchers.clear();
  }

  // Filters and paging change the list in place (focus stays where the user
  // is) and leave a history entry, so the URL can be shared and Back works.
  function go(nextQuery, stack) {
    query = nextQuery;
    cursors = stack;
    history.pushState({ cursors }, "", listUrl(query));
    chips.replaceChildren(urlFilters(query) ?? "");
    stopWatchers();
    rows.clear();
    tbody.replaceChildren();
    setText(status, "Loading…");
    refresh();
  }

  filters.addEventListener("change", () => {
    const data = new FormData(filters);
    go({ ...query, kind: data.get("kind"), state: data.get("state"), cursor: "" }, []);
  });
  filters.addEventListener("submit", (event) => event.preventDefault());
  newest.addEventListener("click", () => go({ ...query, cursor: "" }, []));
  newer.addEventListener("click", () => {
    go({ ...query, cursor: cursors[cursors.length - 1] ?? "" }, cursors.slice(0, -1));
  });
  older.addEventListener("click", () => {
    if (next) go({ ...query, cursor: next }, [...cursors, query.cursor]);
  });

  getJSON("/api/kinds", { signal: controller.signal })
    .then((kinds) => {
      const selectEl = kindSelect.querySelector("select");
      for (const kind of kinds) {
        selectEl.append(
          h("option", { value: kind.kind, selected: kind.kind === query.kind }, kind.kind),
        );
      }
    })
    .catch(() => {
      // The list works without the kind names; the select keeps "All kinds".
    });

  function watch(items) {
    const active = items.filter((item) => !isTerminal(item)).slice(0, WATCHED);
    const wanted = new Set(active.map((item) => item.id));
    for (const [id, stop] of watchers) {
      if (!wanted.has(id)) {
        stop();
        watchers.delete(id);
      }
    }
    for (const item of active) {
      if (watchers.has(item.id)) continue;
      const stop = watchJob(item.id, {
        sse: false,
        minGap: WATCH_GAP_MS,
        onStatus: (status) => {
          rows.get(status.id)?.update(status);
          if (isTerminal(status)) watchers.delete(status.id);
        },
        onGone: () => watchers.delete(item.id),
      });
      watchers.set(item.id, stop);
    }
  }

  function show(items) {
    const focused = document.activeElement;
    const seen = new Set();
    items.forEach((item, index) => {
      seen.add(item.id);
      let row = rows.get(item.id);
      if (row) row.update(item);
      else {
        row = jobRow(item);
        rows.set(item.id, row);
      }
      const there = tbody.children[index] ?? null;
      if (there !== row.el) tbody.insertBefore(row.el, there);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.el.remove();
        rows.delete(id);
      }
    }
    // Moving a row blurs whatever it held; give keyboard users their place back.
    const lost = focused instanceof HTMLElement && document.activeElement !== focused;
    if (lost && focused.isConnected) focused.focus();
  }

  function showPager() {
    const focused = document.activeElement;
    older.hidden = !next;
    newest.hidden = !query.cursor;
    newer.hidden = !query.cursor || cursors.length === 0;
    // A pager button that just hid itself must not drop keyboard focus on the floor.
    if (focused instanceof HTMLElement && focused.closest(".pager") && focused.hidden) {
      (pager.querySelector("button:not([hidden])") ?? heading).focus();
    }
  }

  async function refresh() {
    if (closed) return;
    inflight?.abort();
    const request = new AbortController();
    inflight = request;
    const abortAll = () => request.abort();
    controller.signal.addEventListener("abort", abortAll);
    try {
      const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
      for (const name of [...FILTERS, "cursor"]) {
        if (query[name]) params.set(name, query[name]);
      }
      const page = await getJSON(`/api/jobs?${params}`, { signal: request.signal });
      next = page.next;
      show(page.items);
      watch(page.items);
      showPager();
      if (page.items.length === 0) {
        setText(status, query.cursor ? "No older jobs." : "No jobs match. Start one with New job.");
      } else {
        setText(status, "");
      }
    } catch (error) {
      if (request.signal.aborted) return;
      setText(status, `Could not load the jobs (${error.message}); retrying…`);
    } finally {
      controller.signal.removeEventListener("abort", abortAll);
      if (inflight === request) inflight = null;
    }
  }

  function schedule() {
    if (closed) return;
    timer = setTimeout(async () => {
      // A hidden tab needs no fresh rows (it catches up when shown), and a
      // slow answer is not piled on.
      if (!document.hidden && inflight === null) await refresh();
      schedule();
    }, REFRESH_MS);
  }

  const onVisible = () => {
    if (!document.hidden && inflight === null) refresh();
  };
  document.addEventListener("visibilitychange", onVisible);
  refresh();
  schedule();

  return () => {
    closed = true;
    controller.abort();
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
    stopWatchers();
  };
}
