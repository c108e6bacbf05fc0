// medgen review: the raters' page. No build step, no external assets.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const RATER_KEY = "medgen-review-rater";
const CHOICES = [["left", "Left better"], ["both_lose", "Both lose"], ["right", "Right better"]];
const LEVELS = [["no", "No"], ["minor", "Minor"], ["moderate", "Moderate"], ["severe", "Severe"]];
const $ = (id) => document.getElementById(id);
let current = null; // the task on screen

async function api(path, body) {
  const opts = { headers: { "X-Medgen-Token": TOKEN }, cache: "no-store" };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function show(id) {
  for (const v of ["view-name", "view-rate", "view-done", "view-results"]) $(v).classList.toggle("hidden", v !== id);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function radios(fieldset, name, options) {
  for (const [value, label] of options) {
    const input = el("input", { type: "radio", name, value, id: `${name}-${value}` });
    fieldset.append(el("label", { for: `${name}-${value}` }, input, " " + label));
  }
}

function buildForm(criteria) {
  const box = $("criteria");
  if (box.dataset.built) return;
  for (const c of criteria) {
    const fs = el("fieldset", { "data-group": c.id }, el("legend", {}, c.label));
    radios(fs, c.id, CHOICES);
    box.append(fs);
  }
  radios(document.querySelector('[data-group="warp_left"]'), "warp_left", LEVELS);
  radios(document.querySelector('[data-group="warp_right"]'), "warp_right", LEVELS);
  box.dataset.built = "1";
}

function setVideo(id, path) {
  const v = $(id);
  v.src = `${path}?token=${encodeURIComponent(TOKEN)}`;
  v.play().catch(() => {});
}

function render(view) {
  buildForm(view.criteria);
  const pct = view.total ? Math.round((100 * view.done) / view.total) : 0;
  $("progress").replaceChildren(`${view.done} of ${view.total} rated `,
    el("span", { class: "bar" }, el("span", { style: `width:${pct}%` })));
  $("msg").textContent = "";
  current = view.task;
  if (!current) {
    show("view-done");
    document.body.dataset.state = "done";
    document.body.dataset.promptId = "";
    return;
  }
  $("rate-form").reset();
  $("prompt").textContent = current.prompt;
  setVideo("video-left", current.left);
  setVideo("video-right", current.right);
  show("view-rate");
  window.scrollTo(0, 0);
  document.body.dataset.promptId = current.prompt_id;
  document.body.dataset.state = "ready";
}

async function loadTask() {
  document.body.dataset.state = "loading";
  try {
    render(await api(`/api/task?rater=${encodeURIComponent(rater())}`));
  } catch (e) {
    $("msg").textContent = e.message;
    document.body.dataset.state = "error";
  }
}

function rater() {
  return localStorage.getItem(RATER_KEY) || "";
}

function start() {
  const name = rater();
  $("whoami").classList.toggle("hidden", !name);
  $("rater-label").textContent = name;
  if (!name) {
    show("view-name");
    document.body.dataset.state = "name";
    $("rater-name").focus();
    return;
  }
  loadTask();
}

$("name-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("rater-name").value.trim();
  if (!name) return;
  localStorage.setItem(RATER_KEY, name);
  start();
});

$("change-rater").addEventListener("click", () => {
  localStorage.removeItem(RATER_KEY);
  $("rater-name").value = "";
  start();
});

$("rate-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!current) return;
  const form = new FormData($("rate-form"));
  const criteria = {};
  const missing = [];
  for (const fs of document.querySelectorAll("#criteria fieldset")) {
    const v = form.get(fs.dataset.group);
    if (v) criteria[fs.dataset.group] = v;
    else missing.push(fs.querySelector("legend").textContent);
  }
  const left = form.get("warp_left"), right = form.get("warp_right");
  if (!left) missing.push("Warping (left)");
  if (!right) missing.push("Warping (right)");
  if (missing.length) {
    $("msg").textContent = "Please rate: " + missing.join(", ");
    return;
  }
  document.body.dataset.state = "saving";
  try {
    render(await api("/api/rate", {
      rater: rater(), prompt_id: current.prompt_id, criteria, warping: { left, right },
    }));
  } catch (e) {
    $("msg").textContent = e.message;
    document.body.dataset.state = "error";
  }
});

$("skip").addEventListener("click", async () => {
  if (!current) return;
  document.body.dataset.state = "saving";
  try {
    render(await api("/api/skip", { rater: rater(), prompt_id: current.prompt_id }));
  } catch (e) {
    $("msg").textContent = e.message;
  }
});

$("results-link").href = `/results?token=${encodeURIComponent(TOKEN)}`;

// ----- results view -----

const COLORS = ["#2f6fdb", "#9aa3b2", "#e07b39"];

function fmt(x, digits = 2) {
  return x === null || x === undefined ? "undefined" : x.toFixed(digits);
}

function countsSvg(r) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 560, rowH = 34, labelW = 150, h = r.counts.length * rowH + 6;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const text = (x, y, s, anchor, fill) => {
    const t = document.createElementNS(ns, "text");
    Object.entries({ x, y, "text-anchor": anchor || "start", fill: fill || "#1d2330", "font-size": 13 })
      .forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = s;
    svg.append(t);
  };
  r.counts.forEach((c, i) => {
    const y = 4 + i * rowH, total = c.a_wins + c.both_lose + c.b_wins;
    text(0, y + 19, r.criterion_labels[i] || c.criterion);
    let x = labelW;
    [c.a_wins, c.both_lose, c.b_wins].forEach((n, k) => {
      const bw = total ? ((w - labelW) * n) / total : 0;
      const rect = document.createElementNS(ns, "rect");
      Object.entries({ x, y, width: bw, height: 26, fill: COLORS[k] }).forEach(([a, v]) => rect.setAttribute(a, v));
      svg.append(rect);
      if (n > 0) text(x + bw / 2, y + 18, String(n), "middle", "#fff");
      x += bw;
    });
    if (!total) text(labelW, y + 19, "no ratings yet", "start", "#5b6475");
  });
  return svg;
}

function table(head, rows) {
  const t = el("table");
  t.append(el("tr", {}, ...head.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => el("td", {}, String(c)))));
  return t;
}

async function showResults() {
  show("view-results");
  $("whoami").classList.add("hidden");
  const r = await api("/api/results");
  const [a, b] = r.models;
  $("progress").textContent = `${a} (A) vs ${b} (B) · ${r.pairs} pairs · raters: ${r.raters.join(", ") || "none yet"}`;
  const legend = el("p", { class: "legend" });
  [`${a} wins`, "both lose", `${b} wins`].forEach((s, k) =>
    legend.append(el("span", { style: `background:${COLORS[k]}` }), s));
  $("counts").replaceChildren(legend, countsSvg(r), table(
    ["criterion", `${a} wins`, "both lose", `${b} wins`],
    r.counts.map((c, i) => [r.criterion_labels[i] || c.criterion, c.a_wins, c.both_lose, c.b_wins])));
  $("warping").replaceChildren(
    table(["model", "WE", "errors / judged", "no", "minor", "moderate", "severe"],
      r.warping.map((w) => [w.model, w.rate === null ? "undefined" : `${(100 * w.rate).toFixed(1)}%`,
        `${w.errors} / ${w.judged}`, w.levels.no, w.levels.minor, w.levels.moderate, w.levels.severe])),
    el("p", { class: "progress" }, r.warping_rule));
  $("kappa").replaceChildren(r.agreement.length
    ? table(["rater 1", "rater 2", "scale", "n", "κ", "p_o", "p_e"],
      r.agreement.map((g) => [g.rater_1, g.rater_2, g.scale, g.n, fmt(g.kappa, 3), fmt(g.observed), fmt(g.expected)]))
    : el("p", {}, "Needs at least two raters."));
  document.body.dataset.state = "results";
}

if (location.pathname === "/results") {
  showResults().catch((e) => {
    $("progress").textContent = e.message;
    document.body.dataset.state = "error";
  });
} else {
  start();
}
