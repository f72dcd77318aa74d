// Talking to the asyncproc HTTP API (see API.md): JSON calls, readable errors,
// and watching one job live (SSE, falling back to long poll). With auth on, every
// call carries the token (auth.js asks for it on the first 401).

import { askForToken, authHeaders } from "./auth.js";
import { isTerminal } from "./dom.js";

/** A non-2xx answer: `status`, the server's human-readable `message`, the `body`. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

// Server clock minus ours, from the Date header; only trusted past 2 s because
// the header has whole-second resolution. Keeps elapsed times right when the
// viewer's clock is off.
let clockOffset = 0;

/** Now, on the server's clock (milliseconds since the epoch). */
export function serverNow() {
  return Date.now() + clockOffset;
}

function noteClock(response) {
  const date = Date.parse(response.headers.get("date") ?? "");
  if (Number.isNaN(date)) return;
  const offset = date - Date.now();
  clockOffset = Math.abs(offset) > 2000 ? offset : 0;
}

/** Path of a job's resource, id escaped. */
export function jobPath(id, suffix = "") {
  return `/api/jobs/${encodeURIComponent(id)}${suffix}`;
}

async function readError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const message =
    body?.error?.message ??
    (response.status === 409 && body?.state
      ? `the job is ${body.state}`
      : `${response.status} ${response.statusText || "error"}`);
  return new ApiError(response.status, message, body);
}

/**
 * fetch(), with the token sent, the clock noted and a non-2xx answer thrown as
 * ApiError; a 401 asks for a token and, once given, sends the call again.
 */
export async function call(path, options = {}) {
  for (;;) {
    const auth = authHeaders();
    const response = await fetch(path, {
      ...options,
      headers: { Accept: "application/json", ...auth, ...(options.headers ?? {}) },
    });
    noteClock(response);
    if (response.status === 401 && (await askForToken(Boolean(auth.Authorization)))) continue;
    if (!response.ok) throw await readError(response);
    return response;
  }
}

/** GET a JSON document. */
export async function getJSON(path, options = {}) {
  const response = await call(path, options);
  return response.json();
}

/** POST a JSON body; resolves to the decoded answer. */
export async function postJSON(path, body, options = {}) {
  const response = await call(path, {
    ...options,
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.status === 204 ? null : response.json();
}

const FIRST_EVENT_MS = 8000;

/**
 * Watch one job: `onStatus(status)` for the current status and each change
 * (versions only grow), until the job is terminal or the returned `stop()` is
 * called. `onGone()` when the job does not exist (unknown or purged);
 * `onTrouble(error | null)` when the connection fails and when it is back.
 *
 * SSE first; when the stream cannot be opened (a proxy that buffers, a browser
 * without EventSource) it falls back to long poll, at most one request per
 * `minGap` ms so a fast-moving job cannot turn it into a tight loop.
 */
export function watchJob(id, { onStatus, onGone, onTrouble, sse = true, minGap = 250 }) {
  let closed = false;
  let version = -1;
  let source = null;
  let controller = null;
  let streamController = null;
  let wake = null;

  // A timer that stop() cuts short, so a stopped watcher never lingers.
  const pause = (ms) =>
    new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = null;
        resolve();
      }
      wake = done;
    });

  const stop = () => {
    closed = true;
    source?.close();
    source = null;
    controller?.abort();
    streamController?.abort();
    wake?.();
  };

  const deliver = (status) => {
    if (closed || status.version <= version) return;
    version = status.version;
    onStatus(status);
    if (isTerminal(status)) stop();
  };

  const gone = () => {
    if (closed) return;
    stop();
    onGone?.();
  };

  async function poll() {
    let backoff = 1000;
    while (!closed) {
      const started = Date.now();
      controller = new AbortController();
      try {
        const query = version >= 0 ? `?wait=25&since=${version}` : "";
        const status = await getJSON(jobPath(id, query), { signal: controller.signal });
        backoff = 1000;
        onTrouble?.(null);
        deliver(status);
      } catch (error) {
        if (closed) return;
        if (error instanceof ApiError && error.status === 404) {
          gone();
          return;
        }
        onTrouble?.(error);
        await pause(backoff);
        backoff = Math.min(backoff * 2, 15000);
        continue;
      }
      const wait = minGap - (Date.now() - started);
      if (wait > 0) await pause(wait);
    }
  }

  const toPolling = () => {
    source?.close();
    source = null;
    if (!closed) poll();
  };

  function stream() {
    let received = false;
    let failures = 0;
    source = new EventSource(jobPath(id, "/events"));
    // The server sends the current status first, at once; silence means a
    // proxy is holding the stream back.
    const silence = setTimeout(() => {
      if (!received && source) toPolling();
    }, FIRST_EVENT_MS);
    source.onmessage = (event) => {
      received = true;
      clearTimeout(silence);
      failures = 0;
      onTrouble?.(null);
      let status;
      try {
        status = JSON.parse(event.data);
      } catch {
        return;
      }
      deliver(status);
    };
    source.addEventListener("gone", gone);
    source.onerror = () => {
      if (closed) return;
      failures += 1;
      // The browser retries by itself after a dropped stream; a stream that
      // never delivered, was refused, or keeps failing goes to long poll.
      if (!received || failures >= 2 || source.readyState === EventSource.CLOSED) {
        clearTimeout(silence);
        toPolling();
      }
    };
  }

  // The same stream read with fetch, which can send the token (EventSource cannot,
  // and a token in the URL would land in logs).
  function fetchStream() {
    let received = false;
    let streaming = true;
    streamController = new AbortController();
    const fallBack = () => {
      if (!streaming) return;
      streaming = false;
      clearTimeout(silence);
      streamController?.abort();
      if (!closed) poll();
    };
    const silence = setTimeout(() => {
      if (!received) fallBack();
    }, FIRST_EVENT_MS);
    const handle = (block) => {
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (event === "gone") {
        gone();
        return;
      }
      if (!data.length) return; // a keep-alive comment
      received = true;
      clearTimeout(silence);
      onTrouble?.(null);
      try {
        deliver(JSON.parse(data.join("\n")));
      } catch {
        // Not JSON: skip it, as EventSource's listener does.
      }
    };
    (async () => {
      const auth = authHeaders();
      const response = await fetch(jobPath(id, "/events"), {
        headers: { Accept: "text/event-stream", ...auth },
        signal: streamController.signal,
      });
      noteClock(response);
      if (response.status === 404) {
        streaming = false;
        clearTimeout(silence);
        gone();
        return;
      }
      if (response.status === 401 && (await askForToken(Boolean(auth.Authorization)))) {
        streaming = false;
        clearTimeout(silence);
        if (!closed) fetchStream();
        return;
      }
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replaceAll("\r\n", "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handle(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
      fallBack(); // ended before a terminal status (a restart): long poll from here
    })().catch(() => {
      if (!closed) fallBack();
    });
  }

  if (sse && authHeaders().Authorization && typeof ReadableStream === "function") fetchStream();
  else if (sse && typeof EventSource === "function") stream();
  else poll();
  return stop;
}
