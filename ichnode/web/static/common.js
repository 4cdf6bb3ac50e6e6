/* ichnode pages: shared helpers (no dependencies, no build step). */
"use strict";

const ICH = {
  ABBREV: {
    any: "any", epidural: "EDH", intraparenchymal: "IPH",
    intraventricular: "IVH", subarachnoid: "SAH", subdural: "SDH",
  },
  COLORS: {
    any: "#f4f4f4", epidural: "#ff7f0e", intraparenchymal: "#e8402f",
    intraventricular: "#b07cff", subarachnoid: "#2bb6d9", subdural: "#f2c94c",
  },
  /** [center, width] in HU of the server's named windows (ichnode.imaging.WINDOWS). */
  WINDOW_LEVELS: {
    brain: [40, 80], subdural: [80, 200], soft: [40, 380], bone: [600, 2800],
  },
  /** A review's verdict as the pages show it. */
  VERDICTS: { confirmed: "✓ confirmed", rejected: "✗ false alarm", missed: "! missed finding" },
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

  /** "p 0.412, threshold 0.183 (over)": the hover text of a probability. */
  probTitle(display, p, threshold) {
    if (p === null || p === undefined) return `${display}: not scored yet`;
    const t = threshold === null || threshold === undefined ? "none" : threshold.toFixed(3);
    const call = threshold === null || threshold === undefined ? ""
      : p >= threshold ? " – at or over the threshold" : " – under the threshold";
    return `${display}: p ${p.toFixed(3)}, threshold ${t}${call}`;
  },

  /** A small bar with the percentage written beside (or, compact, above) it. */
  bar(name, p, flagged, display, threshold, compact) {
    const w = p === null || p === undefined ? 0 : Math.max(0, Math.min(1, p)) * 100;
    const mark = threshold === null || threshold === undefined ? null
      : ICH.h("span", { class: "tmark", style: `left:${(100 * Math.max(0, Math.min(1, threshold))).toFixed(1)}%` });
    return ICH.h("span", { class: `pbar${flagged ? " hot" : ""}${compact ? " compact" : ""}`,
      title: ICH.probTitle(display, p, threshold) },
      ICH.h("span", { class: "num" }, ICH.pct(p)),
      ICH.h("span", { class: "track", "aria-hidden": "true" },
        ICH.h("span", { class: "fill", style: `width:${w.toFixed(1)}%` }), mark));
  },

  /** DICOM PN "FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX" -> "Family, Given Middle". */
  personName(pn) {
    if (!pn) return "";
    const alphabetic = String(pn).split("=")[0];
    const [family = "", given = "", middle = "", prefix = "", suffix = ""] =
      alphabetic.split("^").map((s) => s.trim());
    // Names stored in capitals read better in title case; mixed-case names stay as written.
    const tidy = (s) => (s && s === s.toUpperCase()
      ? s.toLowerCase().replace(/(^|[\s'-])(\p{L})/gu, (m, a, b) => a + b.toUpperCase()) : s);
    const first = [prefix, given, middle].filter(Boolean).map(tidy).join(" ");
    const name = [tidy(family), first].filter(Boolean).join(", ");
    return [name, tidy(suffix)].filter(Boolean).join(" ") || alphabetic;
  },

  /** DICOM AS "054Y" (days D, weeks W, months M, years Y) -> "54 Y"; other text as it is. */
  age(as) {
    if (!as) return "";
    const m = /^(\d{1,3})\s*([DWMY])$/i.exec(String(as).trim());
    return m ? `${Number(m[1])} ${m[2].toUpperCase()}` : String(as).trim();
  },

  /** "54 Y · F": the patient's age and sex, as far as the headers give them. */
  ageSex(patient) {
    if (!patient) return "";
    return [ICH.age(patient.patient_age), (patient.patient_sex || "").trim()].filter(Boolean).join(" · ");
  },

  /** DICOM DA "YYYYMMDD" (and TM "HHMMSS.frac") -> "2026-12-01 14:03". */
  dicomDate(da, tm) {
    if (!da) return "";
    const m = /^(\d{4})(\d{2})(\d{2})$/.exec(String(da).trim());
    let out = m ? `${m[1]}-${m[2]}-${m[3]}` : String(da);
    const t = tm ? /^(\d{2})(\d{2})/.exec(String(tm).trim()) : null;
    if (t) out += ` ${t[1]}:${t[2]}`;
    return out;
  },

  /** "just now", "4 min ago", "3 h ago", "2 d ago". */
  ago(iso, now) {
    if (!iso) return "–";
    const s = Math.max(0, ((now || Date.now()) - new Date(iso).getTime()) / 1000);
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.max(1, Math.round(s / 60))} min ago`;
    if (s < 86400 * 2) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  },

  /** "FLAGGED · SDH, SAH" from a study's flagged_subtypes (any alone when nothing else). */
  flagText(subtypes) {
    const list = (subtypes || []).filter((s) => s !== "any");
    const names = (list.length ? list : (subtypes || [])).map((s) => ICH.ABBREV[s] || s);
    return names.length ? `FLAGGED · ${names.join(", ")}` : "FLAGGED";
  },

  patientLine(patient) {
    if (!patient) return null;
    return [ICH.personName(patient.patient_name), patient.patient_id].filter(Boolean).join(" · ") || "(no name)";
  },
};
