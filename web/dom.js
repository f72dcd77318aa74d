// Small DOM and formatting helpers shared by the views. Every piece of server
// data goes into the page through textContent or attributes, never as HTML.

/**
 * Create an element: h("a", {href: "/", class: "x", onclick: fn}, "text", child).
 * Attributes whose value is null, undefined or false are left out.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "value" || name === "checked" || name === "selected") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Set an element's text only when it differs (keeps screen readers quiet). */
export function setText(el, text) {
  const value = text ?? "";
  if (el.textContent !== value) el.textContent = value;
}

/** Set or remove an attribute only when it differs. */
export function setAttr(el, name, value) {
  if (value === null || value === undefined || value === false) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== String(value)) {
    el.setAttribute(name, String(value));
  }
}

export const TERMINAL = new Set(["succeeded", "failed", "stopped"]);
export const STATES = ["queued", "running", "succeeded", "failed", "stopped"];

/** True when nothing can change the job any more. */
export function isTerminal(status) {
  return TERMINAL.has(status.state);
}

/** "1 h 02 min", "3 min 05 s", "4.2 s", "35 ms" for a duration in milliseconds. */
export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) ms = 0;
  // A job that took next to nothing reads better as "12 ms" than as "0.0 s".
  if (ms < 100) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  if (hours > 0) return `${hours} h ${String(minutes).padStart(2, "0")} min`;
  if (minutes > 0) return `${minutes} min ${String(seconds).padStart(2, "0")} s`;
  return `${seconds} s`;
}

/** "512 B", "1.5 kB", "3.2 MB" (powers of 1000, as file managers show). */
export function formatBytes(size) {
  if (size === null || size === undefined) return "";
  if (size < 1000) return `${size} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let value = size;
  let unit = "B";
  for (const next of units) {
    if (value < 1000) break;
    value /= 1000;
    unit = next;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

/** A timestamp for people: the time today, the date and time otherwise. */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString()
    : `${date.toLocaleDateString()} ${date.toLocaleTimeString()}`;
}

/** A timestamp with its date always ("Nov 30, 2026, 4:05:12 PM" in the viewer's locale). */
export function formatDateTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/**
 * How long a job ran (started → finished), or has been running (started → `now`);
 * null before it started (a job stopped or timed out in the queue never did).
 */
export function jobDuration(status, now) {
  const started = Date.parse(status.startedAt ?? "");
  if (Number.isNaN(started)) return null;
  if (isTerminal(status)) {
    const finished = Date.parse(status.finishedAt ?? "");
    return Number.isNaN(finished) ? null : Math.max(0, finished - started);
  }
  return status.state === "running" ? Math.max(0, now - started) : null;
}

/** "42%" with at most one decimal. */
export function formatPercent(percent) {
  const rounded = Math.round(percent * 10) / 10;
  return `${rounded}%`;
}

/** Clamp a percent to 0..100 (the server promises it; the page does not rely on it). */
export function clampPercent(percent) {
  return Math.min(100, Math.max(0, Number(percent)));
}

/**
 * Enough of an id to tell jobs apart in a list: the first 8 characters of a
 * generated (hex) id; for a longer derived id ("schedule:nightly:20261130T020000Z")
 * its start and its end, where the tick or item that tells them apart is.
 */
export function shortId(id) {
  if (/^[0-9a-f]+$/.test(id) || id.length <= 16) return id.length > 8 ? `${id.slice(0, 8)}…` : id;
  return `${id.slice(0, 6)}…${id.slice(-8)}`;
}

/** "in 12 s", "in 3 min", "5 min ago", "now" for a time `ms` from now (negative: past). */
export function formatRelative(ms) {
  if (!Number.isFinite(ms)) return "";
  const s = Math.round(Math.abs(ms) / 1000);
  if (s === 0) return "now";
  let text;
  if (s < 60) text = `${s} s`;
  else if (s < 3600) text = `${Math.round(s / 60)} min`;
  else if (s < 86400) text = `${Math.round(s / 360) / 10} h`;
  else text = `${Math.round(s / 8640) / 10} d`;
  return ms > 0 ? `in ${text}` : `${text} ago`;
}

/** An interval in seconds for people: "30 s", "15 min", "1 h 30 min", "1 d". */
export function formatEvery(seconds) {
  let left = Math.round(Number(seconds));
  if (!Number.isFinite(left) || left <= 0) return `${seconds} s`;
  const parts = [];
  for (const [size, unit] of [
    [86400, "d"],
    [3600, "h"],
    [60, "min"],
    [1, "s"],
  ]) {
    if (left >= size) {
      parts.push(`${Math.floor(left / size)} ${unit}`);
      left %= size;
    }
  }
  return parts.join(" ");
}
