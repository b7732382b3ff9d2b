// Pollux portal: the status page refreshes itself; buttons post to the JSON API.
"use strict";

function refreshStatus() {
  const box = document.querySelector("#status[data-refresh]");
  if (!box) return;
  const url = box.dataset.refresh;
  setInterval(async () => {
    try {
      const r = await fetch(url, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      box.innerHTML = await r.text();
      box.classList.remove("stale");
    } catch (e) {
      // During a failover the proxy has no active for a moment: keep the last view.
      box.classList.add("stale");
    }
  }, 2000);
}

async function send(method, url, body) {
  const init = { method, headers: { "content-type": "application/json" } };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(url, init);
  if (!r.ok) {
    let message = "HTTP " + r.status;
    try { message = (await r.json()).error || message; } catch (_) {}
    throw new Error(message);
  }
}

document.addEventListener("click", async (e) => {
  const t = e.target;
  if (!(t instanceof HTMLElement)) return;
  if (t.dataset.ack) {
    const by = (document.getElementById("ack-by") || {}).value || "operator";
    try { await send("POST", "/api/v1/events/" + t.dataset.ack + "/ack", { by }); location.reload(); }
    catch (err) { t.textContent = err.message; }
  } else if (t.dataset.deleteRule) {
    try { await send("DELETE", "/api/v1/thresholds/" + t.dataset.deleteRule); location.reload(); }
    catch (err) { t.textContent = err.message; }
  }
});

document.addEventListener("submit", async (e) => {
  const form = e.target;
  if (!(form instanceof HTMLFormElement) || form.id !== "new-rule") return;
  e.preventDefault();
  const f = new FormData(form);
  const rule = { family: f.get("family"), metric: f.get("metric"), op: f.get("op"),
                 value: Number(f.get("value")), for_polls: Number(f.get("for_polls")), severity: f.get("severity") };
  for (const key of ["name", "device", "item"]) if (f.get(key)) rule[key] = f.get(key);
  try { await send("POST", "/api/v1/thresholds", rule); location.reload(); }
  catch (err) { document.getElementById("rule-error").textContent = err.message; }
});

// The events page: the acknowledger's name is remembered in this browser, and the page reloads
// itself every 30 s unless the name is being typed.
function eventsPage() {
  const by = document.getElementById("ack-by");
  if (!by) return;
  by.value = localStorage.getItem("pollux.ack-by") || by.value;
  by.addEventListener("change", () => localStorage.setItem("pollux.ack-by", by.value));
  setInterval(() => { if (document.activeElement !== by) location.reload(); }, 30000);
}

document.addEventListener("DOMContentLoaded", () => { refreshStatus(); eventsPage(); });
