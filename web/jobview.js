// The job view at /jobs/{id}: state, progress, timing, Stop, and the outcome
// (result or error) once the job has finished.

import { ApiError, getJSON, jobPath, postJSON, serverNow, watchJob } from "./api.js";
import { progressBar } from "./bar.js";
import { startedJobs } from "./children.js";
import {
  formatDateTime,
  formatDuration,
  formatPercent,
  h,
  isTerminal,
  jobDuration,
  setAttr,
  setText,
} from "./dom.js";
import { originRows } from "./origin.js";
import { showResult } from "./result.js";

// Progress samples older than this do not count towards the rate, so the ETA
// follows a job that speeds up or slows down.
const RATE_WINDOW_MS = 30_000;

/** Remaining time from progress samples [{t, p}], falling back to the rate since start. */
export function estimateRemaining(samples, status, now) {
  const percent = status.progress?.percent;
  if (status.state !== "running" || percent === null || percent === undefined) return null;
  if (percent >= 100) return 0;
  const recent = samples.filter((s) => now - s.t <= RATE_WINDOW_MS);
  if (recent.length >= 2) {
    const first = recent[0];
    const last = recent[recent.length - 1];
    const span = last.t - first.t;
    const gained = last.p - first.p;
    if (span >= 500 && gained > 0) {
      const left = ((100 - last.p) * span) / gained - (now - last.t);
      // Past its own estimate the job has stalled: no number beats a wrong one.
      return left > 0 ? left : null;
    }
  }
  const started = Date.parse(status.startedAt ?? "");
  if (!Number.isNaN(started) && percent > 0) {
    const spent = serverNow() - started;
    if (spent > 0) return Math.max(0, (spent * (100 - percent)) / percent);
  }
  return null;
}

function outcomeOf(status, signal) {
  if (status.state === "succeeded") {
    const body = h("div", { class: "result" });
    showResult(body, status, signal);
    return h("section", { class: "outcome", "aria-labelledby": "outcome-title" }, [
      h("h2", { id: "outcome-title" }, "Result"),
      body,
    ]);
  }
  if (status.state === "failed") return errorBox(status);
  if (status.state === "stopped") {
    return h(
      "section",
      { class: "outcome", "aria-labelledby": "outcome-title" },
      h("h2", { id: "outcome-title" }, "Stopped"),
      h("p", {}, "The job was stopped before it finished; it has no result."),
      status.error ? errorDetails(status.error) : null,
    );
  }
  return null;
}

function errorDetails(error) {
  return [
    error.techMsg
      ? h("p", { class: "tech-msg" }, "Technical message: ", h("code", {}, error.techMsg))
      : null,
    error.errorId ? h("p", { class: "muted" }, `Error id: ${error.errorId}`) : null,
    error.techInfo
      ? h(
          "details",
          { class: "tech-info" },
          h("summary", {}, "Technical details"),
          h("pre", { tabindex: "0" }, error.techInfo),
        )
      : null,
  ];
}

/** The job's input, pretty JSON, from `GET /api/jobs/{id}/content` (not in the status). */
function inputSection(id, signal) {
  const body = h("pre", { class: "content-json job-input", tabindex: "0" }, "Loading…");
  const el = h(
    "section",
    { class: "input-block", "aria-labelledby": "input-title" },
    h("h2", { id: "input-title" }, "Input"),
    body,
  );
  getJSON(jobPath(id, "/content"), { signal })
    .then((content) => {
      body.textContent = JSON.stringify(content, null, 2);
    })
    .catch((error) => {
      if (signal.aborted) return;
      // A server without the route, or a job purged meanwhile: the rest of the page stands.
      body.textContent = `The input could not be loaded (${error.message}).`;
      body.classList.add("muted");
    });
  return el;
}

function errorBox(status) {
  const error = status.error ?? {};
  return h(
    "section",
    { class: "outcome error-box", role: "alert", "aria-labelledby": "outcome-title" },
    h("h2", { id: "outcome-title" }, "The job failed"),
    h("p", { class: "biz-msg" }, error.bizMsg || "The job failed unexpectedly."),
    errorDetails(error),
  );
}

/** Mount the job view of `id` into `root`; returns the cleanup function. */
export function jobView(root, { params }) {
  const id = params.id;
  const controller = new AbortController();
  let stopWatching = null;
  let ticker = null;
  let current = null;
  const samples = [];

  const title = h("h1", { tabindex: "-1" }, `Job ${id.slice(0, 8)}`);
  const badge = h("span", { class: "badge" });
  const stopNote = h("span", { class: "stop-note" });
  const stateLine = h("p", { class: "state-line", role: "status" }, "State: ", badge, stopNote);
  const bar = progressBar("Job progress");
  const percentText = h("span", { class: "percent", "aria-hidden": "true" });
  const bizStep = h("span", { class: "biz-step" });
  const message = h("span", { class: "message" });
  const elapsed = h("span", { class: "elapsed" });
  const eta = h("span", { class: "eta" });
  const stopLabel = h("span", {}, "Stop");
  const stopping = h("span", { "aria-hidden": "true", hidden: true }, "stopping…");
  const stopButton = h(
    "button",
    { type: "button", class: "stop", disabled: true },
    stopLabel,
    stopping,
  );
  // Hidden until the job is known to be unfinished: a finished job has nothing to stop.
  const actions = h("div", { class: "actions", hidden: true }, stopButton);
  const notice = h("p", { class: "notice", role: "status" });
  const outcome = h("div", { class: "outcome-slot" });
  const meta = h("dl", { class: "meta" });
  const children = startedJobs(id, { signal: controller.signal });

  const view = h(
    "article",
    { class: "job-view" },
    h("p", { class: "crumbs" }, h("a", { href: "/" }, "← All jobs")),
    title,
    meta,
    stateLine,
    h(
      "section",
      { class: "progress-block", "aria-label": "Progress" },
      h("div", { class: "bar-row" }, bar.el, percentText),
      h("p", { class: "step" }, bizStep, message),
      h("p", { class: "timing" }, elapsed, eta),
    ),
    actions,
    notice,
    outcome,
    inputSection(id, controller.signal),
    children.el,
  );
  root.replaceChildren(view);
  setText(notice, "Loading the job…");

  function renderMeta(status) {
    const time = (iso) => h("time", { datetime: iso }, formatDateTime(iso));
    const rows = [
      ["Kind", status.kind],
      ["Id", h("code", {}, status.id)],
      ["Created", time(status.createdAt)],
      ["Started", status.startedAt ? time(status.startedAt) : "not yet"],
    ];
    if (isTerminal(status)) {
      rows.push(["Finished", status.finishedAt ? time(status.finishedAt) : ""]);
      const took = jobDuration(status, serverNow());
      rows.push(["Duration", took === null ? "never started" : formatDuration(took)]);
    }
    rows.push(["Attempt", String(status.attempt)]);
    rows.push(...originRows(status));
    meta.replaceChildren(
      ...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
    );
  }

  function renderTiming() {
    const status = current;
    if (!status) return;
    const now = serverNow();
    const created = Date.parse(status.createdAt);
    const started = Date.parse(status.startedAt ?? "");
    const finished = Date.parse(status.finishedAt ?? "");
    if (isTerminal(status)) {
      const from = Number.isNaN(started) ? created : started;
      setText(elapsed, Number.isNaN(finished) ? "" : `Took ${formatDuration(finished - from)}`);
      setText(eta, "");
      return;
    }
    if (status.state === "queued") {
      setText(elapsed, `Waiting in the queue for ${formatDuration(now - created)}`);
      setText(eta, "");
      return;
    }
    const since = Number.isNaN(started) ? created : started;
    setText(elapsed, `Elapsed ${formatDuration(now - since)}`);
    const left = estimateRemaining(samples, status, performance.now());
    setText(eta, left === null ? "ETA estimating…" : `ETA about ${formatDuration(left)}`);
  }

  function render(status) {
    const hadFocus = document.activeElement === stopButton;
    const first = current === null;
    const before = current;
    current = status;
    const percent = status.progress?.percent;
    // A retry starts over: the old attempt's pace says nothing about this one.
    if (before && status.attempt !== before.attempt) samples.length = 0;
    if (percent !== null && percent !== undefined) {
      const last = samples[samples.length - 1];
      if (!last || last.p !== percent) samples.push({ t: performance.now(), p: percent });
      if (samples.length > 200) samples.splice(0, samples.length - 200);
    }
    if (first) {
      setText(notice, "");
      const idPart = h("span", { class: "title-id" }, ` job ${status.id.slice(0, 8)}`);
      title.replaceChildren(status.kind, idPart);
      renderMeta(status);
    } else if (
      status.attempt !== before.attempt ||
      status.startedAt !== before.startedAt ||
      status.finishedAt !== before.finishedAt ||
      status.compensationId !== before.compensationId
    ) {
      renderMeta(status);
    }
    children.follow(status);
    document.title = `${status.state} · ${status.kind} · asyncproc`;
    setText(badge, status.state);
    badge.className = `badge state-${status.state}`;
    const finished = isTerminal(status);
    const stopAsked = status.stopRequested && !finished;
    setText(stopNote, stopAsked ? " (stop requested)" : "");
    bar.update(status);
    setText(percentText, percent === null || percent === undefined ? "" : formatPercent(percent));
    setText(bizStep, status.progress?.bizStep ?? "");
    setText(message, status.progress?.message ?? "");

    // The name stays "Stop" for assistive technology; sighted users see
    // "stopping…" while the stop is under way.
    stopping.hidden = !stopAsked;
    stopLabel.className = stopAsked ? "sr-only" : "";
    stopButton.disabled = finished;
    actions.hidden = finished;
    setAttr(stopButton, "aria-disabled", stopAsked ? "true" : null);

    renderTiming();
    if (finished) {
      clearInterval(ticker);
      ticker = null;
      if (!before || !isTerminal(before)) {
        outcome.replaceChildren(outcomeOf(status, controller.signal) ?? "");
        // Disabling the focused Stop button drops keyboard focus to the top
        // of the page: hand it to the outcome instead.
        const heading = outcome.querySelector("h2");
        if (hadFocus && heading) {
          heading.setAttribute("tabindex", "-1");
          heading.focus();
        }
      }
    } else if (ticker === null) {
      ticker = setInterval(renderTiming, 1000);
    }
  }

  // Answers can cross (a stop answer after a newer SSE event): newest wins.
  function accept(status) {
    if (!current || status.version > current.version) render(status);
  }

  function gone() {
    clearInterval(ticker);
    ticker = null;
    document.title = "Job not found · asyncproc";
    const text =
      "There is no job with this id: it never existed, or it finished " +
      "and was purged after its retention time.";
    const box = h(
      "article",
      { class: "job-view" },
      h("p", { class: "crumbs" }, h("a", { href: "/" }, "← All jobs")),
      h("h1", { tabindex: "-1" }, "Job not found"),
      h("p", {}, text),
      h("p", {}, h("code", {}, id)),
    );
    root.replaceChildren(box);
  }

  function trouble(error) {
    setText(notice, error ? `Connection problem (${error.message}); retrying…` : "");
  }

  async function stop() {
    const pending = stopButton.getAttribute("aria-disabled") === "true";
    if (!current || isTerminal(current) || pending) return;
    setText(notice, "");
    try {
      accept(await postJSON(jobPath(id, "/stop"), {}, { signal: controller.signal }));
    } catch (error) {
      if (controller.signal.aborted) return;
      // 409: it finished first; the answer is its status.
      if (error instanceof ApiError && error.status === 409 && error.body?.state) {
        accept(error.body);
        return;
      }
      setText(notice, `Could not stop the job: ${error.message}`);
    }
  }
  stopButton.addEventListener("click", stop);

  async function start() {
    let status;
    try {
      status = await getJSON(jobPath(id), { signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && error.status === 404) {
        gone();
      } else {
        setText(notice, `The job could not be loaded: ${error.message}`);
      }
      return;
    }
    render(status);
    if (!isTerminal(status)) {
      stopWatching = watchJob(id, {
        onStatus: accept,
        onGone: gone,
        onTrouble: trouble,
      });
    }
  }
  start();

  return () => {
    controller.abort();
    stopWatching?.();
    clearInterval(ticker);
  };
}
