/* The study page: key slice with saliency, findings, z-plot, slice strip, review, versions, deliveries. */
"use strict";
(function () {
  const h = ICH.h;
  const $ = (id) => document.getElementById(id);
  const uid = decodeURIComponent(location.pathname.split("/").pop());
  const view = { sop: null, window: "brain", overlay: true, subtype: "any" };
  /** Zoom and pan of the slice (CSS transform), and a free window (HU) or null for the preset. */
  const zoom = { scale: 1, x: 0, y: 0 };
  let free = null;
  /** [center, width] in HU of the image now in the viewer: the server renders each window. */
  let loaded = null, pending = null;
  let info = null, study = null;
  const orientations = new Map();

  function imageUrl(sop, opts) {
    const q = new URLSearchParams({ window: opts.window || "brain" });
    if (opts.free) {
      q.set("center", opts.free.center.toFixed(0));
      q.set("width", opts.free.width.toFixed(0));
    }
    if (opts.overlay) { q.set("overlay", "saliency"); q.set("subtype", opts.subtype || "any"); }
    if (opts.size) q.set("size", opts.size);
    if (opts.letters === false) q.set("letters", "false");
    return `/api/instances/${encodeURIComponent(sop)}/image.png?${q}`;
  }

  /** The viewer's edge letters are page text, so zoom and pan never move them off the stage. */
  async function showLetters(sop) {
    if (!orientations.has(sop)) {
      orientations.set(sop, ICH.json(`/api/instances/${encodeURIComponent(sop)}/orientation`)
        .catch(() => null));
    }
    const letters = await orientations.get(sop);
    if (sop !== view.sop) return;
    for (const edge of ["left", "right", "top", "bottom"]) {
      $(`edge-${edge}`).textContent = letters ? letters[edge] : "";
    }
  }

  function facts() {
    const p = study.patient;
    const items = [];
    if (p) {
      items.push(["Patient", ICH.patientLine(p)], ["Accession", p.accession_number || "–"],
                 ["Study date", ICH.dicomDate(p.study_date, p.study_time) || "–"]);
      if (p.study_description) $("title").textContent = p.study_description;
    }
    items.push(
      ["Status", ICH.STATES[study.state] || study.state],
      ["Result", study.flagged === null ? "pending" : study.flagged
        ? `FLAGGED: ${study.flagged_subtypes.map((s) => info.display_names[s]).join(", ")}` : "not flagged"],
      ["Slices", `${study.n_scored ?? "–"} scored of ${study.n_instances}`],
      ["Received", ICH.time(study.last_received_at)],
      ["Study UID", h("span", { class: "mono", title: study.study_instance_uid }, `…${study.study_instance_uid.slice(-12)}`)]);
    // Each term stays with its value: the line breaks between facts, never inside one.
    $("facts").replaceChildren(...items.map(([k, v]) => h("div", { class: "fact" }, h("dt", {}, k), h("dd", {}, v))));
    document.title = `${study.flagged ? "FLAGGED – " : ""}${$("title").textContent} – ichnode`;
    if (study.flagged) $("title").classList.add("hot");
  }

  function findings() {
    const flagged = new Set(study.flagged_subtypes);
    const rows = info.subtypes.map((s) => {
      const p = study.probabilities ? study.probabilities[s] : null;
      const t = info.thresholds ? info.thresholds[s] : null;
      return h("tr", { class: flagged.has(s) ? "flagged" : null },
        h("th", { scope: "row" }, h("span", { class: "swatch", style: `background:${ICH.COLORS[s]}` }), info.display_names[s]),
        h("td", {}, ICH.bar(s, p, flagged.has(s), info.display_names[s])),
        h("td", { class: "num" }, t === null ? "–" : ICH.pct(t)),
        h("td", {}, flagged.has(s) ? h("span", { class: "badge hot" }, "FLAGGED") : "–"));
    });
    $("findings").tBodies[0].replaceChildren(...rows);
  }

  /* --- zoom, pan and free window/level ------------------------------------------------ */

  function applyView() {
    const img = $("slice");
    img.style.transform = `translate(${zoom.x}px, ${zoom.y}px) scale(${zoom.scale})`;
    let label = `zoom ${zoom.scale.toFixed(1)}×`;
    if (free) {
      // While dragging, preview on the loaded image (it holds [c0 ± w0/2] as 0..1); on release
      // the server renders the free window from the stored HU, so no grey levels are lost.
      const [c0, w0] = loaded || [free.center, free.width];
      const slope = w0 / free.width;
      const intercept = (c0 - w0 / 2 - (free.center - free.width / 2)) / free.width;
      for (const id of ["wl-r", "wl-g", "wl-b"]) {
        $(id).setAttribute("slope", slope.toFixed(5));
        $(id).setAttribute("intercept", intercept.toFixed(5));
      }
      const exact = Math.abs(slope - 1) < 1e-4 && Math.abs(intercept) < 1e-4;
      img.style.filter = exact ? "" : "url(#wl)";
      label += ` · window L ${free.center.toFixed(0)} / W ${free.width.toFixed(0)} HU (free)`;
    } else {
      img.style.filter = "";
      const [c, w] = ICH.WINDOW_LEVELS[view.window] || [null, null];
      label += c === null ? "" : ` · window L ${c} / W ${w} HU (${view.window})`;
    }
    $("view-state").textContent = label;
    $("stage").dataset.scale = zoom.scale.toFixed(3);
    $("stage").dataset.window = free ? `${free.center.toFixed(0)}/${free.width.toFixed(0)}` : view.window;
  }

  function setZoom(scale, cx, cy) {
    const s = Math.max(1, Math.min(8, scale));
    // Keep the point under (cx, cy) (stage pixels from the centre) where it is.
    zoom.x = cx - ((cx - zoom.x) * s) / zoom.scale;
    zoom.y = cy - ((cy - zoom.y) * s) / zoom.scale;
    zoom.scale = s;
    if (s === 1) { zoom.x = 0; zoom.y = 0; }
    applyView();
  }

  function resetView() {
    zoom.scale = 1; zoom.x = 0; zoom.y = 0;
    const wasFree = free !== null;
    free = null;
    if (wasFree) show(view.sop); else applyView();
  }

  function viewer() {
    const stage = $("stage");
    $("slice").addEventListener("load", () => {
      loaded = pending;
      stage.dataset.rendered = loaded ? `${loaded[0]}/${loaded[1]}` : "";
      applyView();
    });
    const centre = (e) => {
      const box = stage.getBoundingClientRect();
      return [e.clientX - box.left - box.width / 2, e.clientY - box.top - box.height / 2];
    };
    stage.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [cx, cy] = centre(e);
      setZoom(zoom.scale * Math.exp(-e.deltaY / 500), cx, cy);
    }, { passive: false });
    stage.addEventListener("contextmenu", (e) => e.preventDefault());
    let drag = null;
    stage.addEventListener("pointerdown", (e) => {
      const wl = e.button === 2 || e.shiftKey;
      if (e.button !== 0 && e.button !== 2) return;
      e.preventDefault();
      stage.setPointerCapture(e.pointerId);
      if (wl && !free) {
        const [c, w] = ICH.WINDOW_LEVELS[view.window] || [40, 80];
        free = { center: c, width: w };
      }
      drag = { wl, x: e.clientX, y: e.clientY, zx: zoom.x, zy: zoom.y,
        c: free ? free.center : 0, w: free ? free.width : 0 };
      stage.classList.add(wl ? "windowing" : "panning");
    });
    stage.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.wl) {
        free.width = Math.max(1, drag.w * Math.exp(dx / 200));
        free.center = drag.c - (dy * drag.w) / 256;
      } else {
        zoom.x = drag.zx + dx; zoom.y = drag.zy + dy;
      }
      applyView();
    });
    const end = () => {
      const windowed = drag && drag.wl;
      drag = null;
      stage.classList.remove("windowing", "panning");
      if (windowed) {  // the free window, in whole HU, rendered by the server from the stored HU
        free = { center: Number(free.center.toFixed(0)), width: Number(free.width.toFixed(0)) };
        show(view.sop);
      }
    };
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
    stage.addEventListener("keydown", (e) => {
      if (e.key === "+" || e.key === "=") setZoom(zoom.scale * 1.25, 0, 0);
      else if (e.key === "-") setZoom(zoom.scale / 1.25, 0, 0);
      else if (e.key === "0") resetView();
      else return;
      e.preventDefault();
    });
    $("reset-view").onclick = resetView;
  }

  function controls() {
    $("windows").replaceChildren(...info.windows.map((w) => h("label", { class: "seg" },
      h("input", { type: "radio", name: "window", value: w, checked: w === view.window,
        onchange: () => { view.window = w; free = null; show(view.sop); } }), w)));
    $("cam-subtype").replaceChildren(...info.subtypes.map((s) =>
      h("option", { value: s, selected: s === view.subtype }, info.display_names[s])));
    $("cam-subtype").onchange = (e) => { view.subtype = e.target.value; show(view.sop); };
    $("overlay").onchange = (e) => { view.overlay = e.target.checked; show(view.sop); };
  }

  function show(sop) {
    if (!sop) return;
    view.sop = sop;
    const inst = study.instances.find((i) => i.sop_instance_uid === sop);
    const idx = study.instances.indexOf(inst);
    const isKey = sop === study.key_sop_instance_uid;
    const src = imageUrl(sop, { ...view, free, letters: false });
    if ($("slice").getAttribute("src") !== src) {
      pending = free ? [free.center, free.width].map((v) => Number(v.toFixed(0)))
        : ICH.WINDOW_LEVELS[view.window];
      $("slice").src = src;
    }
    showLetters(sop);
    $("slice").alt = `Slice ${idx + 1} of ${study.instances.length}${isKey ? " (key slice)" : ""}, ${free ? "free" : view.window} window${view.overlay ? ", saliency overlay" : ""}`;
    $("slice-label").textContent = `${idx + 1} / ${study.instances.length}${isKey ? " – key slice" : ""}`;
    applyView();
    const probs = inst.probabilities;
    $("slice-caption").textContent = probs
      ? `z ${inst.z === null ? "?" : inst.z.toFixed(1)} mm · any ${ICH.pct(probs.any)} · ` +
        info.subtypes.filter((s) => s !== "any").map((s) => `${ICH.ABBREV[s]} ${ICH.pct(probs[s])}`).join(" · ")
      : `${inst.status}${inst.error ? `: ${inst.error}` : ""}`;
    for (const b of document.querySelectorAll("#strip button")) {
      b.setAttribute("aria-pressed", String(b.dataset.sop === sop));
    }
    markThumbs();
    drawPlot();
  }

  function strip() {
    $("strip").replaceChildren(...study.instances.map((inst, i) => {
      const key = inst.sop_instance_uid === study.key_sop_instance_uid;
      return h("button", { type: "button", class: `thumb${key ? " key" : ""}`, "data-sop": inst.sop_instance_uid,
        title: `Slice ${i + 1}${inst.probabilities ? `, any ${ICH.pct(inst.probabilities.any)}` : ""}`,
        onclick: () => show(inst.sop_instance_uid) },
        h("img", { src: imageUrl(inst.sop_instance_uid, { window: "brain", size: 96 }), alt: `Slice ${i + 1}`,
          loading: "lazy", width: 96, height: 96 }),
        h("span", { class: "tbar", style: `width:${inst.probabilities ? (100 * inst.probabilities.any).toFixed(0) : 0}%` }));
    }));
  }

  /* The plot: x = slice position (z, or the index when z is missing), y = probability. */
  function drawPlot() {
    const svg = $("zplot");
    const W = 640, H = 260, L = 44, R = 12, T = 12, B = 34;
    const pts = study.instances.map((inst, i) => ({ inst, x: inst.z === null ? i : inst.z }));
    if (!pts.length) { svg.replaceChildren(); return; }
    const scored = pts.filter((p) => p.inst.probabilities);
    const xs = pts.map((p) => p.x);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - y) * (H - T - B);
    const parts = [h("title", {}, "Probability of each label along the slices"),
      h("desc", {}, `x: slice position (${study.instances.some((i) => i.z !== null) ? "z in mm" : "index"}), y: probability from 0 to 1`)];
    for (const y of [0, 0.25, 0.5, 0.75, 1]) {
      parts.push(h("line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }),
        h("text", { class: "tick", x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, `${y * 100}%`));
    }
    const nt = 5;
    for (let k = 0; k <= nt; k++) {
      const x = x0 + (k / nt) * (x1 - x0);
      parts.push(h("text", { class: "tick", x: sx(x), y: H - B + 16, "text-anchor": "middle" }, x.toFixed(0)));
    }
    parts.push(h("text", { class: "tick", x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "z (mm)"));
    const sel = pts.find((p) => p.inst.sop_instance_uid === view.sop);
    if (sel) parts.push(h("line", { class: "cursor", x1: sx(sel.x), x2: sx(sel.x), y1: T, y2: H - B }));
    for (const s of [...info.subtypes.filter((s) => s !== "any"), "any"]) {
      const d = scored.map((p) => `${sx(p.x).toFixed(1)},${sy(p.inst.probabilities[s]).toFixed(1)}`).join(" ");
      if (d) parts.push(h("polyline", { class: `series ${s}`, points: d, stroke: ICH.COLORS[s],
        "stroke-width": s === "any" ? 3 : 2, fill: "none" }));
    }
    // A transparent hit area: clicking the plot shows the nearest slice.
    const hit = h("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "transparent", class: "hit" });
    hit.addEventListener("click", (e) => {
      const box = svg.getBoundingClientRect();
      const vx = ((e.clientX - box.left) / box.width) * W;
      const near = pts.reduce((a, b) => (Math.abs(sx(a.x) - vx) <= Math.abs(sx(b.x) - vx) ? a : b));
      show(near.inst.sop_instance_uid);
    });
    parts.push(hit);
    svg.replaceChildren(...parts);
    svg.dataset.series = String(svg.querySelectorAll("polyline").length);
    $("legend").replaceChildren(...info.subtypes.map((s) => h("li", {},
      h("span", { class: "swatch", style: `background:${ICH.COLORS[s]}` }), info.display_names[s])));
  }

  function versions() {
    $("versions").tBodies[0].replaceChildren(...[...study.versions].reverse().map((v) => h("tr", {},
      h("th", { scope: "row" }, `v${v.version}`), h("td", {}, ICH.time(v.created_at)),
      h("td", {}, v.flagged ? h("span", { class: "badge hot" }, v.flagged_subtypes.join(", ") || "yes") : "no"),
      h("td", { class: "num" }, ICH.pct(v.probabilities ? v.probabilities.any : null)),
      h("td", { class: "mono" }, (v.model_id || "").slice(0, 12)))));
  }

  /* --- review: verdict, subtypes, marked slices, who, note -------------------------- */

  const marked = new Set();

  function markThumbs() {
    for (const b of document.querySelectorAll("#strip button")) {
      b.classList.toggle("marked", marked.has(b.dataset.sop));
    }
    $("marked-count").textContent = marked.size ? `${marked.size} slice${marked.size > 1 ? "s" : ""} marked` : "No slice marked";
    $("mark-slice").setAttribute("aria-pressed", String(marked.has(view.sop)));
  }

  function reviews() {
    const list = [...(study.reviews || [])].reverse();
    $("reviews").hidden = list.length === 0;
    $("reviews").tBodies[0].replaceChildren(...list.map((r) => h("tr", {},
      h("td", {}, ICH.time(r.created_at)),
      h("td", {}, h("span", { class: `review ${r.verdict}` }, ICH.VERDICTS[r.verdict] || r.verdict)),
      h("td", {}, r.subtypes === null ? "(the result's)" : r.subtypes.map((s) => ICH.ABBREV[s]).join(", ") || "none"),
      h("td", { class: "num" }, r.slices ? r.slices.length : 0),
      h("td", {}, r.reviewer), h("td", {}, `v${r.version}`), h("td", {}, r.note || ""))));
  }

  function reviewForm() {
    $("review-subtypes").append(...info.subtypes.filter((s) => s !== "any").map((s) =>
      h("label", {}, h("input", { type: "checkbox", name: "subtype", value: s }), ` ${info.display_names[s]}`)));
    $("mark-slice").onclick = () => {
      if (!view.sop) return;
      if (marked.has(view.sop)) marked.delete(view.sop); else marked.add(view.sop);
      markThumbs();
    };
    $("review-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const verdict = (document.querySelector("input[name=verdict]:checked") || {}).value;
      const ticked = [...document.querySelectorAll("input[name=subtype]:checked")].map((i) => i.value);
      const body = { verdict, slices: marked.size ? [...marked] : null,
        subtypes: ticked.length ? ticked : null,
        reviewer: $("reviewer").value.trim() || null, note: $("review-note").value.trim() || null };
      const r = await fetch(`/api/studies/${encodeURIComponent(uid)}/reviews`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body) });
      if (!r.ok) {
        const detail = await r.json().catch(() => ({}));
        $("review-status").textContent = `Not saved: ${typeof detail.detail === "string" ? detail.detail : `HTTP ${r.status}`}`;
        return;
      }
      study.reviews = [...(study.reviews || []), await r.json()];
      $("review-status").textContent = "Saved";
      reviews();
    });
    reviews();
  }

  function deliveries() {
    const list = study.deliveries || [];
    const latest = (study.versions || []).slice(-1)[0];
    const state = $("report-state");
    state.hidden = !latest || !["failed", "pending"].includes(latest.reports);
    if (!state.hidden) {
      state.textContent = latest.reports === "failed"
        ? `Report objects of v${latest.version} could not be built: ${latest.report_error}. ` +
          "Fix the cause, then run ichnode resend --study for this study."
        : `Report objects of v${latest.version} are being built.`;
    }
    $("no-deliveries").hidden = list.length > 0;
    $("deliveries").hidden = list.length === 0;
    $("deliveries").tBodies[0].replaceChildren(...list.map((d) => {
      const attempts = d.history || d.attempt_history || [];
      const last = attempts.length ? attempts[attempts.length - 1] : null;
      const lastText = d.sent_at ? `sent ${ICH.time(d.sent_at)}` : (d.last_error || (last && last.error) || "–");
      return h("tr", { class: d.status === "failed" ? "flagged" : null },
        h("th", { scope: "row" }, d.version ? `v${d.version}` : "–"),
        h("td", {}, `${d.destination || "?"}${d.ae_title ? ` (${d.ae_title})` : ""}`),
        h("td", {}, d.kind || "–"),
        h("td", {}, h("span", { class: `state ${d.status === "failed" ? "delivery_failed" : d.status === "sent" ? "reported" : "scored"}` }, d.status)),
        h("td", { class: "num" }, typeof d.attempts === "number" ? d.attempts : attempts.length),
        h("td", {}, lastText));
    }));
  }

  async function main() {
    [info, study] = await Promise.all([ICH.json("/api/info"), ICH.json(`/api/studies/${encodeURIComponent(uid)}`)]);
    facts(); findings(); controls(); viewer(); strip(); versions(); deliveries(); reviewForm();
    const first = study.key_sop_instance_uid ||
      (study.instances[Math.floor(study.instances.length / 2)] || {}).sop_instance_uid;
    if (first) show(first); else drawPlot();
    document.body.dataset.loaded = "true";
  }
  main().catch((err) => { $("error").textContent = err.message; $("error").hidden = false; });
})();
