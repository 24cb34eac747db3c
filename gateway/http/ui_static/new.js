/* /ui/campaigns/new: upload a list, preview the message, create the draft, show the report. */
"use strict";

(function () {
  const S = window.SMSGW;
  const { h, $ } = S;
  const HEAD_BYTES = 64 * 1024; // enough of a CSV for its header and first row
  let templates = new Map();
  let firstRow = null; // {column: value} of the file's first data row (CSV only)
  let previewTimer = null;
  let previewSeq = 0;
  let classTouched = false;
  let senderTouched = false;

  function sourceKind() {
    return document.querySelector('input[name="source_kind"]:checked').value;
  }

  function showSourceKind() {
    const kind = sourceKind();
    $("text-field").hidden = kind !== "text";
    $("template-field").hidden = kind !== "template";
    schedulePreview();
  }

  // --- templates ----------------------------------------------------------------------

  async function loadTemplates() {
    const select = $("f-template");
    try {
      const data = await S.getJson("/v1/templates");
      const usable = (data.templates || []).filter((t) => !t.error &&
        !String(t.name).startsWith("keyword_"));
      templates = new Map(usable.map((t) => [t.name, t]));
      for (const t of usable) {
        select.append(h("option", { value: t.name },
          `${t.name} — ${t.description || ""} (${t.class})`));
      }
    } catch (e) {
      $("template-hint").textContent = "Templates cannot be listed with this key (" +
        S.describe(e) + "); write the text instead.";
    }
  }

  function templateChosen() {
    const t = templates.get($("f-template").value);
    $("template-hint").textContent = t
      ? `Class ${t.class}, sender ${t.sender}, at most ${t.max_segments ?? "—"} parts.`
      : "";
    if (t && !classTouched) $("f-class").value = t.class;
    if (t && !senderTouched) $("f-sender").value = t.sender || "";
    schedulePreview();
  }

  // --- the file's columns -------------------------------------------------------------

  /** The first `limit` records of CSV text (quotes, doubled quotes, CRLF; , or ; separated). */
  function parseCsv(text, limit) {
    const firstLine = text.split(/\r?\n/, 1)[0] || "";
    const sep = (firstLine.split(";").length > firstLine.split(",").length) ? ";" : ",";
    const records = [];
    let record = [];
    let field = "";
    let quoted = false;
    for (let i = 0; i < text.length && records.length < limit; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
        else if (c === '"') quoted = false;
        else field += c;
      } else if (c === '"') quoted = true;
      else if (c === sep) { record.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        record.push(field); field = "";
        if (record.some((v) => v.trim())) records.push(record);
        record = [];
      } else field += c;
    }
    if (records.length < limit && (field || record.length)) {
      record.push(field);
      records.push(record);
    }
    return records;
  }

  async function readColumns() {
    const file = $("f-file").files[0];
    firstRow = null;
    $("columns").hidden = true;
    S.replace($("column-chips"));
    S.replace($("column-list"));
    if (!file) return;
    if (!/\.csv$/i.test(file.name) && file.type !== "text/csv") {
      schedulePreview();
      return; // an Excel file is read by the gateway
    }
    const encoding = $("f-encoding").value === "cp1258" ? "windows-1258" : "utf-8";
    let text;
    try {
      const buf = await file.slice(0, HEAD_BYTES).arrayBuffer();
      text = new TextDecoder(encoding).decode(buf).replace(/^\uFEFF/, "");
    } catch (e) {
      return;
    }
    const [header, row] = parseCsv(text, 2);
    if (!header) return;
    for (const name of header.map((c) => c.trim()).filter(Boolean)) {
      const variable = headerKey(name);
      if (!variable) continue;
      $("column-chips").append(h("button", {
        type: "button", class: "chip", title: `column "${name}": insert into the text`,
        onclick: () => insertVariable(variable),
      }, `{{ ${variable} }}`), " ");
      $("column-list").append(h("option", { value: name }));
    }
    $("columns").hidden = !$("column-chips").childElementCount;
    if (row) {
      firstRow = {};
      header.forEach((name, i) => {
        if (headerKey(name)) firstRow[headerKey(name)] = (row[i] ?? "").trim();
      });
    }
    schedulePreview();
  }

  /** The variable a column becomes, as the gateway names it: "Họ tên" → "ho_ten". */
  function headerKey(name) {
    return name.normalize("NFD").replace(/\p{M}/gu, "").normalize("NFC")
      .replace(/đ/g, "d").replace(/Đ/g, "D").toLowerCase()
      .replace(/[^0-9a-z]+/g, "_").replace(/^_+|_+$/g, "");
  }

  function insertVariable(variable) {
    const area = $("f-text");
    if (sourceKind() !== "text") {
      document.querySelector('input[name="source_kind"][value="text"]').checked = true;
      showSourceKind();
    }
    const snippet = `{{ ${variable} }}`;
    const start = area.selectionStart ?? area.value.length;
    const end = area.selectionEnd ?? area.value.length;
    area.setRangeText(snippet, start, end, "end");
    area.focus();
    textChanged();
  }

  // --- preview ------------------------------------------------------------------------

  function textChanged() {
    const text = $("f-text").value;
    $("text-stats").textContent = text ? `${text.length} characters of template text` : "";
    schedulePreview();
  }

  function schedulePreview() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(preview, 400);
  }

  async function preview() {
    const seq = ++previewSeq;
    const box = $("preview");
    const kind = sourceKind();
    const body = { khong_dau: $("f-khong-dau").checked };
    if (kind === "text") {
      const source = $("f-text").value;
      if (!source.trim() || !firstRow) { box.hidden = true; return; }
      Object.assign(body, { source, data: firstRow, class: $("f-class").value });
    } else {
      const name = $("f-template").value;
      if (!name) { box.hidden = true; return; }
      body.template = name;
      if (firstRow) body.data = firstRow;
    }
    try {
      const r = await S.postJson("/v1/templates/preview", body);
      if (seq !== previewSeq) return;
      $("preview-text").textContent = r.text;
      $("preview-meta").textContent =
        `— ${String(r.encoding).toUpperCase()}, ${r.segments} part${r.segments === 1 ? "" : "s"}, ${r.length} characters`;
      const notes = [...(r.warnings || [])];
      if (r.ucs2_chars && r.ucs2_chars.length && !body.khong_dau) {
        notes.push("Needs UCS-2 because of: " + r.ucs2_chars.slice(0, 12).join(" "));
      }
      $("preview-warnings").textContent = notes.join(" · ");
      box.classList.remove("failed");
    } catch (e) {
      if (seq !== previewSeq) return;
      // only a template that cannot be rendered is worth showing; a key that may not
      // preview (403) or a gateway without previews just has no preview
      if (e.status !== 422 && e.status !== 400) { box.hidden = true; return; }
      $("preview-text").textContent = S.describe(e);
      $("preview-meta").textContent = "— cannot render";
      $("preview-warnings").textContent = "";
      box.classList.add("failed");
    }
    box.hidden = false;
  }

  // --- submit -------------------------------------------------------------------------

  function clearInvalid(form) {
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function markInvalid(form, field) {
    const names = { file: "f-file", name: "f-name", text: "f-text", template: "f-template",
      class: "f-class", sender: "f-sender", advertiser: "f-advertiser",
      schedule_at: "f-schedule", msisdn_column: "f-msisdn-column", encoding: "f-encoding",
      khong_dau: "f-khong-dau" };
    const el = field && $(names[field] || "");
    if (el) { el.setAttribute("aria-invalid", "true"); el.focus(); }
  }

  /** The multipart body, or throws {field, message} for what is obviously missing. */
  function buildForm() {
    const file = $("f-file").files[0];
    const need = (field, message) => { const e = new Error(message); e.field = field; throw e; };
    if (!file) need("file", "Choose the CSV or Excel file with the numbers.");
    const name = $("f-name").value.trim();
    if (!name) need("name", "Give the campaign a name.");
    const form = new FormData();
    form.append("name", name);
    if (sourceKind() === "text") {
      const text = $("f-text").value;
      if (!text.trim()) need("text", "Write the message text (or choose a template).");
      form.append("text", text);
    } else {
      const template = $("f-template").value;
      if (!template) need("template", "Choose a template (or write the text).");
      form.append("template", template);
    }
    form.append("class", $("f-class").value);
    const sender = $("f-sender").value.trim();
    if (sender) form.append("sender", sender); // else the gateway's default sender
    const optional = { advertiser: "f-advertiser", schedule_at: "f-schedule",
      msisdn_column: "f-msisdn-column" };
    for (const [field, id] of Object.entries(optional)) {
      const value = $(id).value.trim();
      if (value) form.append(field, value);
    }
    form.append("encoding", $("f-encoding").value);
    form.append("khong_dau", $("f-khong-dau").checked ? "true" : "false");
    form.append("file", file, file.name); // last: the gateway can stream it after the fields
    return form;
  }

  function showReport(c) {
    $("report-title").textContent = `Validation report — ${c.name}`;
    $("open-campaign").href = `${S.PREFIX}/campaigns/${encodeURIComponent(c.id)}`;
    S.renderUpload($("report-upload"), c.upload);
    S.renderEstimate($("report-estimate"), c.estimate);
    S.renderSamples($("report-samples"), c.samples);
    $("report").hidden = false;
    $("report").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  /** A file with no usable row is refused (422) with its report: show why, row by row. */
  function showRefusedRows(body) {
    const box = $("form-report");
    if (!body || !body.upload) { box.hidden = true; return; }
    const rows = Array.isArray(body.rejected_rows) ? body.rejected_rows : [];
    const ofKind = (kind) => rows.filter((r) => (r.kind || "rejected") === kind);
    S.renderUpload($("form-report-rows"), Object.assign({}, body.upload, {
      rejected_rows: ofKind("rejected"), duplicate_rows: ofKind("duplicate"),
      suppressed_rows: ofKind("suppressed"),
    }));
    box.hidden = false;
  }

  async function submit(ev) {
    ev.preventDefault();
    const form = ev.target;
    clearInvalid(form);
    S.showError($("form-error"), "");
    $("form-report").hidden = true;
    let body;
    try {
      body = buildForm();
    } catch (e) {
      S.showError($("form-error"), e.message);
      markInvalid(form, e.field);
      return;
    }
    const button = $("submit");
    const bar = $("upload-progress");
    button.disabled = true;
    bar.value = 0;
    bar.hidden = false;
    $("upload-status").textContent = "Uploading…";
    try {
      const campaign = await S.upload("/v1/campaigns", body, (loaded, total) => {
        bar.value = Math.round((loaded / total) * 100);
        if (loaded >= total) $("upload-status").textContent = "Checking the numbers…";
      });
      $("upload-status").textContent = "Saved as a draft.";
      showReport(campaign);
    } catch (e) {
      $("upload-status").textContent = "";
      S.showError($("form-error"), S.describe(e, "The upload was"));
      showRefusedRows(e.body);
      markInvalid(form, e.field);
    } finally {
      button.disabled = false;
      bar.hidden = true;
    }
  }

  function init() {
    for (const radio of document.querySelectorAll('input[name="source_kind"]')) {
      radio.addEventListener("change", showSourceKind);
    }
    $("f-template").addEventListener("change", templateChosen);
    $("f-file").addEventListener("change", readColumns);
    $("f-encoding").addEventListener("change", readColumns);
    $("f-text").addEventListener("input", textChanged);
    $("f-khong-dau").addEventListener("change", schedulePreview);
    $("f-class").addEventListener("change", () => { classTouched = true; schedulePreview(); });
    $("f-sender").addEventListener("input", () => { senderTouched = true; });
    $("campaign-form").addEventListener("submit", submit);
    showSourceKind();
    textChanged();
    loadTemplates();
  }

  S.start(init);
})();
