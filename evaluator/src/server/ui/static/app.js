// The admin UI's only script: confirmation of destructive forms, and the environment banner's
// colour (set from a data attribute, as the content security policy allows no inline style).
"use strict";
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
document.addEventListener("DOMContentLoaded", () => {
  for (const banner of document.querySelectorAll(".banner[data-color]")) {
    banner.style.setProperty("--banner", banner.dataset.color);
  }
});
