/* ichnode pages: shared helpers (no dependencies, no build step). */
"use strict";

const ICH = {
  ABBREV: {
    any: "Any", epidural: "EDH", intraparenchymal: "IPH",
    intraventricular: "IVH", subarachnoid: "SAH", subdural: "SDH",
  },
  COLORS: {
    any: "#f4f4f4", epidural: "#ff7f0e", intraparenchymal: "#e8402f",
    intraventricular: "#b07cff", subarachnoid: "#2bb6d9", subdural: "#f2c94c",
  },
  STATES: {
    receiving: "Receiving", scored: "Scored", reported: "Reported",
    delivery_failed: "Delivery failed",
  },

  /** Build an element: h("td", {class: "x"}, "text", child). Text is never parsed as HTML. */
  h(tag, attrs, ...children) {
    const el = document.createElementNS(
      tag === "svg" || ICH.SVG_TAGS.has(tag) ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
      tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  },
  SVG_TAGS: new Set(["g", "line", "polyline", "path", "rect", "circle", "text", "title", "desc"]),

  async json(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  },

  pct(p) { return p === null || p === undefined ? "–" : `${(100 * p).toFixed(p >= 0.995 || p < 0.01 ? 0 : 1)}%`; },

  time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  },

  /** A small horizontal bar with the percentage written beside it. */
  bar(name, p, flagged, display) {
    const w = p === null || p === undefined ? 0 : Math.max(0, Math.min(1, p)) * 100;
    return ICH.h("span", { class: `pbar${flagged ? " hot" : ""}`, title: `${display}: ${ICH.pct(p)}` },
      ICH.h("span", { class: "track", "aria-hidden": "true" },
        ICH.h("span", { class: "fill", style: `width:${w.toFixed(1)}%` })),
      ICH.h("span", { class: "num" }, ICH.pct(p)));
  },

  patientLine(patient) {
    if (!patient) return null;
    return [patient.patient_name, patient.patient_id].filter(Boolean).join(" · ") || "(no name)";
  },
};
