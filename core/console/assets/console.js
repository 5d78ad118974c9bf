// Progressive enhancement only: every form works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Ask before a disable that may leave records read-only.
  for (const button of document.querySelectorAll("button.on[data-module]")) {
    button.form.addEventListener("submit", (event) => {
      const force = button.form.querySelector("input[name=force]");
      if (force && force.checked && !window.confirm("Records using " + button.dataset.module + " in " + button.dataset.domain + " become read-only. Disable?")) {
        event.preventDefault();
      }
    });
  }
  // A form sends once: a second click while the page loads does not post twice.
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      setTimeout(() => form.querySelectorAll("button[type=submit]").forEach((b) => { b.disabled = true; }), 0);
    });
  }
});
