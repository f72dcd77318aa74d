// The API token (API.md section 15): asked for once, when the server first answers
// 401, with a small form; kept in sessionStorage for this browser session; sent as
// `Authorization: Bearer` on every call. The token never goes into a URL (URLs land
// in server and proxy logs): the event stream is read with fetch, which can send
// the header (see api.js), and result downloads are fetched the same way.

import { h } from "./dom.js";

const KEY = "asyncproc.token";

/** The stored token, or null. */
export function token() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null; // storage disabled: the token lives as long as the page does
  }
}

let memory = null;

function store(value) {
  memory = value;
  try {
    if (value === null) sessionStorage.removeItem(KEY);
    else sessionStorage.setItem(KEY, value);
  } catch {
    // Kept in `memory` only.
  }
  showSignOut();
}

function current() {
  return token() ?? memory;
}

/** The Authorization header to send, or none. */
export function authHeaders() {
  const value = current();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

// One question at a time: every call refused meanwhile waits for the same answer.
let asking = null;
// Cancelled: not asked again (every call would ask) until the page is loaded again.
let declined = false;

/**
 * Ask the user for a token after a 401. `rejected`: the token sent was refused (it
 * is forgotten and the form says so). Resolves true once a token is entered, false
 * when the user cancels.
 */
export function askForToken(rejected) {
  if (rejected) store(null);
  if (declined) return Promise.resolve(false);
  if (!asking) {
    asking = showForm(rejected).then((entered) => {
      declined = !entered;
      asking = null;
      return entered;
    });
  }
  return asking;
}

function showForm(rejected) {
  return new Promise((resolve) => {
    const input = h("input", {
      id: "token-input",
      type: "password",
      name: "token",
      autocomplete: "current-password",
      required: true,
      spellcheck: "false",
    });
    const problem = h(
      "p",
      { class: "token-problem", role: "alert", hidden: !rejected },
      "That token was not accepted. Check it and try again.",
    );
    const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
    const form = h("form", { method: "dialog", class: "token-form" }, [
      h("h2", { id: "token-title" }, "API token needed"),
      h(
        "p",
        { id: "token-help" },
        "This server needs an API token. It is kept for this browser tab only.",
      ),
      problem,
      h("label", { for: "token-input" }, "Token"),
      input,
      h("div", { class: "token-actions" }, [
        h("button", { type: "submit" }, "Use token"),
        cancel,
      ]),
    ]);
    const dialog = h(
      "dialog",
      { class: "token-dialog", "aria-labelledby": "token-title", "aria-describedby": "token-help" },
      form,
    );
    let answered = false;
    const finish = (value) => {
      if (answered) return;
      answered = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      store(value);
      finish(true);
    });
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", () => finish(false));
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

// A "Sign out" button in the header while a token is kept.
function showSignOut() {
  const nav = document.querySelector("header.top nav");
  if (!nav) return;
  let button = nav.querySelector(".sign-out");
  if (!current()) {
    button?.remove();
    return;
  }
  if (button) return;
  button = h(
    "button",
    {
      type: "button",
      class: "secondary sign-out",
      onclick: () => {
        store(null);
        location.reload();
      },
    },
    "Forget token",
  );
  nav.append(button);
}

// Result downloads are links (`<a download>`), which cannot send a header: with a
// token, fetch the file with it and save what came.
document.addEventListener("click", async (event) => {
  const link = event.target.closest?.("a[download][href^='/api/']");
  if (!link || !current() || event.defaultPrevented) return;
  event.preventDefault();
  const response = await fetch(link.getAttribute("href"), { headers: authHeaders() });
  if (!response.ok) return;
  const disposition = response.headers.get("content-disposition") ?? "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? "result";
  const url = URL.createObjectURL(await response.blob());
  const save = h("a", { href: url, download: name, hidden: true });
  document.body.append(save);
  save.click();
  save.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
});

showSignOut();
