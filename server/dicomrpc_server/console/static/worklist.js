// The worklist board: workitems by Procedure Step State (PS3.4 Annex CC), each column a UPS-RS
// search (PS3.18 §11.9) of at most fifty, searched again whenever the console's stream of
// workitem events (the events gRPC's SubscribeWorkitems and UPS-RS subscriptions follow) says
// a workitem changed; a workitem's attributes (PS3.18 §11.5) are shown when it is chosen.
import { API, dicomJson, el, follow, frame, say, value } from "./console.js";
import { TAG_NAMES } from "./tags.js";

frame("worklist.html");

const STATES = ["SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"];
const LIMIT = 50;
const INCLUDE = ["00741204", "00404005", "00741200", "00100010", "00100020", "00741000"];
const board = document.getElementById("board");
const live = document.getElementById("live");
const columns = new Map();
let chosen = null;
let known = null; // "uid state" of every workitem seen, to tell what changed

for (const state of STATES) {
  const id = `state-${state.replace(" ", "-").toLowerCase()}`;
  const list = el("ul", { "aria-labelledby": id });
  const heading = el("h2", { id }, state.toLowerCase());
  board.append(el("section", { "data-state": state }, heading, list));
  columns.set(state, { list, heading });
}

async function refresh() {
  const seen = new Set();
  for (const state of STATES) {
    const params = new URLSearchParams({ "00741000": state, limit: String(LIMIT + 1) });
    for (const tag of INCLUDE) params.append("includefield", tag);
    const items = await dicomJson(`/workitems?${params}`);
    const { list, heading } = columns.get(state);
    const shown = items.slice(0, LIMIT);
    heading.textContent = `${state.toLowerCase()} (${items.length > LIMIT ? `${LIMIT}+` : shown.length})`;
    list.replaceChildren(...shown.map((item) => {
      const uid = value(item, "00080018");
      seen.add(`${uid} ${state}`);
      return el("li", { "data-workitem": uid },
        el("button", { type: "button", "aria-pressed": String(uid === chosen), onclick: () => show(uid) },
          value(item, "00741204") || uid,
          el("small", {}, [value(item, "00100010"), value(item, "00404005"), value(item, "00741200")].filter(Boolean).join(" · "))));
    }));
  }
  if (known !== null) {
    const changed = [...seen].filter((k) => !known.has(k)).length;
    if (changed) live.textContent = `${changed} workitem${changed === 1 ? "" : "s"} changed`;
  }
  known = seen;
  say(seen.size ? "" : "The worklist is empty.");
}

function shown(attribute) {
  if (!attribute.Value) return "";
  if (attribute.vr === "SQ") return `(${attribute.Value.length} item${attribute.Value.length === 1 ? "" : "s"})`;
  return attribute.Value.map((v) => (v && typeof v === "object" ? v.Alphabetic || JSON.stringify(v) : v)).join("\\");
}

async function show(uid) {
  chosen = uid;
  for (const button of board.querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.closest("li").dataset.workitem === uid));
  }
  const [item] = await dicomJson(`/workitems/${uid}`);
  document.querySelector("#detail tbody").replaceChildren(...Object.keys(item).sort().map((tag) => el("tr", {},
    el("td", {}, `(${tag.slice(0, 4)},${tag.slice(4)})`),
    el("td", {}, TAG_NAMES[tag] || ""),
    el("td", {}, shown(item[tag]).slice(0, 200)),
  )));
  const section = document.getElementById("detail-section");
  section.hidden = false;
  document.getElementById("detail-title").textContent = `Workitem ${value(item, "00741204") || uid}`;
}

// Events come in bursts (a claim is an assignment and a state report): one search for each
// burst, never two at a time, and one more if events came during a search.
let searching = null;
let again = false;
function changed() {
  if (searching) { again = true; return; }
  searching = new Promise((resolve) => setTimeout(resolve, 100))
    .then(refresh)
    .catch((error) => say(error.message, "error"))
    .finally(() => {
      searching = null;
      if (again) { again = false; changed(); }
    });
}

refresh()
  .then(() => follow(`${API}/workitems/stream`, (type) => { if (type === "workitem") changed(); }, {
    // Reconnected after a drop: what changed meanwhile is searched for at once.
    onState: (connected) => { if (connected) changed(); },
  }))
  .catch((error) => say(error.message, "error"));
