// The schedules view at /schedules: every schedule (GET /api/schedules) as a
// card, refreshed every few seconds while the view is open; Pause/Resume and
// Run now (which lands on the started job's page). With no schedules it says
// how to add one.

import { ApiError, getJSON, postJSON } from "./api.js";
import { h, setText } from "./dom.js";
import { cardId, scheduleCard } from "./schedulecard.js";

const REFRESH_MS = 4000;
const TICK_MS = 1000;

function schedulePath(name, suffix = "") {
  return `/api/schedules/${encodeURIComponent(name)}${suffix}`;
}

function emptyState() {
  const toml = [
    "[[schedules]]",
    'name = "nightly-report"',
    'kind = "demo.report"',
    "content = { rows = 10 }",
    'cron = "0 2 * * *"',
    'timezone = "Europe/Budapest"',
  ].join("\n");
  const curl = [
    `curl -X PUT ${location.origin}/api/schedules/every-minute \\`,
    "  -H 'Content-Type: application/json' \\",
    `  -d '{"kind": "demo.count", "content": {"n": 5}, "every": 60}'`,
  ].join("\n");
  return h(
    "section",
    { class: "empty", "aria-labelledby": "empty-title" },
    h("h2", { id: "empty-title" }, "No schedules yet"),
    h(
      "p",
      {},
      "A schedule starts jobs of one kind by a cron expression or at a fixed interval. ",
      "Declare one in the configuration file as a ",
      h("code", {}, "[[schedules]]"),
      " table:",
    ),
    h("pre", { class: "example", tabindex: "0" }, h("code", {}, toml)),
    h("p", {}, "or add one through the API with ", h("code", {}, "PUT /api/schedules/{name}"), ":"),
    h("pre", { class: "example", tabindex: "0" }, h("code", {}, curl)),
  );
}

/** Mount the schedules view into `root`; returns the cleanup function. */
export function schedulesView(root, { navigate }) {
  const controller = new AbortController();
  const cards = new Map();
  let timer = null;
  let ticker = null;
  let inflight = null;
  let closed = false;
  let first = true;

  const heading = h("h1", { tabindex: "-1" }, "Schedules");
  const status = h("p", { class: "list-status", role: "status" }, "Loading…");
  const list = h("div", { class: "schedules" });
  const empty = emptyState();
  empty.hidden = true;
  root.replaceChildren(heading, status, list, empty);
  document.title = "Schedules · asyncproc";

  function upsert(schedule) {
    let card = cards.get(schedule.name);
    if (card) card.update(schedule);
    else {
      card = scheduleCard(schedule, { onPause: togglePause, onRun: runNow });
      cards.set(schedule.name, card);
    }
    return card;
  }

  function show(items) {
    const focused = document.activeElement;
    const seen = new Set();
    items.forEach((schedule, index) => {
      seen.add(schedule.name);
      const card = upsert(schedule);
      const there = list.children[index] ?? null;
      if (there !== card.el) list.insertBefore(card.el, there);
    });
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.el.remove();
        cards.delete(name);
      }
    }
    empty.hidden = items.length > 0;
    // Moving a card blurs whatever it held; give keyboard users their place back.
    if (focused instanceof HTMLElement && focused.isConnected && document.activeElement !== focused) {
      focused.focus();
    }
  }

  // /schedules#schedule-x (a job's "Started by schedule x" link) points at one card.
  function reveal() {
    const target = decodeURIComponent(location.hash.slice(1));
    const card = target ? document.getElementById(target) : null;
    if (!card || !card.classList.contains("schedule")) return;
    card.classList.add("target");
    card.scrollIntoView({ block: "start" });
  }

  async function refresh() {
    if (closed) return;
    inflight?.abort();
    const request = new AbortController();
    inflight = request;
    const abortAll = () => request.abort();
    controller.signal.addEventListener("abort", abortAll);
    try {
      const page = await getJSON("/api/schedules", { signal: request.signal });
      show(page.items);
      setText(status, "");
      if (first) {
        first = false;
        reveal();
      }
    } catch (error) {
      if (request.signal.aborted) return;
      setText(status, `Could not load the schedules (${error.message}); retrying…`);
    } finally {
      controller.signal.removeEventListener("abort", abortAll);
      if (inflight === request) inflight = null;
    }
  }

  async function togglePause(name, paused) {
    const card = cards.get(name);
    card.busy(true);
    card.say("");
    try {
      const action = paused ? "/resume" : "/pause";
      const answer = await postJSON(schedulePath(name, action), {}, { signal: controller.signal });
      // A list fetched before this answer would show the old state again.
      inflight?.abort();
      card.update(answer);
    } catch (error) {
      if (controller.signal.aborted) return;
      card.say(`Could not ${paused ? "resume" : "pause"} ${name}: ${error.message}`);
      if (error instanceof ApiError && error.status === 404) refresh();
    } finally {
      card.busy(false);
    }
  }

  async function runNow(name) {
    const card = cards.get(name);
    card.busy(true);
    card.say("");
    try {
      const job = await postJSON(schedulePath(name, "/trigger"), {}, { signal: controller.signal });
      navigate(`/jobs/${encodeURIComponent(job.id)}`);
    } catch (error) {
      if (controller.signal.aborted) return;
      card.say(`Could not start ${name}: ${error.message}`);
      card.busy(false);
    }
  }

  function schedule() {
    if (closed) return;
    timer = setTimeout(async () => {
      // A hidden tab needs no fresh cards (it catches up when shown).
      if (!document.hidden && inflight === null) await refresh();
      schedule();
    }, REFRESH_MS);
  }

  const onVisible = () => {
    if (!document.hidden && inflight === null) refresh();
  };
  document.addEventListener("visibilitychange", onVisible);
  ticker = setInterval(() => {
    for (const card of cards.values()) card.tick();
  }, TICK_MS);
  refresh();
  schedule();

  return () => {
    closed = true;
    controller.abort();
    clearTimeout(timer);
    clearInterval(ticker);
    document.removeEventListener("visibilitychange", onVisible);
  };
}
