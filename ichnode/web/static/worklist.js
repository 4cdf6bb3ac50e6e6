/* The worklist: fetches /api/studies every few seconds and redraws the table body. */
"use strict";
(function () {
  const h = ICH.h;
  const $ = (id) => document.getElementById(id);
  const PAGE = 200;
  let info = null, lastBody = "", timer = null;

  function head() {
    const cols = [["Flag"]];
    if (info.show_patient_identifiers) cols.push(["Patient"], ["Accession"]);
    cols.push(["Study"], ["Received"], ["Status"]);
    const order = ["any", ...info.subtypes.filter((s) => s !== "any")];
    for (const s of order) cols.push([ICH.ABBREV[s] || s, info.display_names[s]]);
    cols.push(["Slices"]);
    $("head").replaceChildren(...cols.map(([label, title]) =>
      h("th", { scope: "col" }, title ? h("abbr", { title }, label) : label)));
    return order;
  }

  function row(study, order) {
    const href = `/studies/${encodeURIComponent(study.study_instance_uid)}`;
    const p = study.patient;
    const flagged = new Set(study.flagged_subtypes || []);
    const title = (p && (p.study_description || p.study_date)) || `Study …${study.study_instance_uid.slice(-8)}`;
    const cells = [
      h("td", { class: "flag" }, study.flagged
        ? h("span", { class: "badge hot" }, "FLAGGED")
        : h("span", { class: "badge" }, study.flagged === false ? "not flagged" : "pending")),
    ];
    if (info.show_patient_identifiers) {
      cells.push(h("td", { class: "phi" }, ICH.patientLine(p)),
                 h("td", { class: "phi" }, (p && p.accession_number) || "–"));
    }
    cells.push(
      h("th", { scope: "row" }, h("a", { href }, title)),
      h("td", {}, h("time", { datetime: study.last_received_at }, ICH.time(study.last_received_at))),
      h("td", {}, h("span", { class: `state ${study.state}` }, ICH.STATES[study.state] || study.state)));
    for (const s of order) {
      const prob = study.probabilities ? study.probabilities[s] : null;
      cells.push(h("td", { class: "prob" }, ICH.bar(s, prob, flagged.has(s), info.display_names[s])));
    }
    cells.push(h("td", { class: "num" },
      study.n_scored === null ? `${study.n_instances}` : `${study.n_scored}/${study.n_instances}`));
    const tr = h("tr", { "data-uid": study.study_instance_uid, class: study.flagged ? "flagged" : null }, cells);
    tr.addEventListener("click", (e) => { if (e.target.tagName !== "A") location.href = href; });
    return tr;
  }

  function applyFilter() {
    const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const tr of document.querySelectorAll("#worklist tbody tr")) {
      const text = tr.dataset.search;
      const ok = words.every((w) => text.includes(w));
      tr.hidden = !ok;
      shown += ok;
    }
    $("empty").hidden = shown > 0;
  }

  async function refresh() {
    const params = new URLSearchParams({ limit: PAGE, order: "triage" });
    if ($("flagged-only").checked) params.set("flagged", "true");
    if ($("state").value) params.set("status", $("state").value);
    try {
      const body = await ICH.json(`/api/studies?${params}`);
      $("error").hidden = true;
      const key = JSON.stringify(body);
      if (key !== lastBody) {
        lastBody = key;
        const order = head();
        const rows = body.studies.map((s) => {
          const tr = row(s, order);
          tr.dataset.search = [tr.textContent, s.study_instance_uid, ...(s.flagged_subtypes || []).map(
            (n) => info.display_names[n])].join(" ").toLowerCase();
          return tr;
        });
        document.querySelector("#worklist tbody").replaceChildren(...rows);
        applyFilter();
        const more = body.total > body.studies.length ? ` (first ${body.studies.length} of ${body.total})` : "";
        document.querySelector("#worklist caption").dataset.count = body.total;
        $("updated").dataset.total = body.total;
        $("updated").textContent = `${body.total} studies${more} · updated ${new Date().toLocaleTimeString()}`;
      } else {
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
    $("filter").addEventListener("input", applyFilter);
    for (const id of ["flagged-only", "state"]) $(id).addEventListener("change", () => { lastBody = ""; refresh(); });
    await refresh();
    timer = setInterval(refresh, info.refresh_seconds * 1000);
  }
  main().catch((err) => { $("error").textContent = err.message; $("error").hidden = false; });
})();
