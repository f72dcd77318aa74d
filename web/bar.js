// The progress bar: role="progressbar" with aria-valuenow while the percent is
// known, indeterminate (no aria-valuenow, a moving stripe) while it is null.

import { clampPercent, formatPercent, h, isTerminal, setAttr } from "./dom.js";

/** A progress bar element and `update(status)` to follow a job's status. */
export function progressBar(label, { small = false } = {}) {
  const fill = h("div", { class: "bar-fill" });
  const el = h(
    "div",
    {
      class: small ? "bar bar-small" : "bar",
      role: "progressbar",
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
    },
    fill,
  );

  let drawn = false;

  function update(status) {
    const raw = status.progress?.percent;
    const known = raw !== null && raw !== undefined;
    const finished = isTerminal(status);
    el.dataset.state = status.state;
    // Only a live job with an unknown percent animates; a finished one stands still.
    el.classList.toggle("indeterminate", !known && !finished);
    if (known) {
      const percent = clampPercent(raw);
      const rounded = Math.round(percent * 10) / 10;
      setAttr(el, "aria-valuenow", rounded);
      setAttr(el, "aria-valuetext", formatPercent(percent));
      if (!drawn) {
        // A job opened half-way shows its percent at once, not sliding in from 0.
        fill.style.transition = "none";
        fill.style.width = `${percent}%`;
        void fill.offsetWidth;
        fill.style.transition = "";
      } else {
        fill.style.width = `${percent}%`;
      }
      drawn = true;
    } else {
      setAttr(el, "aria-valuenow", null);
      setAttr(el, "aria-valuetext", finished ? status.state : "progress unknown");
      fill.style.width = finished ? "0%" : "";
    }
  }

  return { el, update };
}
