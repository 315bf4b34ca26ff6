// The study list: QIDO-RS searches (PS3.18 §10.6) a page at a time (limit and offset), with
// fuzzy matching of person names, and a rendered thumbnail (PS3.18 §9.5) of each study.
import { date, dicomJson, el, frame, rendered, say, studyUrl, value, viewerUrl } from "./console.js";

frame("studies.html");

const form = document.getElementById("search");
const body = document.querySelector("#studies tbody");
const previous = document.getElementById("previous");
const next = document.getElementById("next");
const pageLabel = document.getElementById("page-label");
const pageSize = document.getElementById("page-size");
const INCLUDE = ["00081030", "00080061", "00080050"];
let page = 0;
const deleted = new URLSearchParams(location.search).get("deleted");
const notice = deleted ? `Study ${deleted} was deleted.` : "";
let generation = 0; // a newer search makes the older one's late answers moot

function query() {
  const params = new URLSearchParams();
  const data = new FormData(form);
  for (const key of ["PatientName", "PatientID", "ModalitiesInStudy", "AccessionNumber"]) {
    const text = String(data.get(key) || "").trim();
    if (!text) continue;
    // A name without wildcards matches as a prefix, as a person types it (PS3.18 §8.3.4.6).
    params.set(key, key === "PatientName" && !/[*?]/.test(text) && !data.get("fuzzy") ? `${text}*` : text);
  }
  const from = String(data.get("from") || "").replaceAll("-", "");
  const to = String(data.get("to") || "").replaceAll("-", "");
  if (from || to) params.set("StudyDate", from === to ? from : `${from}-${to}`);
  if (data.get("fuzzy")) params.set("fuzzymatching", "true");
  for (const tag of INCLUDE) params.append("includefield", tag);
  return params;
}

function state() {
  const params = query();
  params.delete("includefield");
  params.set("page", String(page + 1));
  params.set("size", pageSize.value);
  if (deleted) params.set("deleted", deleted);
  return params;
}

function restore() {
  const params = new URLSearchParams(location.search);
  for (const input of form.elements) {
    if (!input.name || !params.has(input.name)) continue;
    if (input.type === "checkbox") input.checked = params.get(input.name) === "on";
    else input.value = params.get(input.name);
  }
  page = Math.max(0, Number(params.get("page") || 1) - 1);
  if (params.has("size")) pageSize.value = params.get("size");
}

async function thumbnail(cell, study) {
  try {
    const [first] = await dicomJson(`/studies/${study}/instances?limit=1&includefield=00280010`);
    if (!first || !value(first, "00280010")) return; // no image in the study's first instance
    const url = await rendered(study, value(first, "0020000E"), value(first, "00080018"), 64);
    cell.replaceChildren(el("img", { class: "thumb", src: url, alt: "" }));
  } catch {
    // A study without a renderable image keeps its empty cell.
  }
}

async function search() {
  const mine = ++generation;
  const size = Number(pageSize.value);
  const params = query();
  params.set("limit", String(size + 1)); // one more than shown: is there a next page?
  params.set("offset", String(page * size));
  say("Searching…");
  const found = await dicomJson(`/studies?${params}`);
  if (mine !== generation) return;
  const shown = found.slice(0, size);
  body.replaceChildren(...shown.map((study) => {
    const uid = value(study, "0020000D");
    const image = el("td", { "data-label": null });
    thumbnail(image, uid);
    const name = value(study, "00100010") || "(no name)";
    return el("tr", { "data-study": uid },
      image,
      el("td", { "data-label": "Patient" }, el("a", { href: studyUrl(uid) }, name)),
      el("td", { "data-label": "Patient ID" }, value(study, "00100020")),
      el("td", { "data-label": "Date" }, date(value(study, "00080020"))),
      el("td", { "data-label": "Modalities" }, (study["00080061"]?.Value || []).join(", ")),
      el("td", { "data-label": "Accession" }, value(study, "00080050")),
      el("td", { "data-label": "Description" }, value(study, "00081030")),
      el("td", { "data-label": "Series / instances" }, `${value(study, "00201206")} / ${value(study, "00201208")}`),
      el("td", {}, el("a", { href: viewerUrl(uid), "aria-label": `Open ${name} in the viewer` }, "Open in viewer")),
    );
  }));
  const first = page * size;
  pageLabel.textContent = shown.length
    ? `Page ${page + 1}: studies ${first + 1}–${first + shown.length}`
    : page ? `Page ${page + 1}: no more studies` : "No study matches";
  previous.disabled = page === 0;
  next.disabled = found.length <= size;
  history.replaceState(null, "", `?${state()}`);
  say(shown.length ? notice : "No study matches the search.");
}

function run() { search().catch((error) => say(error.message, "error")); }

form.addEventListener("submit", (event) => { event.preventDefault(); page = 0; run(); });
form.addEventListener("reset", () => { setTimeout(() => { page = 0; run(); }); });
previous.addEventListener("click", () => { if (page > 0) { page -= 1; run(); } });
next.addEventListener("click", () => { page += 1; run(); });
pageSize.addEventListener("change", () => { page = 0; run(); });

restore();
run();
