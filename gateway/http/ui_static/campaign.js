/* /ui/campaigns/{id}: one campaign — actions, live progress, chart, samples, report. */
"use strict";

(function () {
  const S = window.SMSGW;
  const { h, $ } = S;
  const SVG = "http://www.w3.org/2000/svg";
  const COUNT_ORDER = ["held", "queued", "submitting", "submitted", "delivered",
    "undelivered", "expired", "rejected", "failed", "cancelled"];
  const COUNT_KIND = { delivered: "ok", undelivered: "bad", expired: "bad", rejected: "bad",
    failed: "bad", cancelled: "warn" };
  const TERMINAL = new Set(["completed", "cancelled"]);
  const LIVE = new Set(["running", "paused", "scheduled"]);
  /** Which statuses each action is offered from (the API has the final word: 409). */
  const ACTIONS = {
    approve: { from: ["draft"], label: "Approve", done: "Approved." },
    start: { from: ["approved"], label: "Start", done: "Started." },
    pause: { from: ["running", "scheduled"], label: "Pause", done: "Paused." },
    resume: { from: ["paused"], label: "Resume", done: "Resumed." },
    cancel: { from: ["draft", "approved", "scheduled", "running", "paused"], label: "Cancel",
      done: "Cancelled." },
  };
  const TIMELINE_EVERY_MS = 2000;

  const id = $("campaign").dataset.campaignId;
  const base = `/v1/campaigns/${encodeURIComponent(id)}`;
  let campaign = null;
  let shownStatus = null;
  let busy = false;
  let timer = null;
  let timelineAt = 0;
  let timelineFinal = false;

  // --- loading ------------------------------------------------------------------------

  async function load() {
    clearTimeout(timer);
    try {
      render(await S.getJson(base));
      S.showError($("load-error"), "");
    } catch (e) {
      S.showError($("load-error"), S.describe(e, "Loading the campaign"));
      if ([401, 403, 404].includes(e.status)) return; // nothing will change by retrying
    }
    schedule();
  }

  /** Sent messages still waiting for their delivery receipt. */
  function awaitingReceipts(c) {
    const counts = (c && c.progress && c.progress.counts) || {};
    return Number(counts.submitted) > 0;
  }

  /** Over, and nothing more will change: no more polling. */
  function settled(c) {
    return Boolean(c) && TERMINAL.has(c.status) && !awaitingReceipts(c);
  }

  function schedule() {
    clearTimeout(timer);
    if (settled(campaign)) return;
    const status = campaign && campaign.status;
    // live campaigns every poll interval, finished ones while receipts still come in, drafts
    // slower (someone else approves them)
    let delay = LIVE.has(status) ? S.POLL_MS : S.POLL_MS * (TERMINAL.has(status) ? 2 : 3);
    if (document.hidden) delay *= 5;
    timer = setTimeout(load, delay);
  }

  function render(c) {
    campaign = c;
    document.title = `${c.name} · smsgw`;
    $("c-name").textContent = c.name;
    S.replace($("c-status"), c.status);
    $("c-status").className = "badge status-" + c.status;
    $("c-status").title = S.STATUS_HELP[c.status] || "";
    $("campaign").dataset.status = c.status;
    renderButtons();
    renderProgress(c.progress || {});
    if (c.status !== shownStatus) { // these change only with the status
      if (shownStatus !== null) $("action-hint").textContent = "";
      shownStatus = c.status;
      renderDetails(c);
      S.renderEstimate($("estimate"), c.estimate);
      S.renderSamples($("samples"), c.samples);
      S.renderUpload($("upload"), c.upload);
    }
    maybeTimeline(c);
  }

  // --- actions ------------------------------------------------------------------------

  function renderButtons() {
    const status = campaign ? campaign.status : null;
    for (const button of document.querySelectorAll("#actions button[data-action]")) {
      const rule = ACTIONS[button.dataset.action];
      const allowed = rule.from.includes(status);
      button.disabled = busy || !allowed;
      button.title = allowed ? "" : `not possible while the campaign is ${status}`;
    }
  }

  async function act(action) {
    const rule = ACTIONS[action];
    if (action === "cancel" && !window.confirm(
      "Cancel this campaign? Messages not sent yet will never be sent.")) return;
    busy = true;
    renderButtons();
    S.showError($("action-error"), "");
    $("action-hint").textContent = rule.label + "…";
    try {
      const c = await S.postJson(`${base}/${action}`, {});
      busy = false;
      render(c);
      $("action-hint").textContent = rule.done;
      schedule();
    } catch (e) {
      $("action-hint").textContent = "";
      S.showError($("action-error"), S.describe(e, rule.label));
      busy = false;
      load();
    }
  }

  // --- progress -----------------------------------------------------------------------

  function renderProgress(p) {
    const pct = Math.max(0, Math.min(100, Number(p.percent) || 0));
    const delivered = Math.max(0, Math.min(pct, Number(p.delivered_percent) || 0));
    $("progress").setAttribute("aria-valuenow", String(Math.round(pct)));
    $("progress").setAttribute("aria-valuetext", S.percent(pct));
    $("progress-bar").style.width = pct + "%";
    $("progress-delivered").style.width = delivered + "%";
    $("progress-label").textContent = S.percent(pct);
    const parts = [`${S.num(p.done)} of ${S.num(p.total)} messages finished`,
      `${S.num(p.sent)} sent`, `${S.percent(delivered)} delivered`];
    if (campaign && campaign.status === "running") {
      parts.push(`${S.num(Math.round(Number(p.rate_per_s) || 0))} SMS/s`);
      if (p.eta_seconds !== null && p.eta_seconds !== undefined) {
        parts.push(`about ${S.duration(p.eta_seconds)} left`);
      }
    }
    $("progress-text").textContent = parts.join(" · ");
    const counts = p.counts || {};
    S.replace($("counts"), COUNT_ORDER.filter((k) => k in counts).map((k) =>
      S.stat(k, S.num(counts[k]), counts[k] ? COUNT_KIND[k] || "" : "")));
  }

  function renderDetails(c) {
    const who = (keyId) => (keyId === null || keyId === undefined ? "—" : `API key #${keyId}`);
    const items = [
      ["Class", c.class], ["Sender", c.sender], ["Advertiser", c.advertiser || "—"],
      ["Template", c.template || "(own text)"],
      ["Text", c.template || !c.source ? null : h("div", { class: "sms source" }, c.source)],
      ["File", c.file_name || "—"],
      ["Created", `${S.time(c.created_at)} by ${who(c.created_by)}`],
      ["Approved", c.approved_at ? `${S.time(c.approved_at)} by ${who(c.approved_by)}` : "—"],
      ["Scheduled for", S.time(c.schedule_at)],
      ["Started", S.time(c.started_at)], ["Finished", S.time(c.finished_at)],
    ];
    S.replace($("details"), items.filter(([, v]) => v !== null)
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
  }

  // --- chart --------------------------------------------------------------------------

  async function maybeTimeline(c) {
    const now = Date.now();
    const moving = c.status === "running" || c.status === "paused" ||
      (TERMINAL.has(c.status) && awaitingReceipts(c));
    if (settled(c)) {
      if (timelineFinal) return;
      timelineFinal = true; // one last look once nothing changes any more
    } else if (timelineAt && (now - timelineAt < TIMELINE_EVERY_MS || !moving)) {
      return;
    }
    timelineAt = now;
    try {
      const data = await S.getJson(`${base}/timeline`);
      drawChart(Array.isArray(data.points) ? data.points : []);
    } catch (e) {
      S.replace($("chart"), h("p", { class: "muted" }, S.describe(e, "The timeline")));
    }
  }

  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /** The top of the y axis: 4 whole steps of 1, 2, 2.5 or 5 × 10^k messages. */
  function niceMax(v) {
    const raw = Math.max(1, v / 4);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * p)
      .find((s) => s >= raw && Number.isInteger(s));
    return 4 * step;
  }

  function drawChart(points) {
    const W = 640, H = 220, L = 52, R = 14, T = 28, B = 26;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", id: "chart-svg",
      role: "img", "aria-label": "delivered and failed messages over time" });
    const pts = points.map((p) => ({ t: new Date(p.t).getTime(),
      delivered: Number(p.delivered) || 0, failed: Number(p.failed) || 0 }))
      .filter((p) => Number.isFinite(p.t)).sort((a, b) => a.t - b.t);
    if (!pts.length) {
      root.append(svg("text", { x: W / 2, y: H / 2, class: "chart-empty",
        "text-anchor": "middle" }, "Nothing delivered yet"));
      S.replace($("chart"), root);
      return;
    }
    if (pts[0].delivered || pts[0].failed) {
      pts.unshift({ t: pts[0].t - 10000, delivered: 0, failed: 0 }); // before the first bucket
    }
    const t0 = pts[0].t;
    const t1 = Math.max(pts[pts.length - 1].t, t0 + 1000);
    const yMax = niceMax(Math.max(1, ...pts.map((p) => Math.max(p.delivered, p.failed))));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => H - B - (v / yMax) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" },
        S.num(Math.round(v))));
    }
    for (const [t, anchor] of [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]]) {
      root.append(svg("text", { x: x(t), y: H - 6, "text-anchor": anchor, class: "tick" },
        S.clock(new Date(t))));
    }
    const last = pts[pts.length - 1];
    const series = [["delivered", "line-delivered"], ["failed", "line-failed"]];
    series.forEach(([key, cls], i) => {
      root.append(svg("polyline", { class: cls, "data-series": key,
        points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ") }));
      root.append(svg("circle", { cx: x(last.t), cy: y(last[key]), r: 3, class: cls + " dot" }));
      const lx = L + 8 + i * 150;
      root.append(svg("rect", { x: lx, y: 8, width: 12, height: 4, class: cls + " swatch" }));
      root.append(svg("text", { x: lx + 18, y: 14, class: "legend" },
        `${key} ${S.num(last[key])}`));
    });
    S.replace($("chart"), root);
  }

  // --- report -------------------------------------------------------------------------

  async function downloadReport() {
    const full = $("report-full").checked;
    const button = $("download");
    button.disabled = true;
    S.showError($("download-error"), "");
    $("download-status").textContent = "Preparing…";
    try {
      const saved = await S.download(`${base}/report.csv?masked=${full ? 0 : 1}`,
        `campaign-${id}${full ? "" : "-masked"}.csv`);
      $("download-status").textContent =
        `Saved ${saved.name} (${S.num(Math.ceil(saved.size / 1024))} KB).`;
    } catch (e) {
      $("download-status").textContent = "";
      S.showError($("download-error"), S.describe(e, "The report"));
    } finally {
      button.disabled = false;
    }
  }

  function init() {
    for (const button of document.querySelectorAll("#actions button[data-action]")) {
      button.addEventListener("click", () => act(button.dataset.action));
    }
    $("download").addEventListener("click", downloadReport);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !settled(campaign)) load();
    });
    load();
  }

  S.start(init);
})();
