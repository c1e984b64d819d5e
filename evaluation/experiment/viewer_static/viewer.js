// glasszoo viewer: a plain page over the JSON API of `glasszoo serve` (no library, no network beyond this server).
"use strict";

const state = { run: null, current: null, cases: [], seq: 0 };  // seq: the latest case asked for wins

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: `the server answered ${res.status}` }; }
  if (!res.ok) throw new Error(data.error || data.detail || `the server answered ${res.status}`);
  return data;
}

const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
const cls = (k) => state.run.class_names[k];
const pos = () => state.run.positive_class;

function image(src, alt) { return el("img", { src, alt, title: alt }); }

// ------------------------------------------------------------------ the case list
function filteredCases() {
  const c = document.getElementById("filter-class").value;
  const o = document.getElementById("filter-outcome").value;
  const d = document.getElementById("filter-disagree").checked;
  const m = document.getElementById("filter-model").value;
  return state.cases.filter((x) => {
    if (c !== "" && String(x.label) !== c) return false;
    const wrong = m ? x.wrong.includes(m) : x.wrong.length > 0;
    if (o === "correct" && wrong) return false;
    if (o === "wrong" && !wrong) return false;
    if (d && !x.disagree) return false;
    return true;
  });
}

function drawCaseList() {
  const list = document.getElementById("case-list");
  list.replaceChildren();
  const shown = filteredCases();
  document.getElementById("case-count").textContent = `${shown.length} of ${state.cases.length} test cases`;
  for (const x of shown) {
    const mark = x.wrong.length ? el("span", { class: "wrong", text: ` ✗ ${x.wrong.length}` }) : null;
    const li = el("li", { "data-case": x.case_id, title: x.wrong.length ? `wrong: ${x.wrong.join(", ")}` : "every model right",
                          onclick: () => showCase(x.case_id) },
                  `${x.case_id} · ${cls(x.label)}`, mark);
    if (state.current && state.current.ref === x.case_id) li.classList.add("active");
    list.append(li);
  }
}

// ------------------------------------------------------------------ one case
async function showCase(ref) {
  const view = document.getElementById("case-view");
  const seq = ++state.seq;
  view.replaceChildren(el("p", { class: "muted", text: `explaining ${ref} with every model ...` }));
  try {
    const data = await api(`/api/case/${encodeURIComponent(ref)}`);
    if (seq === state.seq) drawCase(data);
  } catch (e) {
    if (seq === state.seq) view.replaceChildren(el("p", { class: "message error", text: e.message }));
  }
}

function predictionTable(data) {
  const rows = data.models.filter((m) => m.proba).map((m) => {
    const wrong = data.label !== null && data.label !== undefined && m.pred !== data.label;
    return el("tr", { class: "pred-row", "data-model": m.name },
      el("td", { text: m.name }), el("td", { text: m.family }),
      el("td", { class: wrong ? "wrong-pred" : "", text: cls(m.pred) }),
      el("td", { text: fmt(m.proba[m.pred]) }), el("td", { text: fmt(m.proba[pos()]) }));
  });
  return el("table", { id: "predictions" },
    el("tr", {}, el("th", { text: "model" }), el("th", { text: "family" }), el("th", { text: "prediction" }),
       el("th", { text: "probability" }), el("th", { text: `p(${cls(pos())})` })), ...rows);
}

function drawCase(data) {
  state.current = data;
  drawCaseList();
  const view = document.getElementById("case-view");
  const truth = data.label === null || data.label === undefined ? "unknown (your image)" : cls(data.label);
  const head = el("div", { class: "case-head" },
    el("figure", {}, image(data.image, data.case_id || data.ref),
       el("figcaption", { class: "legend", text: "green: true lesion outline" })),
    el("div", {}, el("h2", { id: "case-title", text: data.case_id || data.ref }),
       el("p", {}, "truth: ", el("strong", { id: "case-truth", text: truth }),
          data.split ? ` · ${data.split} split` : ""),
       predictionTable(data)));
  view.replaceChildren(head, ...data.models.map((m) => modelCard(m, data)));
}

function modelCard(m, data) {
  const card = el("div", { class: "model-card", "data-model": m.name });
  const title = m.proba ? `${m.name} (${m.family}): ${cls(m.pred)}, p = ${fmt(m.proba[m.pred])}` : `${m.name} (${m.family})`;
  card.append(el("h3", { text: title }));
  if (m.note) card.append(el("p", { class: "muted", text: m.note }));
  if (m.prototypes) card.append(prototypeSection(m, data));
  if (m.neighbours) card.append(neighbourSection(m));
  if (m.concepts) card.append(conceptSection(m, data));
  if (m.features) card.append(featureSection(m));
  if (m.attention) card.append(el("h4", { text: "Attention gates (cyan: predicted outline, green: true)" }),
                               mapRow(m.attention, "attention"));
  if (m.segmentation) card.append(el("h4", { text: "Segmentation" }), mapRow([{ title: "predicted (cyan) and true (green)", png: m.segmentation }], "segmentation"));
  if (m.heatmaps && m.heatmaps.length) card.append(el("h4", { text: "Maps" }), mapRow(m.heatmaps, "heatmaps"));
  return card;
}

function mapRow(items, kind) {
  return el("div", { class: `maps ${kind}` },
    ...items.map((h) => el("figure", {}, image(h.png, h.title), el("figcaption", { text: h.title }))));
}

function prototypeSection(m, data) {
  const p = m.prototypes;
  const rows = p.top.map((r) => {
    const flagBtn = el("button", { class: "flag-btn", "data-prototype": String(r.prototype),
      text: r.flagged ? "unflag" : "flag as wrong",
      onclick: () => flagPrototype(m.name, r.prototype, !r.flagged, data) });
    return el("tr", { class: `proto-row${r.flagged ? " flagged" : ""}`, "data-prototype": String(r.prototype) },
      el("td", {}, image(r.map, `where prototype ${r.prototype} is found in this image`)),
      el("td", {}, r.source ? image(r.source, `training case ${r.source_case_id}`) : el("span", { class: "muted", text: "not projected" })),
      el("td", {}, el("div", { text: `prototype ${r.prototype} (${cls(r.class)})` }),
         el("div", { class: "muted", text: r.source_case_id ? `looks like training case ${r.source_case_id}` +
           (r.source_label !== null ? ` (${cls(r.source_label)})` : "") : "" }),
         el("div", { text: `${fmt(r.similarity)} × ${fmt(r.weight)} = ${fmt(r.points)} points` })),
      el("td", {}, flagBtn));
  });
  const totals = p.class_points.map((v, k) => `${cls(k)} ${fmt(v)}`).join(" · ");
  return el("div", { class: "prototypes" },
    el("h4", { text: "Nearest prototype cases: this looks like that" }),
    el("table", { class: "proto-table" },
       el("tr", {}, el("th", { text: "this case" }), el("th", { text: "looks like (training patch boxed)" }),
          el("th", { text: "similarity × weight = points" }), el("th", { text: "" })), ...rows),
    el("p", { class: "legend", text: `Scoring sheet: points summed over every prototype per class: ${totals}` +
      (p.disabled.length ? ` · switched off: ${p.disabled.join(", ")}` : "") }));
}

function neighbourSection(m) {
  return el("div", {}, el("h4", { text: "Nearest training cases (prototype-similarity space)" }),
    el("div", { class: "neighbours" }, ...m.neighbours.map((n) =>
      el("figure", { "data-case": n.case_id }, image(n.png, n.case_id),
         el("figcaption", { text: `${n.case_id} · ${cls(n.label)} · d = ${fmt(n.distance)}` })))));
}

function conceptSection(m, data) {
  const out = el("span", { class: "concept-proba", "data-model": m.name,
                           text: `p(${cls(pos())}) = ${fmt(m.proba[pos()])}` });
  const controls = {};
  const rows = m.concepts.map((c) => {
    let control;
    if (c.binary) {
      control = el("select", { class: "concept-select", "data-concept": c.name },
        el("option", { value: "", text: "as predicted" }), el("option", { value: "1", text: "present" }),
        el("option", { value: "0", text: "absent" }));
    } else {
      control = el("input", { class: "concept-select", "data-concept": c.name, type: "number", step: "any",
                              placeholder: "as predicted" });
    }
    control.addEventListener("change", () => updateConcepts(m, data, controls, out));
    controls[c.name] = control;
    return el("tr", {}, el("td", { text: c.name }), el("td", { text: fmt(c.predicted) }),
      el("td", { text: c.true === null ? "–" : fmt(c.true) }), el("td", { text: fmt(c.contribution) }),
      el("td", {}, control));
  });
  return el("div", { class: "concepts" }, el("h4", { text: "Concepts: set one and the model predicts again" }),
    el("table", {}, el("tr", {}, el("th", { text: "concept" }), el("th", { text: "predicted" }),
       el("th", { text: "true" }), el("th", { text: "points" }), el("th", { text: "set to" })), ...rows),
    el("p", {}, out));
}

async function updateConcepts(m, data, controls, out) {
  const values = {};
  for (const [name, c] of Object.entries(controls)) if (c.value !== "") values[name] = Number(c.value);
  try {
    const r = await api("/api/concepts", { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify({ ref: data.ref, model: m.name, values }) });
    out.textContent = `p(${cls(pos())}) = ${fmt(r.proba_before[pos()])} → ${fmt(r.proba[pos()])} (${cls(r.pred)})`;
  } catch (e) { out.textContent = e.message; }
}

function featureSection(m) {
  return el("div", { class: "features" }, el("h4", { text: `Top reasons (points towards ${m.features.target})` }),
    el("ul", {}, ...m.features.top.map((f) => el("li", { text: f.text }))));
}

// ------------------------------------------------------------------ flags, edit, upload
async function flagPrototype(model, prototype, flagged, data) {
  try {
    const r = await api("/api/flags", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, prototype, flagged, case_id: data.case_id, reason: "flagged in the viewer" }) });
    drawFlags(r.flags);
    await showCase(data.ref);
  } catch (e) { alert(e.message); }
}

function drawFlags(flags) {
  const list = document.getElementById("flag-list");
  list.replaceChildren(...flags.map((f) => el("li", { text: `${f.model}: prototype ${f.prototype}` })));
  if (!flags.length) list.append(el("li", { class: "muted", text: "none yet" }));
  document.getElementById("edit-button").disabled = !flags.length;
}

async function runEdit() {
  const out = document.getElementById("edit-result");
  out.className = "message";
  out.textContent = "switching the flagged prototypes off and refitting the last layer ...";
  try {
    const r = await api("/api/edit", { method: "POST" });
    const lines = Object.entries(r.models).map(([name, e]) =>
      `${name}: AUC ${fmt(e.auc_original, 3)} → ${fmt(e.auc, 3)} (Δ ${fmt(e.delta_auc, 3)} [${fmt(e.delta_auc_ci[0], 3)}, ${fmt(e.delta_auc_ci[1], 3)}])`);
    out.textContent = `${lines.join("; ")}. Report: ${r.report}`;
  } catch (e) { out.className = "message error"; out.textContent = e.message; }
}

async function upload(ev) {
  ev.preventDefault();
  const file = document.getElementById("upload-input").files[0];
  const msg = document.getElementById("upload-message");
  msg.className = "message";
  if (!file) { msg.textContent = "choose a PNG, JPEG or DICOM file first"; return; }
  const q = new URLSearchParams({ filename: file.name,
    to_grey: document.getElementById("upload-grey").checked ? "1" : "0",
    resize: document.getElementById("upload-resize").checked ? "1" : "0" });
  msg.textContent = `explaining ${file.name} ...`;
  const seq = ++state.seq;
  try {
    const data = await api(`/api/upload?${q}`, { method: "POST", body: file,
                                                 headers: { "Content-Type": "application/octet-stream" } });
    if (seq !== state.seq) return;  // the reader asked for another case meanwhile
    msg.textContent = `${file.name}: explained by every model below`;
    drawCase(data);
  } catch (e) { msg.className = "message error"; msg.textContent = e.message; }
}

// ------------------------------------------------------------------ start
async function start() {
  try {
    state.run = await api("/api/run");
  } catch (e) {
    document.getElementById("case-view").replaceChildren(el("p", { class: "message error", text: e.message }));
    return;
  }
  state.cases = state.run.cases;
  document.getElementById("run-name").textContent = `· ${state.run.run}`;
  document.getElementById("run-info").textContent =
    `${state.run.dataset}: ${state.run.models.length} models, ${state.cases.length} test cases, ` +
    `images ${state.run.image_size.join("×")} (${state.run.channels === 1 ? "grey" : "colour"})`;
  const cf = document.getElementById("filter-class");
  state.run.class_names.forEach((n, k) => cf.append(el("option", { value: String(k), text: n })));
  const mf = document.getElementById("filter-model");
  state.run.models.forEach((m) => mf.append(el("option", { value: m.name, text: m.name })));
  for (const id of ["filter-class", "filter-outcome", "filter-disagree", "filter-model"])
    document.getElementById(id).addEventListener("change", drawCaseList);
  document.getElementById("upload-form").addEventListener("submit", upload);
  document.getElementById("edit-button").addEventListener("click", runEdit);
  drawFlags(state.run.flags);
  drawCaseList();
}

start();
