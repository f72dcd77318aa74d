// One schedule on the schedules view (API.md section 12): what it starts and
// when, its next run counting down, Pause/Resume and Run now, recent runs.
// The card is built once and updated in place, so focus and an open
// <details> survive the view's refreshes.

import { serverNow } from "./api.js";
import { formatEvery, formatRelative, formatTime, h, setText } from "./dom.js";

// Recent runs shown at once; the rest (the server keeps 20) fold away.
const RECENT_SHOWN = 5;

const OUTCOME_CLASS = {
  created: "state-succeeded",
  skipped: "state-stopped",
  refused: "state-failed",
};

/** The DOM id of a schedule's card (names are `[A-Za-z0-9._-]`, valid in ids). */
export function cardId(name) {
  return `schedule-${name}`;
}

/** "cron 0 2 * * *" or "every 15 min", then the time zone. */
export function describeWhen(schedule) {
  const zone = schedule.timezone || "UTC";
  if (schedule.cron) return [h("code", {}, schedule.cron), ` (cron, ${zone})`];
  if (schedule.every !== null && schedule.every !== undefined) {
    return [`every ${formatEvery(schedule.every)}`, ` (${zone})`];
  }
  return [`(${zone})`];
}

function refusal(run) {
  const error = run.error;
  if (!error) return "refused";
  if (typeof error === "string") return error;
  return error.message ?? error.error?.message ?? error.code ?? JSON.stringify(error);
}

function outcomeBadge(outcome) {
  return h("span", { class: `badge ${OUTCOME_CLASS[outcome] ?? ""}` }, outcome);
}

function runItem(run) {
  const when = h("time", { datetime: run.at }, formatTime(run.at));
  // The time names the link: unlike "job", it tells the runs apart.
  const at = run.jobId
    ? h("a", { href: `/jobs/${encodeURIComponent(run.jobId)}`, title: `Job ${run.jobId}` }, when)
    : when;
  const reason = run.outcome === "refused" ? h("span", { class: "run-error" }, refusal(run)) : null;
  return h("li", { class: "run" }, at, outcomeBadge(run.outcome), reason);
}

/**
 * A card for one schedule: `el`, `update(schedule)` with a newer answer,
 * `tick()` to move the relative times, `busy(flag)`, `say(text)` for a problem.
 * `onPause(name, paused)` and `onRun(name)` do the calls.
 */
export function scheduleCard(schedule, { onPause, onRun }) {
  const name = schedule.name;
  const titleId = `${cardId(name)}-title`;
  const stateBadge = h("span", { class: "badge" });
  const kind = h("dd", {});
  const when = h("dd", {});
  const nextAt = h("time", {});
  const nextIn = h("span", { class: "relative" });
  const next = h("dd", { class: "next-run" }, nextAt, " ", nextIn);
  const last = h("dd", { class: "last-run" });
  const keyTerm = h("dt", {}, "Key");
  const key = h("dd", {});
  const source = h("dd", {});
  const pause = h("button", { type: "button", class: "secondary" }, "Pause");
  const run = h("button", { type: "button" }, "Run now");
  const notice = h("p", { class: "notice problem", role: "status" });
  const content = h("pre", { class: "content-json", tabindex: "0" });
  const shownRuns = h("ol", { class: "runs" });
  const moreRuns = h("ol", { class: "runs" });
  const moreSummary = h("summary", {});
  const more = h("details", { class: "more-runs" }, moreSummary, moreRuns);
  const noRuns = h("p", { class: "muted" }, "No runs yet.");

  const el = h(
    "article",
    { class: "schedule", id: cardId(name), "aria-labelledby": titleId },
    h("div", { class: "schedule-head" }, h("h2", { id: titleId }, name), stateBadge),
    h(
      "dl",
      { class: "meta" },
      h("dt", {}, "Kind"),
      kind,
      h("dt", {}, "When"),
      when,
      h("dt", {}, "Next run"),
      next,
      h("dt", {}, "Last run"),
      last,
      keyTerm,
      key,
      h("dt", {}, "Source"),
      source,
    ),
    h("details", { class: "content" }, h("summary", {}, "Content"), content),
    h("div", { class: "actions" }, pause, run),
    notice,
    h(
      "section",
      { class: "recent", "aria-label": `Recent runs of ${name}` },
      h("h3", {}, "Recent runs"),
      noRuns,
      shownRuns,
      more,
    ),
  );

  let current = null;
  let drawnRuns = "";

  pause.addEventListener("click", () => {
    if (current && pause.getAttribute("aria-disabled") !== "true") onPause(name, current.paused);
  });
  run.addEventListener("click", () => {
    if (run.getAttribute("aria-disabled") !== "true") onRun(name);
  });

  function drawRuns(recent) {
    const drawn = JSON.stringify(recent);
    if (drawn === drawnRuns) return;
    drawnRuns = drawn;
    noRuns.hidden = recent.length > 0;
    shownRuns.replaceChildren(...recent.slice(0, RECENT_SHOWN).map(runItem));
    const rest = recent.slice(RECENT_SHOWN);
    more.hidden = rest.length === 0;
    setText(moreSummary, `${rest.length} earlier ${rest.length === 1 ? "run" : "runs"}`);
    moreRuns.replaceChildren(...rest.map(runItem));
  }

  function drawLast(schedule) {
    const latest = schedule.recent?.[0];
    const at = latest?.at ?? schedule.lastRunAt;
    if (!at) {
      last.replaceChildren("never");
      return;
    }
    last.replaceChildren(
      h("time", { datetime: at, "data-at": at }, formatTime(at)),
      " ",
      h("span", { class: "relative", "data-relative": at }),
      latest ? " " : null,
      latest ? outcomeBadge(latest.outcome) : null,
    );
  }

  function tick() {
    if (!current) return;
    const now = serverNow();
    if (current.paused || !current.nextRunAt) {
      setText(nextIn, "");
    } else {
      const left = Date.parse(current.nextRunAt) - now;
      setText(nextIn, left > 0 ? `(${formatRelative(left)})` : "(due now)");
    }
    for (const span of el.querySelectorAll("[data-relative]")) {
      setText(span, `(${formatRelative(Date.parse(span.dataset.relative) - now)})`);
    }
  }

  function update(next) {
    const before = current;
    current = next;
    el.dataset.paused = String(Boolean(next.paused));
    setText(stateBadge, next.paused ? "Paused" : "Active");
    stateBadge.className = `badge ${next.paused ? "state-stopped" : "state-running"}`;
    setText(pause, next.paused ? "Resume" : "Pause");
    setText(kind, next.kind);
    if (!before || before.cron !== next.cron || before.every !== next.every || before.timezone !== next.timezone) {
      when.replaceChildren(...describeWhen(next));
    }
    if (next.paused) {
      setText(nextAt, "paused: none until resumed");
      nextAt.removeAttribute("datetime");
    } else if (next.nextRunAt) {
      setText(nextAt, formatTime(next.nextRunAt));
      nextAt.setAttribute("datetime", next.nextRunAt);
    } else {
      setText(nextAt, "none");
      nextAt.removeAttribute("datetime");
    }
    if (!before || JSON.stringify(before.recent) !== JSON.stringify(next.recent) || before.lastRunAt !== next.lastRunAt) {
      drawLast(next);
    }
    keyTerm.hidden = !next.key;
    key.hidden = !next.key;
    setText(key, next.key ?? "");
    setText(source, next.source === "config" ? "the configuration file" : "the API");
    setText(content, JSON.stringify(next.content, null, 2));
    drawRuns(next.recent ?? []);
    tick();
  }

  function busy(flag) {
    for (const button of [pause, run]) {
      if (flag) button.setAttribute("aria-disabled", "true");
      else button.removeAttribute("aria-disabled");
    }
  }

  function say(text) {
    setText(notice, text);
  }

  update(schedule);
  return { el, update, tick, busy, say };
}
