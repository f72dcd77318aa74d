// The New job form at /new: pick a kind, edit its JSON content (pre-filled
// from the kind's JSON Schema: its first example, else a skeleton), submit,
// land on the job view.

import { ApiError, getJSON, postJSON } from "./api.js";
import { h, setText } from "./dom.js";

// JSON Pointer inside the schema document ("#/$defs/Count").
function resolve(schema, root) {
  let current = schema ?? {};
  for (let hops = 0; current.$ref && hops < 16; hops += 1) {
    const path = current.$ref.replace(/^#\/?/, "").split("/").filter(Boolean);
    current = path.reduce(
      (node, part) => node?.[decodeURIComponent(part).replace(/~1/g, "/").replace(/~0/g, "~")],
      root,
    ) ?? {};
  }
  return current;
}

function typeOf(schema) {
  if (Array.isArray(schema.type)) return schema.type.find((t) => t !== "null") ?? "null";
  if (schema.type) return schema.type;
  if (schema.properties) return "object";
  return null;
}

function firstExample(schema) {
  return Array.isArray(schema?.examples) && schema.examples.length > 0
    ? { value: schema.examples[0] }
    : null;
}

/**
 * A starting value for a schema: its first example or its default, else a value
 * with every required property (and every property that has a default).
 * Examples beside a `$ref` (a kind's content annotated with examples) count too.
 */
export function sampleOf(schema, root = schema, depth = 0) {
  const example = firstExample(schema) ?? firstExample(resolve(schema, root));
  if (example) return example.value;
  const s = resolve(schema, root);
  if ("default" in s) return s.default;
  if ("const" in s) return s.const;
  if (Array.isArray(s.enum) && s.enum.length > 0) return s.enum[0];
  const branches = s.anyOf ?? s.oneOf;
  if (Array.isArray(branches) && branches.length > 0) {
    const branch = branches.find((b) => resolve(b, root).type !== "null") ?? branches[0];
    return sampleOf(branch, root, depth + 1);
  }
  switch (typeOf(s)) {
    case "object": {
      const value = {};
      if (depth > 6) return value;
      const required = new Set(s.required ?? []);
      for (const [name, property] of Object.entries(s.properties ?? {})) {
        if (required.has(name) || "default" in resolve(property, root)) {
          value[name] = sampleOf(property, root, depth + 1);
        }
      }
      return value;
    }
    case "array":
      return [];
    case "string":
      return "";
    case "integer":
    case "number":
      if (typeof s.minimum === "number") return s.minimum;
      if (typeof s.exclusiveMinimum === "number") return s.exclusiveMinimum + 1;
      return 0;
    case "boolean":
      return false;
    default:
      return null;
  }
}

// The kind the form opens on when the URL names none and this browser never
// started one: the demo's showcase (a job that shows progress for a few seconds).
const SHOWCASE = "demo.count";
const LAST_KIND = "asyncproc.newJob.kind";

/** Whether the kind's content schema offers an example to start from. */
export function hasExample(kind) {
  const schema = kind.contentSchema;
  return Boolean(firstExample(schema) ?? firstExample(resolve(schema, schema)));
}

/**
 * The kind the form opens on: the URL's, else the last one started from this
 * browser, else the showcase, else the first with an example, else the first.
 */
export function openingKind(kinds, wanted, last) {
  const known = (name) => (name && kinds.some((k) => k.kind === name) ? name : null);
  return (
    known(wanted) ??
    known(last) ??
    known(SHOWCASE) ??
    kinds.find(hasExample)?.kind ??
    kinds[0]?.kind ??
    null
  );
}

function lastKind() {
  try {
    return localStorage.getItem(LAST_KIND);
  } catch {
    return null; // storage disabled: no memory, no harm
  }
}

function rememberKind(name) {
  try {
    localStorage.setItem(LAST_KIND, name);
  } catch {
    // storage disabled or full
  }
}

function describeType(schema, root) {
  const s = resolve(schema, root);
  if (Array.isArray(s.enum)) return `one of ${s.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  const parts = [typeOf(s) ?? "any JSON"];
  if (typeof s.minimum === "number") parts.push(`≥ ${s.minimum}`);
  if (typeof s.exclusiveMinimum === "number") parts.push(`> ${s.exclusiveMinimum}`);
  if (typeof s.maximum === "number") parts.push(`≤ ${s.maximum}`);
  if (typeof s.exclusiveMaximum === "number") parts.push(`< ${s.exclusiveMaximum}`);
  if (typeof s.minLength === "number" && s.minLength > 0) {
    parts.push(`at least ${s.minLength} characters`);
  }
  if (typeof s.maxLength === "number") parts.push(`at most ${s.maxLength} characters`);
  return parts.join(" ");
}

/** The fields of an object schema, as a list people can read. */
function fieldList(schema) {
  const s = resolve(schema, schema);
  const properties = Object.entries(s.properties ?? {});
  if (properties.length === 0) {
    const any = typeOf(s) === "object" ? "Any JSON object." : "Any JSON value.";
    return h("p", { class: "muted" }, any);
  }
  const required = new Set(s.required ?? []);
  return h(
    "ul",
    { class: "fields" },
    properties.map(([name, property]) => {
      const p = resolve(property, schema);
      const notes = [describeType(property, schema)];
      if (required.has(name)) notes.push("required");
      if ("default" in p) notes.push(`default ${JSON.stringify(p.default)}`);
      return h(
        "li",
        {},
        h("code", {}, name),
        `: ${notes.join(", ")}`,
        p.description ? h("span", { class: "muted" }, ` (${p.description})`) : null,
      );
    }),
  );
}

/** A 422 message on the content form: "n: expected ..." rather than "content.n: expected ...". */
export function readableProblem(message) {
  return message.replace(/^content: /, "").replace(/^content\.(?=\S)/, "");
}

/** Mount the New job form into `root`; returns the cleanup function. */
export function newJobView(root, { query, navigate }) {
  const controller = new AbortController();
  let kinds = [];
  let prefilled = "";

  const kindSelect = h("select", { id: "new-kind", name: "kind", required: true });
  const kindHelp = h("p", { id: "new-kind-help", class: "muted" });
  const fields = h("div", { class: "field-help" });
  const content = h("textarea", {
    id: "new-content",
    name: "content",
    rows: "8",
    spellcheck: "false",
    autocapitalize: "off",
    autocomplete: "off",
    "aria-describedby": "new-content-help new-content-error",
  });
  const problem = h("div", { id: "new-content-error", class: "problem", role: "alert" });
  const requestId = h("input", {
    id: "new-request-id",
    name: "requestId",
    autocomplete: "off",
    "aria-describedby": "new-request-id-help",
  });
  const key = h("input", {
    id: "new-key",
    name: "key",
    autocomplete: "off",
    "aria-describedby": "new-key-help",
  });
  const submit = h("button", { type: "submit" }, "Start job");
  const reset = h("button", { type: "button", class: "secondary" }, "Reset content");
  const form = h(
    "form",
    { class: "new-job", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "new-kind" }, "Kind"), kindSelect),
    kindHelp,
    fields,
    h("div", { class: "field" }, h("label", { for: "new-content" }, "Content (JSON)"), content),
    problem,
    h(
      "p",
      { id: "new-content-help", class: "muted" },
      "The job's input, checked against the kind's schema.",
    ),
    h(
      "details",
      { class: "options" },
      h("summary", {}, "Options"),
      h("div", { class: "field" }, h("label", { for: "new-request-id" }, "Request id"), requestId),
      h(
        "p",
        { id: "new-request-id-help", class: "muted" },
        "Optional. Sending the same id again returns the same job instead of starting another.",
      ),
      h("div", { class: "field" }, h("label", { for: "new-key" }, "Business key"), key),
      h("p", { id: "new-key-help", class: "muted" }, "Optional. Some kinds allow one job per key."),
    ),
    h("div", { class: "actions" }, submit, reset),
  );
  root.replaceChildren(h("h1", { tabindex: "-1" }, "New job"), form);
  document.title = "New job · asyncproc";

  function showProblem(text) {
    setText(problem, text);
    if (text) content.setAttribute("aria-invalid", "true");
    else content.removeAttribute("aria-invalid");
  }

  function choose(name, { keepEdits }) {
    const kind = kinds.find((k) => k.kind === name) ?? kinds[0];
    if (!kind) return;
    kindSelect.value = kind.kind;
    setText(kindHelp, [kind.title, kind.description].filter(Boolean).join(": "));
    fields.replaceChildren(fieldList(kind.contentSchema));
    const text = JSON.stringify(sampleOf(kind.contentSchema), null, 2);
    // Switching kinds replaces the content only if the user has not edited it.
    if (!keepEdits || content.value.trim() === "" || content.value === prefilled) {
      content.value = text;
    }
    prefilled = text;
    showProblem("");
  }

  kindSelect.addEventListener("change", () => {
    choose(kindSelect.value, { keepEdits: true });
    history.replaceState(history.state, "", `/new?kind=${encodeURIComponent(kindSelect.value)}`);
  });
  reset.addEventListener("click", () => choose(kindSelect.value, { keepEdits: false }));
  content.addEventListener("input", () => {
    if (problem.textContent) showProblem("");
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let value;
    try {
      value = JSON.parse(content.value);
    } catch (error) {
      showProblem(`The content is not valid JSON: ${error.message}`);
      content.focus();
      return;
    }
    const body = { content: value };
    if (requestId.value.trim()) body.requestId = requestId.value.trim();
    if (key.value.trim()) body.key = key.value.trim();
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const status = await postJSON(`/api/${encodeURIComponent(kindSelect.value)}/enqueue`, body, {
        signal: controller.signal,
      });
      rememberKind(kindSelect.value);
      navigate(`/jobs/${encodeURIComponent(status.id)}`);
    } catch (error) {
      if (controller.signal.aborted) return;
      let text = error.message;
      if (error instanceof ApiError) {
        if (error.status === 422) {
          text = `The server refused the content: ${readableProblem(error.message)}`;
        } else if (error.status === 503) {
          text = `The service is busy (${error.message}); try again shortly.`;
        } else if (error.status === 409) {
          text = `Not started: ${error.message}`;
        }
      }
      showProblem(text);
      content.focus();
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });

  getJSON("/api/kinds", { signal: controller.signal })
    .then((list) => {
      kinds = list;
      if (kinds.length === 0) {
        showProblem("This server has no job kinds.");
        submit.disabled = true;
        return;
      }
      kindSelect.replaceChildren(
        ...kinds.map((kind) =>
          h(
            "option",
            { value: kind.kind },
            kind.title ? `${kind.kind} — ${kind.title}` : kind.kind,
          ),
        ),
      );
      choose(openingKind(kinds, query.kind, lastKind()), { keepEdits: false });
    })
    .catch((error) => {
      if (!controller.signal.aborted) showProblem(`Could not load the job kinds: ${error.message}`);
    });

  return () => controller.abort();
}
