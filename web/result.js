// A finished job's result, shown by MIME type: JSON pretty-printed, text as
// text, CSV as a table of its first rows, anything else as a download link.

import { ApiError, call, jobPath } from "./api.js";
import { formatBytes, h } from "./dom.js";

export const CSV_ROWS = 500;
// Past these sizes the page shows the beginning only (text, CSV) or just the
// link (JSON, which cannot be shown in part): a browser tab is no place for
// a 200 MB result.
const TEXT_LIMIT = 1_000_000;
const CSV_LIMIT = 4_000_000;

/** The base MIME type: lower case, parameters dropped. */
export function baseMime(mime) {
  return (mime ?? "").split(";")[0].trim().toLowerCase();
}

/** How the page shows a result of this MIME type: "json", "csv", "text" or "download". */
export function resultShape(mime) {
  const base = baseMime(mime);
  if (base === "application/json" || base.endsWith("+json")) return "json";
  if (base === "text/csv") return "csv";
  if (base.startsWith("text/") || base === "application/xml" || base.endsWith("+xml")) {
    return "text";
  }
  return "download";
}

/**
 * Parse CSV (RFC 4180: quoted fields, doubled quotes, CRLF or LF) into rows of
 * strings, stopping after `maxRows`; `more` tells whether rows were left out.
 */
export function parseCsv(text, maxRows = Infinity) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else {
        field += c;
      }
      i += 1;
      continue;
    }
    if (c === '"' && field === "") {
      quoted = true;
    } else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      if (c === "\r" && text[i + 1] === "\n") i += 1;
      if (rows.length >= maxRows) return { rows, more: i + 1 < n };
    } else {
      field += c;
    }
    i += 1;
  }
  if (field !== "" || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return { rows, more: false };
}

// Read at most `limit` bytes of the body (more only to finish a chunk);
// `complete` is false when the rest was left unread.
async function readText(response, limit) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { text: text + decoder.decode(), complete: true };
    size += value.length;
    text += decoder.decode(value, { stream: true });
    if (size >= limit) {
      await reader.cancel();
      return { text, complete: false };
    }
  }
}

function downloadLink(status) {
  const href = jobPath(status.id, "/result?download=1");
  const mime = status.resultMime || "unknown type";
  return h(
    "p",
    { class: "download" },
    h("a", { href, download: "" }, "Download the result"),
    ` (${mime}, ${formatBytes(status.resultSize)})`,
  );
}

function csvTable(rows, more) {
  const [header = [], ...body] = rows;
  const shown = body.slice(0, CSV_ROWS);
  const caption = more
    ? `The first ${shown.length} rows (download the result for all of them)`
    : `${shown.length} ${shown.length === 1 ? "row" : "rows"}`;
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Result table" },
    h(
      "table",
      { class: "csv" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, header.map((cell) => h("th", { scope: "col" }, cell)))),
      h(
        "tbody",
        {},
        shown.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell)))),
      ),
    ),
  );
}

async function resultBody(status, shape, signal) {
  const response = await call(jobPath(status.id, "/result"), { signal });
  if (response.status === 204) return h("p", {}, "The job finished with no result.");
  if (shape === "csv") {
    const { text, complete } = await readText(response, CSV_LIMIT);
    let { rows, more } = parseCsv(text, CSV_ROWS + 1);
    if (!complete) {
      // The last row may be cut in half by the read limit.
      if (rows.length <= CSV_ROWS) rows = rows.slice(0, -1);
      more = true;
    }
    return csvTable(rows, more);
  }
  const limit = TEXT_LIMIT;
  const { text, complete } = await readText(response, limit);
  if (shape === "json") {
    if (!complete) return h("p", {}, "The result is too large to show here.");
    let pretty = text;
    try {
      pretty = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // Not valid JSON after all: show it as it came.
    }
    return h("pre", { class: "result-text", tabindex: "0" }, pretty);
  }
  return h(
    "div",
    {},
    complete ? null : h("p", {}, `The first ${formatBytes(limit)} of the result:`),
    h("pre", { class: "result-text", tabindex: "0" }, text),
  );
}

/** Fill `container` with the succeeded job's result (fetched when shown inline). */
export async function showResult(container, status, signal) {
  if (status.resultMime === null && status.resultSize === null) {
    container.replaceChildren(h("p", {}, "The job finished with no result."));
    return;
  }
  const shape = resultShape(status.resultMime);
  if (shape === "download") {
    container.replaceChildren(downloadLink(status));
    return;
  }
  container.replaceChildren(h("p", { class: "muted" }, "Loading the result…"));
  try {
    const body = await resultBody(status, shape, signal);
    container.replaceChildren(downloadLink(status), body);
  } catch (error) {
    if (signal?.aborted) return;
    const why =
      error instanceof ApiError && error.status === 404
        ? "The result is no longer available (the job was purged after its retention time)."
        : `The result could not be loaded: ${error.message}`;
    container.replaceChildren(h("p", { class: "problem" }, why), downloadLink(status));
  }
}
