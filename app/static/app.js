// FSDI web console: plain JavaScript, no build step, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: sessionStorage.getItem("fsdi-key") || "", role: null, picked: [],
                heatOpacity: 60 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// Every API error comes back as {"error": {"code", "message"}}: show the message in plain words.
async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.key}` }, opts.headers || {});
  let resp;
  try {
    resp = await fetch(path, Object.assign({}, opts, { headers }));
  } catch (e) {
    throw new Error("The service cannot be reached. Check the network and try again.");
  }
  if (resp.status === 204) return null;
  const isJson = (resp.headers.get("content-type") || "").includes("json");
  const body = isJson ? await resp.json() : await resp.blob();
  if (!resp.ok) throw new Error(friendly(resp.status, body));
  return body;
}

function friendly(status, body) {
  const msg = body && body.error ? body.error.message : `request failed (${status})`;
  if (status === 401) return "That key is not valid (or was revoked).";
  if (status === 403) return "Your key is not allowed to do this.";
  if (status === 503) return "The service is busy or starting. Try again in a moment.";
  return msg;
}

// <img> cannot send the bearer header, so thumbnails are fetched and shown as blob URLs.
async function thumb(imageId, size = 128) {
  const img = el("img", { alt: `support image ${imageId}`, "data-image-id": imageId });
  api(`/api/v1/images/${imageId}?size=${size}`).then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = "image unavailable"; });
  return img;
}

function showError(id, err) { $(id).textContent = err ? (err.message || String(err)) : ""; }

// ---- sign in -----------------------------------------------------------------------------
async function signIn(key) {
  state.key = key;
  const me = await api("/api/v1/me");
  state.role = me.role;
  state.groups = me.groups;  // a scoped key's groups; null: every group
  sessionStorage.setItem("fsdi-key", key);
  $("#role").textContent = me.role;
  $("#who").hidden = false;
  $("#signin").hidden = true;
  $("#tabs").hidden = false;
  $("#tab-classes-btn").hidden = me.role !== "admin";
  $("#tab-history-btn").hidden = me.role === "machine";
  showTab("inspect");
  await loadGroups();
}

function signOut() {
  sessionStorage.removeItem("fsdi-key");
  location.reload();
}

// The group pickers: Inspect and History choose among the groups that exist (a scoped key:
// its own groups, and nothing else); Classes also takes a new name (free text with these
// as suggestions).
async function loadGroups() {
  let names = [];
  try {
    names = (await api("/api/v1/groups")).items.map((g) => g.name);
  } catch (e) { /* a machine key cannot list groups */ }
  if (state.groups) names = [...new Set([...names, ...state.groups])].sort();
  // An empty service (an admin or operator key sees every group): point at the demo.
  $("#empty-hint").hidden = names.length > 0 || state.role === "machine" || !!state.groups;
  for (const s of document.querySelectorAll(".here")) s.textContent = location.origin;
  if (!names.length) names = ["default"];
  const pick = $("#group");
  const keep = pick.value;
  pick.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(keep)) pick.value = keep;
  const hist = $("#h-group");
  const hkeep = hist.value;
  hist.replaceChildren(el("option", { value: "" }, "all"),
                       ...names.map((n) => el("option", { value: n }, n)));
  hist.value = hkeep;
  $("#groups").replaceChildren(...names.map((n) => el("option", { value: n })));
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.tab === name);
  }
  $("#inspect").hidden = name !== "inspect";
  $("#classes").hidden = name !== "classes";
  $("#history").hidden = name !== "history";
  if (name === "classes") loadClasses();
  if (name !== "classes" && state.role) loadGroups().then(() => { if (name === "history") loadHistory(false); });
}

// ---- inspect ----------------------------------------------------------------------------
function pick(files) {
  state.picked = Array.from(files).filter((f) => f.type.startsWith("image/") || !f.type);
  $("#classify-btn").disabled = state.picked.length === 0;
  $("#classify-btn").textContent = state.picked.length ? `Classify ${state.picked.length} image(s)` : "Classify";
}

async function classify() {
  showError("#inspect-error", null);
  const form = new FormData();
  for (const f of state.picked) form.append("files", f, f.name);
  const group = encodeURIComponent($("#group").value || "default");
  const ev = $("#evidence").checked && state.role !== "machine";
  $("#classify-btn").disabled = true;
  try {
    const res = await api(`/api/v1/classify?group=${group}&top_k=3&evidence=${ev}&heatmap=true`,
                          { method: "POST", body: form });
    renderResults(res, decodeURIComponent(group));
  } catch (e) {
    showError("#inspect-error", e);
  } finally {
    $("#classify-btn").disabled = state.picked.length === 0;
  }
}

// A grey heatmap (brighter = more anomalous; the group's threshold is mid-grey) drawn in
// colour over the inspected image: transparent where calm, yellow to red above it.
function colourise(grey, canvas) {
  canvas.width = grey.naturalWidth; canvas.height = grey.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(grey, 0, 0);
  const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = img.data;
  for (let i = 0; i < px.length; i += 4) {
    const v = px[i] / 255;  // 0.5 = the threshold
    const t = Math.max(0, Math.min(1, (v - 0.25) / 0.75));
    px[i] = 255; px[i + 1] = Math.round(255 * (1 - t)); px[i + 2] = 0;
    px[i + 3] = Math.round(255 * Math.min(1, Math.max(0, (v - 0.2) / 0.5)));
  }
  ctx.putImageData(img, 0, 0);
}

// An image in a frame, with the heatmap at `heatSrc` (if any) drawn over it.
function framed(img, heatSrc) {
  const frame = el("div", { class: "frame" }, img);
  if (heatSrc) {
    const canvas = el("canvas", { class: "heat", "aria-label": "anomaly heatmap" });
    canvas.style.opacity = String(state.heatOpacity / 100);
    const grey = new Image();
    grey.onload = () => colourise(grey, canvas);
    grey.src = heatSrc;
    frame.append(canvas);
  }
  return frame;
}

function verdictOf(r) {
  if (r.verdict === "defect") return { text: "DEFECT", cls: "defect" };
  if (r.verdict === "ok") return { text: "OK", cls: "ok" };
  return r.unknown ? { text: "UNKNOWN", cls: "unknown" } : null;
}

function overlayControls(box) {
  const show = el("input", { type: "checkbox", id: "heat-on", checked: "" });
  const opacity = el("input", { type: "range", id: "heat-opacity", min: "0", max: "100",
                                value: String(state.heatOpacity), "aria-label": "heatmap opacity" });
  const apply = () => {
    state.heatOpacity = Number(opacity.value);
    for (const c of box.querySelectorAll("canvas.heat")) {
      c.hidden = !show.checked;
      c.style.opacity = String(state.heatOpacity / 100);
    }
  };
  show.addEventListener("change", apply);
  opacity.addEventListener("input", apply);
  return el("div", { class: "row heat-controls" },
            el("label", { class: "check" }, show, " heatmap"),
            el("label", { class: "check" }, "opacity ", opacity));
}

function renderResults(res, group) {
  const box = $("#results");
  box.replaceChildren();
  const judged = res.results.filter((r) => r.verdict);
  const n = res.results.length;
  if (n > 1) {
    const count = (f) => res.results.filter(f).length;
    const parts = judged.length
      ? [`${count((r) => r.verdict === "ok")} OK`, `${count((r) => r.verdict === "defect")} defect`,
         `${count((r) => r.unknown)} unknown type`]
      : [`${count((r) => !r.unknown)} classified`, `${count((r) => r.unknown)} unknown`];
    box.append(el("p", { class: "summary", id: "batch-summary" }, `${n} images: ${parts.join(" · ")}`));
  }
  if (judged.length) box.append(overlayControls(box));
  const grid = el("div", { class: n > 1 ? "grid" : "" });
  res.results.forEach((r, i) => {
    const file = state.picked[i];
    const preview = el("img", { alt: r.filename });
    if (file) preview.src = URL.createObjectURL(file);
    const frame = framed(preview, r.heatmap);
    const v = verdictOf(r);
    const head = el("div", { class: "head" });
    if (v) head.append(el("div", { class: `verdict ${v.cls}` }, v.text));
    const name = r.unknown ? (r.verdict ? "unknown defect type" : "UNKNOWN") : r.label;
    const decision = el("div", { class: "decision" + (r.unknown ? " unknown" : "") }, name);
    const detail = r.top_k.length ? [`score ${r.score.toFixed(3)}`] : [];
    if (r.anomaly) {
      const thr = r.anomaly.threshold >= 2 ? "none yet" : r.anomaly.threshold.toFixed(3);
      detail.push(`anomaly ${r.anomaly.score.toFixed(3)} (threshold ${thr})`);
    }
    detail.push(r.filename);
    const info = el("div", {}, head, decision, el("div", { class: "score" }, detail.join(" · ")));
    // A rejected result names no class: its nearest classes are listed by distance only.
    if (r.unknown && r.top_k.length) {
      info.append(el("div", { class: "nearest" }, "nearest: " +
        r.top_k.map((t) => `${t.label} (d=${t.distance.toFixed(2)} > ${t.threshold.toFixed(2)})`).join(", ")));
    }
    for (const t of r.unknown ? [] : r.top_k) {
      const pct = Math.round(t.score * 100);
      // CSSOM, not a style attribute: the page's CSP refuses inline style attributes
      const fill = el("div", { class: "fill" });
      fill.style.width = `${pct}%`;
      info.append(el("div", { class: "bar", "data-label": t.label },
        el("span", {}, t.label), el("div", { class: "track" }, fill), el("span", {}, `${pct}%`)));
    }
    const evidence = el("div", { class: "evidence" });
    for (const t of r.top_k) {
      for (const e of t.evidence || []) {
        const fig = el("figure", {});
        thumb(e.image_id, 96).then((img) => fig.prepend(img));
        fig.append(el("figcaption", {}, `${t.label} · d=${e.distance.toFixed(2)}`));
        evidence.append(fig);
      }
    }
    if (evidence.children.length) info.append(el("div", {}, "Nearest support images:"), evidence);
    if (state.role !== "machine") info.append(feedbackBar(r, group));
    if (file && state.role !== "machine") info.append(compareBar(file, group));
    grid.append(el("div", { class: "result", "data-result-id": r.id,
                            "data-verdict": r.verdict || "" }, frame, info));
  });
  box.append(grid);
  box.append(el("p", { class: "info" }, `model ${res.model.version} · ${res.model.method}`));
}

// ---- feedback: one click for right, two for wrong (which class it should be) ---------------
function feedbackBar(r, group) {
  const bar = el("div", { class: "fb" });
  const send = async (body) => api("/api/v1/feedback", {
    method: "POST", body: JSON.stringify(Object.assign({ result_id: r.id }, body)),
    headers: { "Content-Type": "application/json" } });
  const done = (text) => { bar.replaceChildren(el("span", { class: "done" }, text)); bar.dataset.done = "1"; };
  const ok = el("button", { type: "button", class: "small ok fb-ok", title: "correct (y)" }, "✓ correct");
  const wrong = el("button", { type: "button", class: "small wrong fb-wrong", title: "wrong (n)" }, "✗ wrong");
  ok.addEventListener("click", async () => {
    try { await send({ correct: true }); done("✓ recorded as correct"); }
    catch (e) { showError("#inspect-error", e); }
  });
  wrong.addEventListener("click", async () => {
    let classes = [];
    try { classes = (await api(`/api/v1/classes?group=${encodeURIComponent(group)}`)).items; }
    catch (e) { showError("#inspect-error", e); return; }
    const pickc = el("select", { class: "fb-class", "aria-label": "the right class" },
      el("option", { value: "" }, "right class: not listed"),
      ...classes.map((c) => el("option", { value: String(c.id) }, `${c.name} (${c.kind})`)));
    const save = el("button", { type: "button", class: "small fb-save" }, "Save");
    save.addEventListener("click", async () => {
      const cid = pickc.value ? Number(pickc.value) : null;
      try {
        const fb = await send(cid ? { correct: false, class_id: cid } : { correct: false });
        const name = cid ? pickc.selectedOptions[0].textContent : null;
        done(cid ? `✗ recorded: should be ${name}` : "✗ recorded as wrong");
        if (cid && state.role === "admin") {
          const promote = el("button", { type: "button", class: "small fb-promote" },
                             "Add this image to that class");
          promote.addEventListener("click", async () => {
            try {
              await api(`/api/v1/feedback/${fb.id}/promote`, { method: "POST" });
              promote.replaceWith(el("span", { class: "done" }, " · added to its support set"));
            } catch (e) { showError("#inspect-error", e); }
          });
          bar.append(" ", promote);
        }
      } catch (e) { showError("#inspect-error", e); }
    });
    bar.replaceChildren(pickc, save);
    pickc.focus();
  });
  bar.append(ok, wrong);
  return bar;
}

// ---- compare with an enrolled image: /verify on the group's own calibration --------------
function compareBar(file, group) {
  const bar = el("div", { class: "compare" });
  const open = el("button", { type: "button", class: "small cmp-open" }, "Compare with…");
  const out = el("div", { class: "cmp-result", "aria-live": "polite" });
  const compare = async (imageId) => {
    out.textContent = "comparing…";
    try {
      const enrolled = await api(`/api/v1/images/${imageId}?size=512`);
      const form = new FormData();
      form.append("a", file, file.name);
      form.append("b", enrolled, `image-${imageId}.jpg`);
      const v = await api(`/api/v1/verify?group=${encodeURIComponent(group)}`,
                          { method: "POST", body: form });
      out.replaceChildren(
        el("span", { class: `verdict small ${v.same ? "ok" : "defect"}`, "data-same": String(v.same) },
           v.same ? "SAME" : "DIFFERENT"),
        ` p(same) = ${v.score.toFixed(3)} · ${v.calibration} calibration`,
        ...(v.warning ? [el("div", { class: "hint" }, v.warning)] : []));
    } catch (e) { out.textContent = ""; showError("#inspect-error", e); }
  };
  open.addEventListener("click", async () => {
    let classes = [];
    try { classes = (await api(`/api/v1/classes?group=${encodeURIComponent(group)}`)).items; }
    catch (e) { showError("#inspect-error", e); return; }
    const pickc = el("select", { class: "cmp-class", "aria-label": "class to compare with" },
      el("option", { value: "" }, "compare with a class…"),
      ...classes.filter((c) => c.image_count).map((c) => el("option", { value: String(c.id) }, c.name)));
    const thumbs = el("div", { class: "evidence cmp-images" });
    pickc.addEventListener("change", async () => {
      thumbs.replaceChildren();
      out.textContent = "";
      if (!pickc.value) return;
      try {
        for (const i of (await api(`/api/v1/classes/${pickc.value}/images`)).slice(0, 12)) {
          const b = el("button", { type: "button", class: "cmp-pick", "data-image-id": i.id,
                                   title: `compare with ${i.original_name}` }, await thumb(i.id, 72));
          b.addEventListener("click", () => compare(i.id));
          thumbs.append(b);
        }
      } catch (e) { showError("#inspect-error", e); }
    });
    bar.replaceChildren(pickc, thumbs, out);
    pickc.focus();
  });
  bar.append(open);
  return bar;
}

// y / n on a station PC: the first result not judged yet
document.addEventListener("keydown", (ev) => {
  if ($("#inspect").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) return;
  const open = Array.from(document.querySelectorAll(".result .fb")).find((b) => !b.dataset.done);
  if (!open) return;
  const btn = open.querySelector(ev.key === "y" ? ".fb-ok" : ev.key === "n" ? ".fb-wrong" : null);
  if (btn) { ev.preventDefault(); btn.click(); }
});

// ---- history --------------------------------------------------------------------------------
function historyQuery() {
  const q = new URLSearchParams();
  const add = (k, v) => { if (v) q.set(k, v); };
  add("group", $("#h-group").value);
  add("verdict", $("#h-verdict").value);
  add("label", $("#h-label").value.trim());
  add("feedback", $("#h-feedback").value);
  // dates are the operator's local days: from the start of "From" to the end of "To"
  if ($("#h-since").value) q.set("since", new Date(`${$("#h-since").value}T00:00:00`).toISOString());
  if ($("#h-until").value) {
    const end = new Date(`${$("#h-until").value}T00:00:00`);
    end.setDate(end.getDate() + 1);
    q.set("until", end.toISOString());
  }
  return q;
}

async function loadHistory(more) {
  showError("#history-error", null);
  const q = historyQuery();
  if (more && state.cursor) q.set("cursor", state.cursor);
  const body = $("#history-table tbody");
  try {
    const page = await api(`/api/v1/results?${q}`);
    if (!more) body.replaceChildren();
    for (const r of page.items) {
      const v = verdictOf(r);
      const fb = r.feedback ? (r.feedback.correct ? "✓" : "✗") : "";
      const pic = el("img", { class: "h-thumb", alt: r.filename });
      api(`/api/v1/results/${r.id}/image?size=96`).then((b) => { pic.src = URL.createObjectURL(b); })
        .catch(() => { pic.alt = "not kept"; });
      const row = el("tr", { "data-result-id": r.id, tabindex: "0", title: "show the image" },
        el("td", {}, pic, el("br"), new Date(r.created_at).toLocaleString()), el("td", {}, r.group),
        el("td", {}, r.filename),
        el("td", {}, v ? el("span", { class: `verdict ${v.cls}` }, v.text) : ""),
        el("td", {}, r.label || (r.unknown ? "unknown" : "")), el("td", {}, r.score.toFixed(3)),
        el("td", {}, r.anomaly ? r.anomaly.score.toFixed(3) : ""), el("td", {}, fb));
      row.addEventListener("click", () => showHistoryDetail(r));
      body.append(row);
    }
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: "8" }, "No results match.")));
    state.cursor = page.next_cursor;
    $("#h-more").hidden = !page.next_cursor;
  } catch (e) { showError("#history-error", e); }
}

// A stored result, large, with its heatmap (recomputed against the good parts enrolled now).
async function showHistoryDetail(r) {
  const box = $("#history-detail");
  showError("#history-error", null);
  try {
    const img = el("img", { alt: r.filename, src: URL.createObjectURL(
      await api(`/api/v1/results/${r.id}/image?size=512`)) });
    const frame = framed(img, r.verdict
      ? URL.createObjectURL(await api(`/api/v1/results/${r.id}/heatmap`)) : null);
    const v = verdictOf(r);
    box.replaceChildren(frame, el("div", {},
      v ? el("div", { class: `verdict ${v.cls}` }, v.text) : "",
      el("div", { class: "decision" }, r.label || (r.unknown ? "unknown" : "")),
      el("div", { class: "score" }, `${r.filename} · ${new Date(r.created_at).toLocaleString()}`)));
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  } catch (e) { showError("#history-error", e); }
}

// The CSV streams from the service; fetched with the key, then saved as a file.
async function exportCsv() {
  showError("#history-error", null);
  try {
    const blob = await api(`/api/v1/results.csv?${historyQuery()}`);
    const a = el("a", { href: URL.createObjectURL(blob), download: "fsdi-results.csv" });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) { showError("#history-error", e); }
}

// ---- the enrolment report, where the admin is ------------------------------------------------
function showReport(report) {
  const box = $("#report");
  if (!report) { box.hidden = true; return; }
  const lines = [el("strong", {}, `Group "${report.group}"`)];
  if (report.loo_accuracy !== null) {
    lines.push(el("div", {}, `Leave-one-out accuracy ${(100 * report.loo_accuracy).toFixed(0)}% ` +
                             `over ${report.loo_evaluated} image(s)`));
  }
  for (const c of report.classes) {
    if (c.loo_recall !== null) lines.push(el("div", {}, `${c.label}: recall ${(100 * c.loo_recall).toFixed(0)}%`));
  }
  if (report.most_confused) {
    const m = report.most_confused;
    lines.push(el("div", {}, `Most confused: ${m.true} taken for ${m.predicted} (${m.count}×)`));
  }
  const g = report.good_parts;
  if (g) {
    const thr = g.threshold >= 2 ? "none yet (one image)" : g.threshold.toFixed(3);
    const how = g.rule === "balanced"
      ? "balanced against the defect images (too few good images for the rate)"
      : `false-alarm rate ${(100 * g.false_alarm_rate).toFixed(1)}%`;
    lines.push(el("div", { class: "good-parts" }, `Good parts: ${g.good_images} image(s), ` +
      `${how}, threshold ${thr}`));
    if (g.defect_examples) {
      lines.push(el("div", { class: "good-parts-defects" }, `Flags ${g.defect_examples_flagged} ` +
        `of ${g.defect_examples} enrolled defect image(s)`));
    }
  }
  const sc = report.scores;
  if (sc) {
    lines.push(el("div", { class: "scores" }, sc.fitted
      ? `Scores: calibrated on ${sc.calibrated_on} held-out image(s) of this group`
      : "Scores: only roughly calibrated (nothing held out yet)"));
  }
  for (const w of report.warnings) lines.push(el("div", { class: "warn" }, `⚠ ${w}`));
  box.replaceChildren(...lines);
  box.hidden = false;
}

// After a removal the report is read again (or hidden when the group is now empty).
async function refreshReport(group) {
  try { showReport(await api(`/api/v1/groups/${encodeURIComponent(group)}/report`)); }
  catch (e) { showReport(null); }
}

// ---- classes (admin) ----------------------------------------------------------------------
async function loadClasses() {
  showError("#classes-error", null);
  $("#class-detail").hidden = true;
  const group = $("#class-group").value || "default";
  refreshReport(group);  // the report shown is always this group's, as it is now
  $("#class-list").setAttribute("aria-busy", "true");
  try {
    const data = await api(`/api/v1/classes?group=${encodeURIComponent(group)}`);
    const cards = [];
    for (const c of data.items) cards.push(await classCard(c));
    $("#class-list").replaceChildren(...cards);
    if (!cards.length) {
      $("#class-list").append(el("p", {}, "No classes in this group yet. For a demo line, run ",
                                 el("code", {}, `fsdi demo --url ${location.origin} --key <admin key>`),
                                 "."));
    }
  } catch (e) { showError("#classes-error", e); }
  finally { $("#class-list").setAttribute("aria-busy", "false"); }
}

async function classCard(c) {
  let picture = el("div", { class: "noimg" });
  if (c.image_count) {
    const imgs = await api(`/api/v1/classes/${c.id}/images`);
    if (imgs.length) picture = await thumb(imgs[0].id, 256);
  }
  const input = el("input", { type: "file", accept: "image/*", multiple: "", class: "add-files" });
  input.addEventListener("change", () => upload(c, input.files));
  return el("div", { class: "class-card", "data-class-id": c.id, "data-name": c.name,
                     "data-kind": c.kind },
    picture, el("h3", {}, c.name, " ", el("span", { class: `kind ${c.kind}` }, c.kind)),
    el("div", { class: "meta" }, `${c.image_count} image(s)`),
    el("div", { class: "meta" }, c.description || ""),
    el("div", { class: "actions" },
      el("label", {}, "Add images ", input),
      el("button", { type: "button", class: "small show-images", onclick: () => showImages(c) }, "Images"),
      el("button", { type: "button", class: "small danger delete-class",
                     onclick: () => deleteClass(c) }, "Delete")));
}

async function createClass(ev) {
  ev.preventDefault();
  showError("#classes-error", null);
  try {
    const body = { name: $("#new-name").value.trim(), description: $("#new-desc").value,
                   group: $("#class-group").value || "default", kind: $("#new-kind").value };
    await api("/api/v1/classes", { method: "POST", body: JSON.stringify(body),
                                   headers: { "Content-Type": "application/json" } });
    $("#new-name").value = ""; $("#new-desc").value = "";
    $("#classes-info").textContent = `Created class "${body.name}".`;
    await loadClasses();
    loadGroups();
  } catch (e) { showError("#classes-error", e); }
}

// XMLHttpRequest, not fetch: it reports upload progress for the progress bar.
function upload(c, files) {
  showError("#classes-error", null);
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const bar = $("#progress");
  bar.hidden = false; bar.value = 0;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/v1/classes/${c.id}/images`);
  xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
  xhr.onload = async () => {
    bar.hidden = true;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 201) {
      $("#classes-info").textContent = `Added ${body.images.length} image(s) to "${c.name}".`;
      showReport(body.report);
      await loadClasses();
    } else {
      showError("#classes-error", new Error(friendly(xhr.status, body)));
    }
  };
  xhr.onerror = () => { bar.hidden = true; showError("#classes-error", new Error("Upload failed: the service cannot be reached.")); };
  xhr.send(form);
}

async function showImages(c) {
  const box = $("#class-detail");
  try {
    const imgs = await api(`/api/v1/classes/${c.id}/images`);
    const figs = [];
    for (const i of imgs) {
      const fig = el("figure", { "data-image-id": i.id }, await thumb(i.id, 128),
        el("figcaption", {}, i.original_name),
        el("button", { type: "button", class: "small danger remove-image",
                       onclick: () => removeImage(c, i) }, "Remove"));
      figs.push(fig);
    }
    box.replaceChildren(el("h3", {}, `Support images of ${c.name}`), el("div", { class: "thumbs" }, ...figs));
    box.hidden = false;
  } catch (e) { showError("#classes-error", e); }
}

async function removeImage(c, i) {
  try {
    await api(`/api/v1/classes/${c.id}/images/${i.id}`, { method: "DELETE" });
    $("#classes-info").textContent = `Removed ${i.original_name}.`;
    await loadClasses();
    const fresh = (await api(`/api/v1/classes/${c.id}`));
    await showImages(fresh);
  } catch (e) { showError("#classes-error", e); }
}

async function deleteClass(c) {
  if (!confirm(`Delete class "${c.name}" and its ${c.image_count} image(s)? This cannot be undone.`)) return;
  try {
    await api(`/api/v1/classes/${c.id}`, { method: "DELETE" });
    $("#classes-info").textContent = `Deleted class "${c.name}".`;
    await loadClasses();
  } catch (e) { showError("#classes-error", e); }
}

// ---- wiring -----------------------------------------------------------------------------
$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("#signin-error", null);
  try { await signIn($("#key").value.trim()); } catch (e) { showError("#signin-error", e); }
});
$("#signout").addEventListener("click", signOut);
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
$("#files").addEventListener("change", (e) => pick(e.target.files));
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files); });
$("#classify-btn").addEventListener("click", classify);
$("#create-form").addEventListener("submit", createClass);
$("#reload-classes").addEventListener("click", loadClasses);
$("#history-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(false); });
$("#h-more").addEventListener("click", () => loadHistory(true));
$("#h-csv").addEventListener("click", exportCsv);
if (state.key) signIn(state.key).catch(() => sessionStorage.removeItem("fsdi-key"));
