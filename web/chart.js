// The overview's chart of the last hour, drawn as an inline SVG: per minute, a
// bar of the jobs that finished (succeeded below, failed stacked on top) and a
// line of the jobs enqueued. No library: a few rects, a polyline, some text.

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 180;
const PAD = { top: 12, right: 12, bottom: 24, left: 40 };

/** An SVG element with attributes and children (strings become text). */
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** The smallest "nice" number (1, 2, 5 × 10^n) at or above `value`, at least 1. */
export function niceCeiling(value) {
  if (!(value > 1)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function clock(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/** Sums of a perMinute list: {enqueued, succeeded, failed}. */
export function totals(perMinute) {
  const sum = { enqueued: 0, succeeded: 0, failed: 0 };
  for (const minute of perMinute) {
    for (const name of Object.keys(sum)) sum[name] += Number(minute[name]) || 0;
  }
  return sum;
}

/**
 * The chart of `perMinute` ([{at, enqueued, succeeded, failed}], oldest first)
 * as an <svg> `width` user units wide (the width it is shown at, so its text
 * keeps its size on a phone).
 */
export function minuteChart(perMinute, width) {
  const minutes = perMinute.length;
  const plotWidth = Math.max(60, width - PAD.left - PAD.right);
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const top = niceCeiling(
    Math.max(0, ...perMinute.map((m) => Math.max(m.enqueued, m.succeeded + m.failed))),
  );
  const slot = plotWidth / Math.max(1, minutes);
  const barWidth = Math.max(1, slot * 0.7);
  const y = (value) => PAD.top + plotHeight - (value / top) * plotHeight;
  const x = (index) => PAD.left + index * slot;

  const grid = [0, top / 2, top].map((value) =>
    s(
      "g",
      { class: "chart-grid" },
      s("line", { x1: PAD.left, x2: PAD.left + plotWidth, y1: y(value), y2: y(value) }),
      s(
        "text",
        { x: PAD.left - 6, y: y(value), "text-anchor": "end", "dominant-baseline": "middle" },
        Number.isInteger(value) ? value : value.toFixed(1),
      ),
    ),
  );

  const bars = [];
  const hovers = [];
  perMinute.forEach((minute, index) => {
    const left = x(index) + (slot - barWidth) / 2;
    const okTop = y(minute.succeeded);
    const failTop = y(minute.succeeded + minute.failed);
    if (minute.succeeded > 0) {
      bars.push(
        s("rect", {
          class: "bar-succeeded",
          x: left,
          y: okTop,
          width: barWidth,
          height: y(0) - okTop,
        }),
      );
    }
    if (minute.failed > 0) {
      bars.push(
        s("rect", {
          class: "bar-failed",
          x: left,
          y: failTop,
          width: barWidth,
          height: okTop - failTop,
        }),
      );
    }
    // A full-height strip per minute carries its numbers as a tooltip.
    const text =
      `${clock(minute.at)}: ${minute.enqueued} enqueued, ` +
      `${minute.succeeded} succeeded, ${minute.failed} failed`;
    hovers.push(
      s(
        "rect",
        { class: "chart-hover", x: x(index), y: PAD.top, width: slot, height: plotHeight },
        s("title", {}, text),
      ),
    );
  });

  const points = perMinute
    .map((minute, index) => `${(x(index) + slot / 2).toFixed(1)},${y(minute.enqueued).toFixed(1)}`)
    .join(" ");
  const line = minutes > 0 ? s("polyline", { class: "line-enqueued", points }) : null;

  // Time labels: the first minute, the middle one and the last.
  const ticks = minutes > 0 ? [0, Math.floor(minutes / 2), minutes - 1] : [];
  const labels = ticks
    .filter((index, i, all) => all.indexOf(index) === i)
    .map((index) => {
      const anchor = index === 0 ? "start" : index === minutes - 1 ? "end" : "middle";
      const at = index === 0 ? x(0) : index === minutes - 1 ? x(minutes) : x(index) + slot / 2;
      return s(
        "text",
        { class: "chart-time", x: at, y: HEIGHT - 6, "text-anchor": anchor },
        clock(perMinute[index].at),
      );
    });

  const sum = totals(perMinute);
  const summary =
    `Jobs per minute over the last ${minutes} minutes: ${sum.enqueued} enqueued, ` +
    `${sum.succeeded} succeeded, ${sum.failed} failed; the busiest minute reaches ${top}.`;
  return s(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${width} ${HEIGHT}`,
      width,
      height: HEIGHT,
      role: "img",
      "aria-labelledby": "chart-title",
    },
    s("title", { id: "chart-title" }, summary),
    grid,
    s("g", { class: "chart-bars" }, bars),
    line,
    labels,
    s("g", { class: "chart-hovers" }, hovers),
  );
}

/**
 * The chart's numbers for those who do not see it: a table of the minutes that
 * had any job (newest first), folded away under a summary.
 */
export function minuteTable(perMinute) {
  const busy = perMinute.filter((m) => m.enqueued + m.succeeded + m.failed > 0).reverse();
  const details = document.createElement("details");
  details.className = "minute-table";
  const summary = document.createElement("summary");
  summary.textContent = "The last hour as a table";
  details.append(summary);
  if (busy.length === 0) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "No minute had any job.";
    details.append(none);
    return details;
  }
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const name of ["Minute", "enqueued", "succeeded", "failed"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.append(th);
  }
  const body = table.createTBody();
  for (const minute of busy) {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = clock(minute.at);
    row.append(th);
    for (const name of ["enqueued", "succeeded", "failed"]) {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = String(minute[name]);
    }
  }
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  wrap.append(table);
  details.append(wrap);
  return details;
}
