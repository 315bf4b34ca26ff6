// The dashboard: the archive's statistics (the console's API), refreshed every five seconds.
import { API, bytes, duration, el, every, frame, json, say } from "./console.js";

frame("index.html");

async function refresh() {
  const s = await json(`${API}/statistics`);
  const counted = new Date(s.bytes_counted_at_us / 1000).toLocaleTimeString();
  const cards = [
    ["Studies", s.studies.toLocaleString(), "studies"],
    ["Series", s.series.toLocaleString(), "series"],
    ["Instances", s.instances.toLocaleString(), "instances"],
    ["Bytes stored", bytes(s.bytes_stored), "bytes", `counted at ${counted}`],
    ["Stored in the last minute", `${s.stored_last_minute.toLocaleString()} instances`, "rate"],
    ["Uptime", duration(s.uptime_s), "uptime"],
    ["Version", s.version, "version"],
    ["Latest change", `#${s.latest_change}`, "latest"],
  ];
  document.getElementById("stats").replaceChildren(
    ...cards.map(([label, text, id, note]) =>
      el("div", { "data-stat": id }, el("dt", {}, label), el("dd", {}, text), note ? el("dd", { class: "note" }, el("small", {}, note)) : null)),
  );
}

refresh().catch((error) => say(error.message, "error"));
every(5000, refresh);
