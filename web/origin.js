// Where a job comes from, for the job view: how it started (API.md section 3
// `trigger`), its key (a link to the key's jobs), the job that started it.

import { h, shortId } from "./dom.js";

/** The page URL of the jobs list with these filters (empty ones left out). */
export function jobsListUrl(filters) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(filters)) {
    if (value) params.set(name, value);
  }
  const text = params.toString();
  return text ? `/?${text}` : "/";
}

function jobLink(id) {
  return h("a", { href: `/jobs/${encodeURIComponent(id)}` }, "job ", h("code", {}, shortId(id)));
}

/**
 * "Started by hand", "Started by schedule nightly-report" (a link to the
 * schedules), "Started by selection demo.select" (a link to the selection job)...
 * An unknown trigger type still reads as a sentence: the contract may add some.
 */
export function describeTrigger(status) {
  const trigger = status.trigger ?? { type: "api", name: null };
  const name = trigger.name ?? "";
  const parent = status.parentId;
  switch (trigger.type) {
    case "api":
      return ["Started by hand"];
    case "batch":
      return ["Started in a batch"];
    case "schedule": {
      const target = name ? `/schedules#${encodeURIComponent(`schedule-${name}`)}` : "/schedules";
      return ["Started by schedule ", h("a", { href: target }, name || "(unnamed)")];
    }
    case "event":
      return ["Started by event trigger ", h("strong", {}, name)];
    case "message":
      return ["Started by message trigger ", h("strong", {}, name)];
    case "selection":
      return [
        "Started by selection ",
        parent ? h("a", { href: `/jobs/${encodeURIComponent(parent)}` }, name) : name,
      ];
    case "compensation":
      return ["Started to compensate ", parent ? jobLink(parent) : "a failed job"];
    default:
      return [`Started by ${trigger.type}${name ? ` ${name}` : ""}`];
  }
}

/** Rows [term, value] for the job view's details: Origin, Key, Parent, Owner, Compensation. */
export function originRows(status) {
  const rows = [["Origin", h("span", { class: "trigger" }, describeTrigger(status))]];
  if (status.key) {
    const href = jobsListUrl({ kind: status.kind, key: status.key });
    const title = `All ${status.kind} jobs with key ${status.key}`;
    rows.push(["Key", h("a", { href, title, class: "key-link" }, h("code", {}, status.key))]);
  }
  if (status.parentId) rows.push(["Parent", jobLink(status.parentId)]);
  if (status.owner) rows.push(["Owner", status.owner]);
  if (status.compensationId) rows.push(["Compensation", jobLink(status.compensationId)]);
  return rows;
}
