/* The worklist: fetches /api/studies every few seconds and redraws the table body. */
"use strict";
(function () {
  const h = ICH.h;
  const $ = (id) => document.getElementById(id);
  const PAGE = 200;
  const BASE_TITLE = "Worklist – ichnode";
  let info = null, lastBody = "", studies = [], order = [];
  /** Sort: a column key and a direction; "triage" is the server's order. */
  const sort = { key: "triage", dir: 1 };
  /** Flagged study UIDs already seen (null until the first answer: those are not "new"). */
  let seenFlagged = null;
  let audio = null;

  const thresholdOf = (s) => (info.thresholds ? info.thresholds[s] : null);

  /** Columns: key, heading, hover title, sort value of a study (index = server order) and the
   *  direction of a first click (-1: highest first). */
  function columns() {
    const cols = [{ key: "triage", label: "Flag", title: "Flag and the subtypes over their thresholds (sort: triage order)",
      value: (s, i) => i }];
    if (info.show_patient_identifiers) {
      cols.push({ key: "patient", label: "Patient", title: "Patient name and ID",
        value: (s) => (s.patient ? ICH.personName(s.patient.patient_name).toLowerCase() : "") });
      cols.push({ key: "accession", label: "Acc.", title: "Accession number",
        value: (s) => (s.patient && s.patient.accession_number) || "" });
    }
    cols.push({ key: "study", label: "Study", title: "Study description and date",
      value: (s) => (s.patient ? `${s.patient.study_description || ""} ${s.patient.study_date || ""}` : s.study_instance_uid).toLowerCase() });
    cols.push({ key: "arrived", label: "Arrived", title: "Time since the last slice arrived",
      first: -1, value: (s) => new Date(s.last_received_at).getTime() });
    cols.push({ key: "state", label: "Status", title: "Receiving, scored, reported or delivery failed",
      value: (s) => s.state });
    for (const name of order) {
      cols.push({ key: name, label: ICH.ABBREV[name] || name, prob: name,
        title: `${info.display_names[name]}${thresholdOf(name) === null || thresholdOf(name) === undefined ? "" : `, threshold ${ICH.pct(thresholdOf(name))}`}`,
        first: -1, value: (s) => (s.probabilities && s.probabilities[name] !== undefined ? s.probabilities[name] : -1) });
    }
    cols.push({ key: "slices", label: "Slices", title: "Scored / received slices", first: -1, value: (s) => s.n_instances });
    return cols;
  }

  function head(cols) {
    $("head").replaceChildren(...cols.map((c) => {
      const active = sort.key === c.key;
      const arrow = active ? (sort.dir > 0 ? " ▲" : " ▼") : "";
      return h("th", { scope: "col", class: c.prob ? "pcol" : null, "data-key": c.key,
        "aria-sort": active ? (sort.dir > 0 ? "ascending" : "descending") : "none" },
        h("button", { type: "button", class: "sort", title: `${c.title} – click to sort`,
          onclick: () => { sort.dir = sort.key === c.key ? -sort.dir : (c.first || 1); sort.key = c.key; draw(); } },
          c.label, h("span", { class: "arrow", "aria-hidden": "true" }, arrow)));
    }));
  }

  function shortUid(uid) { return `…${uid.slice(-8)}`; }

  function row(study) {
    const href = `/studies/${encodeURIComponent(study.study_instance_uid)}`;
    const p = study.patient;
    const flagged = new Set(study.flagged_subtypes || []);
    const cells = [
      h("td", { class: "flag" }, study.flagged
        ? h("span", { class: "badge hot", title: `Flagged: ${(study.flagged_subtypes || []).map((s) => info.display_names[s] || s).join(", ")}` },
          ICH.flagText(study.flagged_subtypes))
        : h("span", { class: "badge" }, study.flagged === false ? "not flagged" : "pending")),
    ];
    if (info.show_patient_identifiers) {
      cells.push(h("td", { class: "phi patient" },
        h("span", { class: "who" },
          h("span", { class: "name" }, (p && ICH.personName(p.patient_name)) || "(no name)"),
          p && ICH.ageSex(p) ? h("span", { class: "agesex" }, ` · ${ICH.ageSex(p)}`) : null),
        p && p.patient_id ? h("span", { class: "sub mono" }, p.patient_id) : null));
      cells.push(h("td", { class: "phi mono acc" }, (p && p.accession_number) || "–"));
    }
    const desc = p && p.study_description;
    const date = p ? ICH.dicomDate(p.study_date, p.study_time) : "";
    cells.push(
      h("th", { scope: "row", class: "study" },
        h("a", { href, title: `Study Instance UID ${study.study_instance_uid}` },
          desc || (date ? "Study" : `Study ${shortUid(study.study_instance_uid)}`)),
        date ? h("span", { class: "sub" }, date) : null),
      h("td", { class: "arrived" }, h("time", { datetime: study.last_received_at, title: ICH.time(study.last_received_at) },
        ICH.ago(study.last_received_at))),
      h("td", {}, h("span", { class: `state ${study.state}` }, ICH.STATES[study.state] || study.state),
        study.review ? h("span", { class: `review ${study.review}`, title: `Reviewed: ${study.review}` },
          ICH.VERDICTS[study.review] || study.review) : null));
    for (const s of order) {
      const prob = study.probabilities ? study.probabilities[s] : null;
      cells.push(h("td", { class: "prob", "data-subtype": s },
        ICH.bar(s, prob, flagged.has(s), info.display_names[s], thresholdOf(s), true)));
    }
    cells.push(h("td", { class: "num slices" },
      study.n_scored === null ? `${study.n_instances}` : `${study.n_scored}/${study.n_instances}`));
    const tr = h("tr", { "data-uid": study.study_instance_uid, class: study.flagged ? "flagged" : null }, cells);
    tr.addEventListener("click", (e) => { if (e.target.tagName !== "A") location.href = href; });
    tr.dataset.search = [tr.textContent, study.study_instance_uid, p && p.patient_name,
      ...(study.flagged_subtypes || []).map((n) => info.display_names[n])].filter(Boolean).join(" ").toLowerCase();
    return tr;
  }

  function sorted(cols) {
    const col = cols.find((c) => c.key === sort.key) || cols[0];
    const keyed = studies.map((s, i) => ({ s, i, v: col.value(s, i) }));
    keyed.sort((a, b) => (a.v < b.v ? -1 : a.v > b.v ? 1 : a.i - b.i) * sort.dir);
    return keyed.map((k) => k.s);
  }

  function draw() {
    const cols = columns();
    head(cols);
    const rows = sorted(cols).map(row);
    document.querySelector("#worklist tbody").replaceChildren(...rows);
    applyFilter();
  }

  function applyFilter() {
    const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const tr of document.querySelectorAll("#worklist tbody tr")) {
      const text = tr.dataset.search || "";
      const ok = words.every((w) => text.includes(w));
      tr.hidden = !ok;
      shown += ok;
    }
    $("empty").hidden = shown > 0;
  }

  function legend() {
    const parts = order.map((s) => `${ICH.ABBREV[s]} ${info.display_names[s].toLowerCase()}` +
      (thresholdOf(s) === null || thresholdOf(s) === undefined ? "" : ` (threshold ${ICH.pct(thresholdOf(s))})`));
    $("legend").textContent = `Red: at or over the model's threshold; the tick on each bar marks the threshold. ${parts.join(" · ")}.`;
  }

  /* --- announcing newly flagged studies: title, favicon, optional tone ------------------ */

  function favicon(count) {
    const c = document.createElement("canvas");
    c.width = c.height = 32;
    const g = c.getContext("2d");
    g.fillStyle = "#1b2027"; g.fillRect(0, 0, 32, 32);
    g.fillStyle = "#e8ecf0"; g.font = "bold 13px sans-serif"; g.textAlign = "center"; g.textBaseline = "middle";
    g.fillText("ich", 16, count ? 24 : 16);
    if (count) {
      g.fillStyle = "#e5484d"; g.beginPath(); g.arc(22, 10, 10, 0, 2 * Math.PI); g.fill();
      g.fillStyle = "#fff"; g.font = "bold 14px sans-serif";
      g.fillText(count > 9 ? "9+" : String(count), 22, 11);
    }
    $("favicon").href = c.toDataURL("image/png");
    document.body.dataset.favicon = String(count);
  }

  function tone() {
    if (!$("sound").checked) return;
    try {
      audio = audio || new AudioContext();
      const t0 = audio.currentTime;
      for (const [i, f] of [880, 660].entries()) {
        const osc = audio.createOscillator(), gain = audio.createGain();
        osc.frequency.value = f; osc.type = "sine";
        gain.gain.setValueAtTime(0.0001, t0 + i * 0.22);
        gain.gain.exponentialRampToValueAtTime(0.25, t0 + i * 0.22 + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, t0 + i * 0.22 + 0.2);
        osc.connect(gain).connect(audio.destination);
        osc.start(t0 + i * 0.22); osc.stop(t0 + i * 0.22 + 0.21);
      }
    } catch (err) { /* no audio device: the title and the favicon still announce it */ }
  }

  function announce() {
    const flagged = studies.filter((s) => s.flagged);
    const fresh = seenFlagged === null ? [] : flagged.filter((s) => !seenFlagged.has(s.study_instance_uid));
    seenFlagged = new Set([...(seenFlagged || []), ...flagged.map((s) => s.study_instance_uid)]);
    document.title = flagged.length ? `(${flagged.length}) FLAGGED – ichnode` : BASE_TITLE;
    favicon(flagged.length);
    if (fresh.length) {
      $("announce").textContent = `Newly flagged: ${fresh.map((s) =>
        `${s.patient ? ICH.personName(s.patient.patient_name) || "study" : shortUid(s.study_instance_uid)} (${ICH.flagText(s.flagged_subtypes).replace("FLAGGED · ", "")})`).join("; ")}`;
      document.body.dataset.newFlagged = String(Number(document.body.dataset.newFlagged || 0) + fresh.length);
      tone();
    }
  }

  async function refresh() {
    const params = new URLSearchParams({ limit: PAGE, order: "triage" });
    if ($("flagged-only").checked) params.set("flagged", "true");
    if ($("state").value) params.set("status", $("state").value);
    if ($("reviewed").value) params.set("reviewed", $("reviewed").value);
    try {
      const body = await ICH.json(`/api/studies?${params}`);
      $("error").hidden = true;
      const key = JSON.stringify(body);
      if (key !== lastBody) {
        lastBody = key;
        studies = body.studies;
        draw();
        announce();
        const more = body.total > body.studies.length ? ` (first ${body.studies.length} of ${body.total})` : "";
        document.querySelector("#worklist caption").dataset.count = body.total;
        $("updated").dataset.total = body.total;
        $("updated").textContent = `${body.total} studies${more} · updated ${new Date().toLocaleTimeString()}`;
      } else {
        for (const t of document.querySelectorAll("#worklist td.arrived time")) t.textContent = ICH.ago(t.dateTime);
        $("updated").textContent = $("updated").textContent.replace(/updated .*/, `updated ${new Date().toLocaleTimeString()}`);
      }
      document.body.dataset.loaded = "true";
    } catch (err) {
      $("error").textContent = `Cannot reach ichnode: ${err.message}. Retrying…`;
      $("error").hidden = false;
    }
  }

  async function main() {
    info = await ICH.json("/api/info");
    order = ["any", ...info.subtypes.filter((s) => s !== "any")];
    legend();
    $("filter").addEventListener("input", applyFilter);
    $("sound").checked = localStorage.getItem("ichnode.sound") === "on";
    $("sound").addEventListener("change", () => {
      localStorage.setItem("ichnode.sound", $("sound").checked ? "on" : "off");
      if ($("sound").checked) { audio = audio || new AudioContext(); audio.resume(); }
    });
    for (const id of ["flagged-only", "state", "reviewed"]) $(id).addEventListener("change", () => { lastBody = ""; refresh(); });
    await refresh();
    setInterval(refresh, info.refresh_seconds * 1000);
  }
  main().catch((err) => { $("error").textContent = err.message; $("error").hidden = false; $("updated").textContent = ""; });
})();
