// The change feed, live: the newest entries, then every new one as the archive commits it, from
// the console's event stream of the feed (what gRPC's WatchChangeFeed follows; see the
// ManagementService), resumed from the highest sequence seen if the connection drops.
import { API, el, follow, frame, json, say, studyUrl } from "./console.js";

frame("changes.html");

const body = document.querySelector("#changes tbody");
const live = document.getElementById("live");
const pause = document.getElementById("pause");
const MAX_ROWS = 200;
let paused = false;
let fresh = 0; // entries shown since the page opened
const held = []; // entries that came while paused (at most MAX_ROWS are kept)

function row(entry, isNew) {
  return el("tr", { class: isNew ? "new" : null, "data-sequence": entry.sequence },
    el("td", {}, entry.sequence),
    el("td", {}, new Date(entry.time_us / 1000).toLocaleString()),
    el("td", {}, entry.action),
    el("td", {}, entry.state),
    el("td", { class: "uid" }, entry.action === "created" && entry.state === "current" ? el("a", { href: studyUrl(entry.study) }, entry.study) : entry.study),
    el("td", { class: "uid" }, entry.series),
    el("td", { class: "uid" }, entry.instance),
  );
}

function show(entries) {
  if (!entries.length) return;
  fresh += entries.length;
  live.textContent = `${fresh} new change${fresh === 1 ? "" : "s"}`;
  body.prepend(...entries.slice().reverse().map((e) => row(e, true)));
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
  say("");
}

async function start() {
  const answer = await json(`${API}/changes?limit=50`);
  body.prepend(...answer.entries.slice().reverse().map((e) => row(e, false)));
  say(body.rows.length ? "" : "The feed is empty: nothing has been stored yet.");
  follow(`${API}/changes/stream`, (type, entry) => {
    if (type !== "change") return;
    if (paused) {
      held.push(entry);
      if (held.length > MAX_ROWS) held.shift();
    } else {
      show([entry]);
    }
  }, { since: answer.latest });
}

pause.addEventListener("click", () => {
  paused = !paused;
  pause.setAttribute("aria-pressed", String(paused));
  pause.textContent = paused ? "Resume" : "Pause";
  if (!paused) show(held.splice(0));
});

start().catch((error) => say(error.message, "error"));
