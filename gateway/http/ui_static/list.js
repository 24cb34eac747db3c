/* /ui/: the campaigns, newest first, with status and progress; refreshed every few seconds. */
"use strict";

(function () {
  const S = window.SMSGW;
  const { h, $ } = S;
  const REFRESH_MS = Math.max(2000, S.POLL_MS * 3);

  function messages(c) {
    const p = c.progress || {};
    if (p.total !== undefined && p.total !== null) return S.num(p.total);
    if (c.upload && c.upload.accepted !== undefined) return S.num(c.upload.accepted);
    if (c.estimate && c.estimate.messages !== undefined) return S.num(c.estimate.messages);
    return "—";
  }

  function row(c) {
    const p = c.progress || {};
    const link = h("a", { href: `${S.PREFIX}/campaigns/${encodeURIComponent(c.id)}` },
      c.name || "(no name)");
    const pct = p.percent !== undefined && p.percent !== null
      ? S.progressBar(p.percent, `progress of ${c.name}`) : h("span", { class: "muted" }, "—");
    return h("tr", { dataset: { id: c.id, status: c.status } },
      h("td", {}, link),
      h("td", {}, c.class || ""),
      h("td", {}, S.statusBadge(c.status)),
      h("td", {}, S.time(c.created_at)),
      h("td", { class: "num" }, messages(c)),
      h("td", { class: "progress-col" }, pct));
  }

  async function refresh() {
    try {
      const data = await S.getJson("/v1/campaigns");
      const list = Array.isArray(data.campaigns) ? data.campaigns : [];
      S.replace(document.querySelector("#campaigns tbody"), list.map(row));
      $("campaigns").hidden = !list.length;
      $("list-empty").hidden = list.length > 0;
      S.showError($("list-error"), "");
      $("list-updated").textContent = "Updated " + S.clock(new Date());
    } catch (e) {
      S.showError($("list-error"), S.describe(e, "Listing the campaigns"));
      if (e.status === 401) return; // signed out: stop refreshing
    }
    setTimeout(refresh, document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }

  S.start(refresh);
})();
