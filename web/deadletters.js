// The dead letters view at /dead-letters (API.md section 13): what could not
// run — jobs lost too often, compensations that failed for good, trigger
// messages that could not become jobs — newest first, each with its reason,
// when, the job or the trigger, and its payload folded. Requeue runs one
// again (a job queued again, a message offered to its trigger again);
// Delete forgets it. Refreshed every few seconds while the view is open.

import { ApiError, call, getJSON, serverNow } from "./api.js";
import { formatRelative, formatTime, h, setText, shortId } from "./dom.js";

const PAGE = 50;
const REFRESH_MS = 5000;

function letterPath(id, suffix = "") {
  return `/api/dead-letters/${encodeURIComponent(id)}${suffix}`;
}

/** The payload, pretty-printed when it is JSON. */
function payloadText(payload) {
  if (payload === null || payload === undefined) return "";
  try {
    return JSON.stringify(JSON.parse(payload), null, 2);
  } catch {
    return payload;
  }
}

function origin(letter) {
  if (letter.source === "job" && letter.jobId) {
    return h("a", { href: `/jobs/${encodeURIComponent(letter.jobId)}` }, letter.jobId);
  }
  return h("code", {}, letter.trigger ?? "?");
}

function title(letter) {
  if (letter.source === "job") {
    return ["Job ", h("span", { class: "muted" }, shortId(letter.jobId ?? ""))];
  }
  return ["Message for ", h("code", {}, letter.trigger ?? "?")];
}

/** One dead letter as a card: `el`, `busy(flag)`, `say(text)`. */
function letterCard(letter, { onRequeue, onDelete }) {
  const titleId = `letter-${letter.id}-title`;
  const requeue = h("button", { type: "button" }, "Requeue");
  const remove = h("button", { type: "button", class: "secondary" }, "Delete");
  const notice = h("p", { class: "notice problem", role: "status" });
  const when = h("time", { datetime: letter.at }, formatTime(letter.at));
  const ago = h("span", { class: "relative" });
  const el = h(
    "article",
    { class: "dead-letter", id: `letter-${letter.id}`, "aria-labelledby": titleId },
    h(
      "div",
      { class: "schedule-head" },
      h("h2", { id: titleId }, ...title(letter)),
      h("span", { class: "badge state-failed" }, letter.source),
    ),
    h("p", { class: "reason" }, letter.reason),
    h(
      "dl",
      { class: "meta" },
      h("dt", {}, "When"),
      h("dd", {}, when, " ", ago),
      h("dt", {}, letter.source === "job" ? "Job" : "Trigger"),
      h("dd", {}, origin(letter)),
    ),
    letter.payload === null || letter.payload === undefined
      ? null
      : h(
          "details",
          { class: "content" },
          h("summary", {}, "Payload"),
          h("pre", { class: "content-json", tabindex: "0" }, payloadText(letter.payload)),
        ),
    h("div", { class: "actions" }, requeue, remove),
    notice,
  );
  requeue.addEventListener("click", () => {
    if (requeue.getAttribute("aria-disabled") !== "true") onRequeue(letter);
  });
  remove.addEventListener("click", () => {
    if (remove.getAttribute("aria-disabled") !== "true") onDelete(letter);
  });
  function tick() {
    setText(ago, `(${formatRelative(Date.parse(letter.at) - serverNow())})`);
  }
  tick();
  return {
    el,
    tick,
    busy(flag) {
      for (const button of [requeue, remove]) {
        if (flag) button.setAttribute("aria-disabled", "true");
        else button.removeAttribute("aria-disabled");
      }
    },
    say(text) {
      setText(notice, text);
    },
  };
}

/** Mount the dead letters view into `root`; returns the cleanup function. */
export function deadLettersView(root) {
  const controller = new AbortController();
  const cards = new Map();
  let next = null;
  let shown = PAGE;
  let timer = null;
  let closed = false;

  const heading = h("h1", { tabindex: "-1" }, "Dead letters");
  const intro = h(
    "p",
    { class: "muted" },
    "Jobs lost too often, compensations that failed for good, and trigger messages that could not become jobs.",
  );
  const status = h("p", { class: "list-status", role: "status" }, "Loading…");
  const list = h("div", { class: "schedules dead-letters" });
  const more = h("button", { type: "button", class: "secondary" }, "Load more");
  more.hidden = true;
  const empty = h(
    "section",
    { class: "empty" },
    h("h2", {}, "No dead letters"),
    h("p", {}, "Everything that was started could run or is still running."),
  );
  empty.hidden = true;
  root.replaceChildren(heading, intro, status, list, h("div", { class: "actions" }, more), empty);
  document.title = "Dead letters · asyncproc";

  function show(items) {
    const seen = new Set();
    items.forEach((letter, index) => {
      seen.add(letter.id);
      let card = cards.get(letter.id);
      if (!card) {
        card = letterCard(letter, { onRequeue: requeue, onDelete: remove });
        cards.set(letter.id, card);
      }
      const there = list.children[index] ?? null;
      if (there !== card.el) list.insertBefore(card.el, there);
    });
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.el.remove();
        cards.delete(id);
      }
    }
    empty.hidden = items.length > 0;
    more.hidden = next === null;
  }

  async function load(limit) {
    const items = [];
    let cursor = null;
    // Whole pages up to `limit` letters, so a refresh keeps what "Load more" showed.
    do {
      const params = new URLSearchParams({ limit: String(Math.min(limit - items.length, 200)) });
      if (cursor) params.set("cursor", cursor);
      const page = await getJSON(`/api/dead-letters?${params}`, { signal: controller.signal });
      items.push(...page.items);
      cursor = page.next;
    } while (cursor && items.length < limit);
    next = cursor;
    return items;
  }

  async function refresh() {
    if (closed) return;
    try {
      show(await load(shown));
      setText(status, "");
    } catch (error) {
      if (controller.signal.aborted) return;
      setText(status, `Could not load the dead letters (${error.message}); retrying…`);
    }
  }

  function drop(id, message) {
    cards.get(id)?.el.remove();
    cards.delete(id);
    empty.hidden = cards.size > 0;
    status.replaceChildren(...message);
  }

  async function requeue(letter) {
    const card = cards.get(letter.id);
    card?.busy(true);
    card?.say("");
    try {
      const response = await call(letterPath(letter.id, "/requeue"), {
        method: "POST",
        signal: controller.signal,
      });
      const job = await response.json();
      drop(letter.id, [
        "Requeued: ",
        h("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, `job ${shortId(job.id)}`),
        ` is ${job.state}.`,
      ]);
    } catch (error) {
      if (controller.signal.aborted) return;
      card?.say(`Could not requeue: ${error.message}`);
      card?.busy(false);
      if (error instanceof ApiError && error.status === 404) refresh();
    }
  }

  async function remove(letter) {
    const card = cards.get(letter.id);
    card?.busy(true);
    card?.say("");
    try {
      await call(letterPath(letter.id), { method: "DELETE", signal: controller.signal });
      drop(letter.id, ["Deleted."]);
    } catch (error) {
      if (controller.signal.aborted) return;
      card?.say(`Could not delete: ${error.message}`);
      card?.busy(false);
      if (error instanceof ApiError && error.status === 404) refresh();
    }
  }

  more.addEventListener("click", async () => {
    shown += PAGE;
    await refresh();
  });

  function schedule() {
    if (closed) return;
    timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      for (const card of cards.values()) card.tick();
      schedule();
    }, REFRESH_MS);
  }

  refresh();
  schedule();
  return () => {
    closed = true;
    controller.abort();
    clearTimeout(timer);
  };
}
