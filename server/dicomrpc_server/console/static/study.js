// A study: its series and instances (QIDO-RS), an instance's metadata (WADO-RS, PS3.18
// §10.4) as a table with its rendered frame (PS3.18 §9.5), the instance's file to download
// (WADO-RS, PS3.18 §10.4.1), and the study's deletion after a confirmation.
import { DICOMWEB, call, date, dicomJson, el, frame, rendered, say, value, values, viewerUrl } from "./console.js";
import { TAG_NAMES } from "./tags.js";

frame("studies.html");

const study = new URLSearchParams(location.search).get("study") || "";
const seriesBody = document.querySelector("#series tbody");
const instancesBody = document.querySelector("#instances tbody");

async function load() {
  if (!study) { say("No study named: open one from the study list.", "error"); return; }
  const [found] = await dicomJson(`/studies?StudyInstanceUID=${encodeURIComponent(study)}&includefield=00081030&includefield=00080061`);
  if (!found) { say("This study is not in the archive (it may have been deleted).", "error"); return; }
  const name = value(found, "00100010") || "(no name)";
  document.querySelector("h1").textContent = `Study of ${name}`;
  document.title = `${name} · dicomrpc console`;
  const summary = [
    ["Patient", name], ["Patient ID", value(found, "00100020")],
    ["Date", date(value(found, "00080020"))], ["Description", value(found, "00081030")],
    ["Accession", value(found, "00080050")], ["Modalities", values(found, "00080061")],
    ["Series / instances", `${value(found, "00201206")} / ${value(found, "00201208")}`],
    ["Study Instance UID", study],
  ];
  document.getElementById("study-summary").replaceChildren(...summary.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  document.getElementById("study-actions").replaceChildren(
    el("a", { href: viewerUrl(study), class: "button" }, "Open in viewer"),
    el("button", { type: "button", class: "danger", id: "delete", onclick: () => confirmDelete(name) }, "Delete study…"),
  );
  const series = await dicomJson(`/studies/${study}/series`);
  series.sort((a, b) => Number(value(a, "00200011")) - Number(value(b, "00200011")));
  seriesBody.replaceChildren(...series.map((s) => {
    const uid = value(s, "0020000E");
    return el("tr", {},
      el("td", {}, value(s, "00200011")),
      el("td", {}, value(s, "00080060")),
      el("td", {}, value(s, "0008103E")),
      el("td", {}, value(s, "00201209")),
      el("td", { class: "uid" }, el("button", { type: "button", class: "secondary", onclick: () => showSeries(uid) }, "Show instances"), " ", uid),
    );
  }));
  if (series.length) await showSeries(value(series[0], "0020000E"));
}

async function showSeries(series) {
  const instances = await dicomJson(`/studies/${study}/series/${series}/instances?limit=1000`);
  instances.sort((a, b) => Number(value(a, "00200013")) - Number(value(b, "00200013")));
  instancesBody.replaceChildren(...instances.map((i) => {
    const uid = value(i, "00080018");
    return el("tr", {},
      el("td", {}, value(i, "00200013")),
      el("td", {}, value(i, "00080016")),
      el("td", {}, value(i, "00280008") || 1),
      el("td", { class: "uid" }, el("button", { type: "button", class: "secondary", onclick: () => showInstance(series, uid) }, "Show"), " ", uid),
      el("td", {}, el("button", { type: "button", class: "secondary", onclick: () => download(series, uid), "aria-label": `Download instance ${value(i, "00200013")}` }, "Download .dcm")),
    );
  }));
  document.getElementById("instances-section").hidden = false;
  if (instances.length) await showInstance(series, value(instances[0], "00080018"));
}

function shown(attribute) {
  if (!attribute.Value) return attribute.BulkDataURI ? "(bulk data)" : attribute.InlineBinary ? "(binary)" : "";
  if (attribute.vr === "SQ") return `(${attribute.Value.length} item${attribute.Value.length === 1 ? "" : "s"})`;
  return attribute.Value.map((v) => (v && typeof v === "object" ? v.Alphabetic || JSON.stringify(v) : v)).join("\\");
}

async function showInstance(series, instance) {
  const [metadata] = await dicomJson(`/studies/${study}/series/${series}/instances/${instance}/metadata`);
  const rows = Object.keys(metadata).sort().map((tag) => el("tr", {},
    el("td", {}, `(${tag.slice(0, 4)},${tag.slice(4)})`),
    el("td", {}, TAG_NAMES[tag] || ""),
    el("td", {}, metadata[tag].vr),
    el("td", {}, shown(metadata[tag]).slice(0, 200)),
  ));
  document.querySelector("#metadata tbody").replaceChildren(...rows);
  document.getElementById("instance-section").hidden = false;
  const image = document.getElementById("frame");
  const caption = document.getElementById("frame-caption");
  if (!metadata["7FE00010"]) {
    image.hidden = true;
    caption.textContent = "This instance holds no image.";
    return;
  }
  image.hidden = false;
  image.src = await rendered(study, series, instance, 512);
  image.alt = `First frame of instance ${value(metadata, "00200013")}`;
  caption.textContent = `Instance ${value(metadata, "00200013")}, rendered by the archive`;
}

/** The first part of a multipart/related body (PS3.18 §8.7.3.5.1), as bytes. */
function firstPart(buffer, contentType) {
  const match = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!match) return new Uint8Array(buffer);
  const data = new Uint8Array(buffer);
  const find = (needle, from) => {
    const bytes = new TextEncoder().encode(needle);
    outer: for (let i = from; i <= data.length - bytes.length; i++) {
      for (let j = 0; j < bytes.length; j++) if (data[i + j] !== bytes[j]) continue outer;
      return i;
    }
    return -1;
  };
  const start = find("\r\n\r\n", find(`--${match[1]}`, 0)) + 4;
  const end = find(`\r\n--${match[1]}`, start);
  return data.slice(start, end < 0 ? data.length : end);
}

async function download(series, instance) {
  say("Downloading…");
  const response = await call(`${DICOMWEB}/studies/${study}/series/${series}/instances/${instance}`, {
    headers: { Accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
  });
  if (!response.ok) { say(`Download failed: ${response.status}`, "error"); return; }
  const part = firstPart(await response.arrayBuffer(), response.headers.get("content-type") || "");
  const link = el("a", { href: URL.createObjectURL(new Blob([part], { type: "application/dicom" })), download: `${instance}.dcm` });
  document.body.append(link);
  link.click();
  link.remove();
  say(`Downloaded ${instance}.dcm (${part.length} bytes).`);
}

function confirmDelete(name) {
  const dialog = document.getElementById("delete-dialog");
  document.getElementById("delete-text").textContent =
    `Every series and instance of the study of ${name} (${study}) will be deleted from the archive. This cannot be undone.`;
  dialog.showModal();
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "delete") { document.getElementById("delete").focus(); return; }
    try {
      const response = await call(`${DICOMWEB}/studies/${study}`, { method: "DELETE" });
      if (!response.ok) throw new Error(`Delete failed: ${response.status}`);
      location.href = `studies.html?deleted=${encodeURIComponent(study)}`;
    } catch (error) { say(error.message, "error"); }
  }, { once: true });
}

load().catch((error) => say(error.message, "error"));
