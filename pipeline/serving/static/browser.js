// The archive browser: pages of the manifest (api/rows), lazy thumbnails (thumb/KEY), a click
// rehydrates the full image (image/KEY) and shows its size and the time it took. No build step.
// With a token, the browser's own Basic login carries it (any user name, the token as password):
// it is sent with every request of this origin, <img> included, and never appears in a URL.
"use strict";
const PAGE_SIZE = 48;
const state = { offset: 0, total: 0, status: "", prefix: "" };
const $ = (id) => document.getElementById(id);

const path = (key) => key.split("/").map(encodeURIComponent).join("/");
const bytes = (n) => n == null ? "?" : n >= 1e6 ? (n / 1e6).toFixed(2) + " MB" : (n / 1e3).toFixed(1) + " kB";
const db = (x) => x == null ? null : (x === "inf" ? "exact" : x.toFixed(2) + " dB");

function fidelity(r) {
  if (r.psnr_y != null) return `PSNR-Y ${db(r.psnr_y)}` + (r.target_psnr != null ? ` (target ${db(r.target_psnr)})` : "");
  if (r.roundtrip_psnr != null) return `round trip ${db(r.roundtrip_psnr)}`;
  return "fidelity not recorded";
}

function card(r) {
  const el = document.createElement("div");
  const cls = r.status.split("_")[0];
  el.className = `card ${cls}`;
  el.dataset.key = r.key;
  el.dataset.status = r.status;
  const facts = [];
  if (r.width) facts.push(`${r.width}&times;${r.height}` + (r.small_width ? ` &rarr; ${r.small_width}&times;${r.small_height} ${r.small_format}` : ""));
  if (cls === "ok") {
    facts.push((r.fidelity ? `${r.fidelity}: ` : "") + fidelity(r));
    const pct = r.source_bytes ? Math.round(100 * r.bytes_saved / r.source_bytes) : null;
    facts.push(`${bytes(r.source_bytes)} &rarr; ${bytes(r.stored_bytes)}, saved ${bytes(r.bytes_saved)}` + (pct != null ? ` (${pct}%)` : ""));
  }
  el.innerHTML = (cls === "ok" ? `<div class="frame"><img class="thumb" loading="lazy" decoding="async" alt=""></div>` : "") +
    `<div class="key"></div><span class="badge"></span><div class="facts">${facts.join("<br>")}</div>` +
    (r.error ? `<div class="error"></div>` : "");
  el.querySelector(".key").textContent = r.key;      // keys and messages are text, never markup
  el.querySelector(".badge").textContent = r.status;
  if (r.error) el.querySelector(".error").textContent = r.error;
  if (cls === "ok") {
    const img = el.querySelector("img");
    img.src = "thumb/" + path(r.key);
    img.alt = r.key;
    el.addEventListener("click", () => openImage(r));
  }
  return el;
}

async function load() {
  const q = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE, status: state.status, prefix: state.prefix });
  $("message").textContent = "";
  const res = await fetch("api/rows?" + q);
  if (!res.ok) { $("message").textContent = `listing failed: ${res.status}`; return; }
  const page = await res.json();
  state.total = page.total;
  $("grid").replaceChildren(...page.rows.map(card));
  const end = Math.min(state.offset + page.rows.length, page.total);
  $("page-info").textContent = page.total ? ` ${state.offset + 1}-${end} of ${page.total} ` : " nothing matches ";
  $("counts").textContent = `ok ${page.counts.ok} · skipped ${page.counts.skipped} · failed ${page.counts.failed}`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = end >= page.total;
}

async function openImage(r) {
  const viewer = $("viewer"), img = $("full-image"), info = $("full-info");
  viewer.classList.add("open");
  img.removeAttribute("src");
  img.dataset.key = r.key;
  info.textContent = `rehydrating ${r.key} …`;
  const started = performance.now();
  const res = await fetch("image/" + path(r.key) + ($("preview").checked ? "?preview=1" : ""));
  if (!res.ok) { info.textContent = `${r.key}: ${res.status} ${(await res.json()).detail}`; return; }
  const blob = await res.blob();
  const ms = performance.now() - started;
  const server = (res.headers.get("Server-Timing") || "").match(/dur=([\d.]+)/);
  img.onload = () => {
    info.textContent = `${r.key}: ${img.naturalWidth}×${img.naturalHeight} px, ${bytes(blob.size)}, ${ms.toFixed(0)} ms` +
      (server ? ` (rehydrate ${Number(server[1]).toFixed(0)} ms on the server)` : " (cached)");
    img.dataset.loaded = "1";
  };
  img.dataset.loaded = "";
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
}

$("apply").onclick = () => { state.status = $("status-filter").value; state.prefix = $("prefix-filter").value; state.offset = 0; load(); };
$("prefix-filter").addEventListener("keydown", (e) => { if (e.key === "Enter") $("apply").click(); });
$("prev").onclick = () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); load(); };
$("next").onclick = () => { state.offset += PAGE_SIZE; load(); };
$("close").onclick = () => $("viewer").classList.remove("open");
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("close").click(); });
load();
