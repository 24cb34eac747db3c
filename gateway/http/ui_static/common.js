/* smsgw campaign pages: what every page shares.
 *
 * The API key lives in sessionStorage (this tab only) and goes out as
 * "Authorization: Bearer" on every API call; the pages hold no data of their own.
 * Data is only ever put into the page as text (never innerHTML), and the page's
 * Content-Security-Policy allows scripts from this origin only.
 */
"use strict";

(function () {
  const KEY_STORAGE = "smsgw.apiKey";
  const body = document.body;
  const TZ = body.dataset.timezone || "Asia/Ho_Chi_Minh";
  const PREFIX = body.dataset.prefix || "/ui";
  const POLL_MS = Number(body.dataset.pollMs) || 1000;
  let pageInit = null;

  // --- the key -------------------------------------------------------------------------

  function getKey() {
    try { return sessionStorage.getItem(KEY_STORAGE); } catch (e) { return null; }
  }
  function setKey(key) { sessionStorage.setItem(KEY_STORAGE, key); }
  function clearKey() { try { sessionStorage.removeItem(KEY_STORAGE); } catch (e) { /* */ } }

  // --- DOM ----------------------------------------------------------------------------

  /** h("td", {class: "num"}, "text", otherNode): children are text or nodes, never HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "dataset") Object.assign(el.dataset, value);
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  function replace(el, ...children) { el.replaceChildren(); return append(el, children); }
  function $(id) { return document.getElementById(id); }
  function showError(el, message) {
    el.textContent = message || "";
    el.hidden = !message;
  }

  // --- formatting ---------------------------------------------------------------------

  const numberFmt = new Intl.NumberFormat("vi-VN");
  const timeFmt = new Intl.DateTimeFormat("en-GB", {
    timeZone: TZ, day: "2-digit", month: "2-digit", year: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });
  const clockFmt = new Intl.DateTimeFormat("en-GB", {
    timeZone: TZ, hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });

  function num(n) {
    return n === null || n === undefined || Number.isNaN(Number(n)) ? "—" : numberFmt.format(n);
  }
  function time(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : timeFmt.format(d);
  }
  function clock(d) { return clockFmt.format(d); }
  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
    let s = Math.max(0, Math.round(Number(seconds)));
    if (s < 60) return s + " s";
    const hours = Math.floor(s / 3600); s -= hours * 3600;
    const minutes = Math.floor(s / 60); s -= minutes * 60;
    if (hours) return `${hours} h ${String(minutes).padStart(2, "0")} min`;
    return `${minutes} min ${String(s).padStart(2, "0")} s`;
  }
  function percent(p) {
    const v = Math.max(0, Math.min(100, Number(p) || 0));
    return (v >= 99.95 || v === 0 ? v.toFixed(0) : v.toFixed(1)) + " %";
  }

  // --- API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, field, requestId, body) {
      super(message);
      this.status = status;
      this.field = field || null;
      this.requestId = requestId || null;
      this.body = body || null; // the whole JSON answer (a 422 upload carries its report)
    }
    /** "HTTP 403: this campaign was created with your key ..." */
    describe(what) {
      const where = this.field && this.field !== "Authorization" ? ` (field ${this.field})` : "";
      // the request id only matters for a server error: it finds the traceback in the log
      const rid = this.requestId && this.status >= 500 ? ` [request ${this.requestId}]` : "";
      const head = what ? `${what} refused — ` : "";
      return this.status
        ? `${head}HTTP ${this.status}: ${this.message}${where}${rid}`
        : `${head}${this.message}`;
    }
  }

  /** A message for any failure: the API's own words when it answered. */
  function describe(e, what) {
    if (e instanceof ApiError) return e.describe(what);
    return (what ? what + " failed — " : "") + ((e && e.message) || String(e));
  }

  async function errorOf(resp) {
    let message = `${resp.status} ${resp.statusText}`.trim();
    let field = null;
    let requestId = resp.headers.get("X-Request-Id");
    let data = null;
    try {
      data = await resp.json();
      const err = data && data.error;
      if (err && typeof err === "object") {
        message = err.reason || err.message || message;
        field = err.field || null;
        requestId = err.request_id || requestId;
      } else if (typeof err === "string") {
        message = err;
      }
    } catch (e) { /* not JSON: keep the status line */ }
    return new ApiError(resp.status, message, field, requestId, data);
  }

  /** fetch(path) with the bearer key; rejects with ApiError; resolves to the Response. */
  async function request(method, path, options) {
    const opts = options || {};
    const key = opts.key || getKey();
    const headers = { Accept: opts.accept || "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    let payload;
    if (opts.form) payload = opts.form;
    else if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(opts.json);
    }
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, body: payload, cache: "no-store", credentials: "omit",
        redirect: "error",
      });
    } catch (e) {
      throw new ApiError(0, "cannot reach the gateway (" + e.message + ")");
    }
    if (!resp.ok) {
      const err = await errorOf(resp);
      if (resp.status === 401 && !opts.key) signedOut(err.message);
      throw err;
    }
    return resp;
  }
  async function getJson(path) { return (await request("GET", path)).json(); }
  async function postJson(path, json) { return (await request("POST", path, { json })).json(); }

  /** multipart POST with upload progress (fetch has none); resolves to the parsed JSON. */
  function upload(path, form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.setRequestHeader("Authorization", "Bearer " + getKey());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.responseType = "text";
      if (onProgress) {
        xhr.upload.addEventListener("progress", (ev) => {
          if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
        });
      }
      xhr.addEventListener("error", () => reject(new ApiError(0, "cannot reach the gateway")));
      xhr.addEventListener("load", () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { /* keep null */ }
        if (xhr.status >= 200 && xhr.status < 300 && data) { resolve(data); return; }
        const err = data && data.error && typeof data.error === "object" ? data.error : {};
        const e = new ApiError(xhr.status, err.reason || err.message ||
          `${xhr.status} ${xhr.statusText}`, err.field, err.request_id ||
          xhr.getResponseHeader("X-Request-Id"), data);
        if (xhr.status === 401) signedOut(e.message);
        reject(e);
      });
      xhr.send(form);
    });
  }

  /** Save a response body as a file (a plain link cannot carry the bearer header). */
  async function download(path, fallbackName) {
    const resp = await request("GET", path, { accept: "text/csv" });
    const blob = await resp.blob();
    const disposition = resp.headers.get("Content-Disposition") || "";
    const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
    const name = match ? decodeURIComponent(match[1]) : fallbackName;
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return { name, size: blob.size };
  }

  // --- sign in / out ------------------------------------------------------------------

  function signedOut(reason) {
    clearKey();
    showSignIn(reason ? "Signed out: " + reason : "");
  }

  function showSignIn(message) {
    $("content").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    showError($("signin-error"), message);
    $("api-key").focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    if (!key) { showError($("signin-error"), "Paste an API key first."); return; }
    const button = $("signin-button");
    button.disabled = true;
    try {
      // Only an unknown or revoked key is refused here; a key lacking a scope signs in and
      // sees the API's explanation where it is refused.
      await request("GET", "/v1/campaigns", { key });
    } catch (e) {
      if (e.status === 401 || e.status === 0) {
        showError($("signin-error"), e.describe());
        button.disabled = false;
        return;
      }
    }
    setKey(key);
    input.value = "";
    location.reload();
  }

  function signOut() {
    clearKey();
    location.reload();
  }

  function shownKey(key) {
    // smsgw_ + the 8 characters the gateway shows as the key's prefix
    return key.length > 14 ? key.slice(0, 14) + "…" : key.slice(0, 4) + "…";
  }

  function boot() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    const key = getKey();
    if (!key) { showSignIn(""); return; }
    $("who-key").textContent = shownKey(key);
    $("who").hidden = false;
    $("signin").hidden = true;
    $("content").hidden = false;
    if (pageInit) pageInit();
  }

  // --- shared views -------------------------------------------------------------------

  const STATUS_HELP = {
    draft: "uploaded, waiting for approval",
    approved: "approved, ready to start",
    scheduled: "approved, starts by itself at the scheduled time",
    running: "sending",
    paused: "paused: nothing more is released until resumed",
    completed: "every message has been sent and has a final status",
    cancelled: "cancelled: messages not yet sent will not be sent",
  };

  function statusBadge(status) {
    return h("span", { class: "badge status-" + status, title: STATUS_HELP[status] || "" },
      status);
  }

  function progressBar(pct, label) {
    const value = Math.max(0, Math.min(100, Number(pct) || 0));
    const bar = h("div", { class: "bar" });
    bar.style.width = value + "%";
    return h("div", {
      class: "progress small", role: "progressbar", "aria-valuemin": 0,
      "aria-valuemax": 100, "aria-valuenow": Math.round(value),
      "aria-label": label || "progress",
    }, bar, h("span", { class: "label" }, percent(value)));
  }

  function table(headers, rows, opts) {
    const o = opts || {};
    const numeric = new Set(o.numeric || []);
    return h("table", { class: "table" + (o.compact ? " compact" : ""), id: o.id },
      h("thead", {}, h("tr", {}, headers.map((t, i) =>
        h("th", { class: numeric.has(i) ? "num" : null }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
        h("td", { class: numeric.has(i) ? "num" : null }, c))))));
  }

  function stat(label, value, extra) {
    return h("div", { class: "stat" + (extra ? " " + extra : "") },
      h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
  }

  /** The validation report of an upload: counts and the rows that did not become messages. */
  function renderUpload(el, up) {
    if (!up || typeof up !== "object") { replace(el, h("p", { class: "muted" }, "—")); return; }
    const sup = up.suppressed || {};
    const suppressedTotal = Object.values(sup).reduce((a, b) => a + (Number(b) || 0), 0);
    const stats = h("div", { class: "stats", id: "upload-stats" },
      stat("rows in the file", num(up.rows)),
      stat("accepted", num(up.accepted), "ok"),
      stat("duplicates", num(up.duplicates), up.duplicates ? "warn" : ""),
      stat("rejected", num(up.rejected), up.rejected ? "bad" : ""),
      stat("suppressed", num(suppressedTotal), suppressedTotal ? "warn" : ""));
    const parts = [stats];
    if (suppressedTotal) {
      parts.push(h("p", { class: "muted" }, "Suppressed: " + Object.entries(sup)
        .map(([why, n]) => `${why.replace(/_/g, " ")} ${num(n)}`).join(", ") +
        " (advertising is never sent to numbers that refused it or are on the Do-Not-Call list)."));
    }
    const groups = [
      ["Rejected", "rejected_rows", up.rejected],
      ["Duplicates", "duplicate_rows", up.duplicates],
      ["Suppressed", "suppressed_rows", suppressedTotal],
    ];
    for (const [title, key, total] of groups) {
      const rows = Array.isArray(up[key]) ? up[key] : [];
      if (!rows.length) continue;
      const more = Number(total) > rows.length ? ` (first ${num(rows.length)} of ${num(total)})` : "";
      parts.push(h("details", { open: key === "rejected_rows", class: "rows", dataset: { kind: key } },
        h("summary", {}, `${title}: ${num(rows.length)} row${rows.length === 1 ? "" : "s"}${more}`),
        table(["Line", "Value", "Reason"],
          rows.map((r) => [num(r.line), r.value ?? "", r.reason ?? ""]),
          { numeric: [0], compact: true, id: "rows-" + key })));
    }
    replace(el, parts);
  }

  function renderEstimate(el, est) {
    if (!est || typeof est !== "object") { replace(el, h("p", { class: "muted" }, "—")); return; }
    const enc = est.by_encoding || {};
    const items = [
      ["Messages", num(est.messages)],
      ["Segments (SMS parts)", num(est.segments)],
      ["By encoding", Object.entries(enc).map(([k, v]) => `${k.toUpperCase()} ${num(v)}`).join(", ") || "—"],
      ["Billed segments", num(est.cost_segments)],
      ["Send rate", est.tps ? `${num(est.tps)} segments/s` : "—"],
      ["Sending takes", duration(est.send_seconds)],
      ["Starts", time(est.starts_at)],
      ["Finishes about", time(est.eta_at)],
      ["Send window", est.window || "any time (care)"],
    ];
    replace(el, h("dl", { class: "dl", id: "estimate-list" },
      items.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  function renderSamples(el, samples) {
    if (!Array.isArray(samples) || !samples.length) {
      replace(el, h("p", { class: "muted" }, "No samples.")); return;
    }
    replace(el, table(["To", "Text", "Encoding", "Parts", "Chars"],
      samples.map((s) => [s.msisdn ?? "", h("div", { class: "sms" }, s.text ?? ""),
        String(s.encoding || "").toUpperCase(), num(s.segments), num(s.chars)]),
      { numeric: [3, 4], id: "samples-table" }));
  }

  window.SMSGW = {
    PREFIX, POLL_MS, TZ, ApiError, describe,
    h, append, replace, $, showError,
    num, time, clock, duration, percent,
    request, getJson, postJson, upload, download, getKey,
    statusBadge, progressBar, table, stat, renderUpload, renderEstimate, renderSamples,
    STATUS_HELP,
    /** The page's entry point, run once the user is signed in. */
    start(fn) { pageInit = fn; },
  };

  document.addEventListener("DOMContentLoaded", boot);
})();
