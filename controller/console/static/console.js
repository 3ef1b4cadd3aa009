// The console's one script: refresh the page's live part from the same URL every few
// seconds while the tab is visible. No framework, nothing inline (the page's CSP).
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!live || !seconds) return;
  const status = document.querySelector("[data-updated]");
  const stateOf = (root) => {
    const el = root.querySelector("[data-state]");
    return el ? el.textContent.trim() : null;
  };
  async function refresh() {
    if (document.hidden) return;
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "live");
    try {
      const reply = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!reply.ok) {
        if (status) status.textContent = "live: the console answered " + reply.status;
        return;
      }
      const html = await reply.text();
      const before = stateOf(live);
      if (live.contains(document.activeElement)) return; // do not pull focus away
      live.innerHTML = html;
      const after = stateOf(live);
      if (before !== null && after !== null && before !== after && document.querySelector("[data-actions]")) {
        window.location.reload(); // the actions a new state allows
        return;
      }
      if (status) status.textContent = "live: updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (status) status.textContent = "live: cannot reach the console (" + error.message + ")";
    }
  }
  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
})();
