// The overview at /overview: what an operator looks at first. Counts of jobs per
// state (each a link to the list filtered by it) and per kind and state, the last
// hour per minute as a chart, and the way to schedules and dead letters. From
// `GET /api/stats` (API.md 16), refreshed every few seconds while visible.

import { ApiError, getJSON } from "./api.js";
import { minuteChart, minuteTable, totals } from "./chart.js";
import { STATES, h, setText } from "./dom.js";
import { jobsListUrl } from "./origin.js";

const REFRESH_MS = 4000;

/** "1 failed demo.fail job", "3 succeeded jobs": the name a count's link reads as. */
function jobsName(total, ...words) {
  return [total, ...words, total === 1 ? "job" : "jobs"].join(" ");
}

function count(kinds, kind, state) {
  return Number(kinds[kind]?.[state]) || 0;
}

/** One tile per state: the number of retained jobs in it, linking to them. */
function stateTiles(kinds) {
  return h(
    "ul",
    { class: "tiles", "aria-label": "Jobs by state" },
    STATES.map((state) => {
      const total = Object.keys(kinds).reduce((sum, kind) => sum + count(kinds, kind, state), 0);
      return h(
        "li",
        {},
        h(
          "a",
          {
            href: jobsListUrl({ state }),
            class: `tile tile-${state}`,
            "data-state": state,
            "aria-label": jobsName(total, state),
          },
          h("span", { class: "tile-count" }, String(total)),
          h("span", { class: "tile-label" }, state),
        ),
      );
    }),
  );
}

/** Kinds × states (the kinds that have jobs); each non-zero count links to those jobs. */
function kindTable(kinds) {
  const all = Object.keys(kinds).sort();
  const names = all.filter((kind) => STATES.some((state) => count(kinds, kind, state) > 0));
  if (names.length === 0) return h("p", { class: "muted" }, "No jobs yet. Start one with New job.");
  const idle = all.length - names.length;
  const cell = (kind, state) => {
    const value = count(kinds, kind, state);
    if (value === 0) return h("td", { class: "num zero", "data-label": state }, "0");
    return h(
      "td",
      { class: "num", "data-label": state },
      h(
        "a",
        {
          href: jobsListUrl({ kind, state }),
          "aria-label": jobsName(value, state, kind),
        },
        String(value),
      ),
    );
  };
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "kinds" },
      h("caption", { class: "sr-only" }, "Jobs by kind and state"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Kind"),
          STATES.map((state) => h("th", { scope: "col", class: "num" }, state)),
          h("th", { scope: "col", class: "num" }, "all"),
        ),
      ),
      h(
        "tbody",
        {},
        names.map((kind) =>
          h(
            "tr",
            { "data-kind": kind },
            h("th", { scope: "row" }, h("a", { href: jobsListUrl({ kind }) }, kind)),
            STATES.map((state) => cell(kind, state)),
            h(
              "td",
              { class: "num total", "data-label": "all" },
              String(STATES.reduce((sum, state) => sum + count(kinds, kind, state), 0)),
            ),
          ),
        ),
      ),
    ),
    idle > 0
      ? h("p", { class: "muted" }, `${idle} other ${idle === 1 ? "kind has" : "kinds have"} no jobs.`)
      : null,
  );
}

function legend() {
  const item = (name, text) =>
    h("li", {}, h("span", { class: `key key-${name}`, "aria-hidden": "true" }), text);
  return h(
    "ul",
    { class: "legend" },
    item("enqueued", "enqueued (line)"),
    item("succeeded", "succeeded"),
    item("failed", "failed"),
  );
}

/** Mount the overview into `root`; returns the cleanup function. */
export function overviewView(root) {
  const controller = new AbortController();
  let timer = null;
  let inflight = false;
  let closed = false;
  let perMinute = [];

  const heading = h("h1", { tabindex: "-1" }, "Overview");
  const note = h("p", { class: "list-status", role: "status" }, "Loading…");
  const tiles = h("div", { class: "tiles-slot" });
  const chartSlot = h("div", { class: "chart-slot" });
  const tableSlot = h("div", {});
  const hourLine = h("p", { class: "hour-line" });
  const kindsSlot = h("div", {});
  const updated = h("p", { class: "muted updated" });
  root.replaceChildren(
    h("article", { class: "overview" }, [
      heading,
      note,
      tiles,
      h(
        "nav",
        { class: "quick-links", "aria-label": "Go to" },
        h("a", { href: jobsListUrl({ state: "running" }) }, "Running jobs"),
        h("a", { href: jobsListUrl({ state: "failed" }) }, "Failed jobs"),
        h("a", { href: "/schedules" }, "Schedules"),
        h("a", { href: "/dead-letters" }, "Dead letters"),
      ),
      h(
        "section",
        { class: "panel", "aria-labelledby": "hour-title" },
        h("h2", { id: "hour-title" }, "The last hour"),
        hourLine,
        chartSlot,
        legend(),
        tableSlot,
      ),
      h(
        "section",
        { class: "panel", "aria-labelledby": "kinds-title" },
        h("h2", { id: "kinds-title" }, "Jobs by kind"),
        h("p", { class: "muted" }, "Jobs still kept (until their retention ends)."),
        kindsSlot,
      ),
      updated,
    ]),
  );
  document.title = "Overview · asyncproc";

  // The chart is drawn at the width it is shown at: its text stays readable on a phone.
  function drawChart() {
    const width = Math.round(chartSlot.clientWidth) || 600;
    chartSlot.replaceChildren(minuteChart(perMinute, width));
  }

  // Redrawn only when the numbers changed, and a focused link is focused again
  // after: a keyboard user's place (or a chart tooltip) survives the refresh.
  function redraw(slot, content) {
    const focused = slot.contains(document.activeElement) ? document.activeElement : null;
    const href = focused?.getAttribute("href");
    slot.replaceChildren(content);
    if (href) {
      const again = [...slot.querySelectorAll("a[href]")].find(
        (link) => link.getAttribute("href") === href,
      );
      (again ?? heading).focus();
    }
  }

  let drawn = { kinds: "", perMinute: "" };

  function show(stats) {
    const kinds = stats.kinds ?? {};
    const next = { kinds: JSON.stringify(kinds), perMinute: JSON.stringify(stats.perMinute) };
    if (next.kinds !== drawn.kinds) {
      redraw(tiles, stateTiles(kinds));
      redraw(kindsSlot, kindTable(kinds));
    }
    const chartChanged = next.perMinute !== drawn.perMinute;
    drawn = next;
    perMinute = Array.isArray(stats.perMinute) ? stats.perMinute : [];
    const sum = totals(perMinute);
    setText(
      hourLine,
      sum.enqueued + sum.succeeded + sum.failed === 0
        ? "Nothing was enqueued or finished in the last hour."
        : `${sum.enqueued} enqueued, ${sum.succeeded} succeeded, ${sum.failed} failed.`,
    );
    if (chartChanged) {
      drawChart();
      // Kept open across refreshes when the reader opened it.
      const open = tableSlot.querySelector("details")?.open ?? false;
      const table = minuteTable(perMinute);
      table.open = open;
      tableSlot.replaceChildren(table);
    }
    setText(updated, `Updated ${new Date().toLocaleTimeString()}; refreshes every few seconds.`);
  }

  async function refresh() {
    if (closed || inflight) return;
    inflight = true;
    try {
      show(await getJSON("/api/stats", { signal: controller.signal }));
      setText(note, "");
    } catch (error) {
      if (controller.signal.aborted) return;
      const missing = error instanceof ApiError && error.status === 404;
      setText(
        note,
        missing
          ? "This server does not report statistics."
          : `Could not load the statistics (${error.message}); retrying…`,
      );
    } finally {
      inflight = false;
    }
  }

  function schedule() {
    if (closed) return;
    timer = setTimeout(async () => {
      // A hidden tab needs no fresh numbers (it catches up when shown).
      if (!document.hidden) await refresh();
      schedule();
    }, REFRESH_MS);
  }

  const onVisible = () => {
    if (!document.hidden) refresh();
  };
  const onResize = () => {
    if (perMinute.length > 0) drawChart();
  };
  document.addEventListener("visibilitychange", onVisible);
  window.addEventListener("resize", onResize);
  refresh();
  schedule();

  return () => {
    closed = true;
    controller.abort();
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
    window.removeEventListener("resize", onResize);
  };
}
