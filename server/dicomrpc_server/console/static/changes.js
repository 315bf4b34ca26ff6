// The change feed, live: the newest entries, then every new one, read from the console's API
// with the highest sequence seen (as ReadChangeFeed's offset; see the ManagementService).
import { API, el, every, frame, json, say, studyUrl } from "./console.js";

frame("changes.html");

const body = document.querySelector("#changes tbody");
const live = document.getElementById("live");
const pause = document.getElementById("pause");
const MAX_ROWS = 200;
let since = null;
let paused = false;

function row(entry, fresh) {
  return el("tr", { class: fresh ? "new" : null, "data-sequence": entry.sequence },
    el("td", {}, entry.sequence),
    el("td", {}, new Date(entry.time_us / 1000).toLocaleString()),
    el("td", {}, entry.action),
    el("td", {}, entry.state),
    el("td", { class: "uid" }, entry.action === "created" && entry.state === "current" ? el("a", { href: studyUrl(entry.study) }, entry.study) : entry.study),
    el("td", { class: "uid" }, entry.series),
    el("td", { class: "uid" }, entry.instance),
  );
}

async function poll() {
  if (paused) return;
  const url = since === null ? `${API}/changes?limit=50` : `${API}/changes?since=${since}&limit=500`;
  const answer = await json(url);
  const entries = answer.entries;
  if (since !== null && entries.length) {
    live.textContent = `${entries.length} new change${entries.length === 1 ? "" : "s"}`;
  }
  body.prepend(...entries.reverse().map((e) => row(e, since !== null)));
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
  since = entries.length ? Math.max(since || 0, entries[0].sequence) : since === null ? answer.latest : since;
  if (!body.rows.length) say("The feed is empty: nothing has been stored yet.");
  else say("");
}

pause.addEventListener("click", () => {
  paused = !paused;
  pause.setAttribute("aria-pressed", String(paused));
  pause.textContent = paused ? "Resume" : "Pause";
});

poll().catch((error) => say(error.message, "error"));
every(2000, poll);
