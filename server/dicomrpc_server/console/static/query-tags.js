// Extended query tags and their re-indexing progress (the console's API), refreshed while an
// operation runs.
import { API, el, every, frame, json, say } from "./console.js";

frame("query-tags.html");

async function refresh() {
  const answer = await json(`${API}/query-tags`);
  document.querySelector("#tags tbody").replaceChildren(...answer.tags.map((t) => el("tr", {},
    el("td", {}, `(${t.tag.slice(0, 4)},${t.tag.slice(4)})`),
    el("td", {}, t.keyword),
    el("td", {}, t.vr),
    el("td", {}, t.level),
    el("td", {}, t.private_creator),
    el("td", {}, t.status),
  )));
  document.querySelector("#operations tbody").replaceChildren(...answer.operations.map((o) => {
    const percent = o.total_instances ? Math.round((100 * o.processed_instances) / o.total_instances) : 100;
    return el("tr", {},
      el("td", { class: "uid" }, o.operation_id),
      el("td", {}, o.tags.join(", ")),
      el("td", {},
        el("progress", { max: o.total_instances || 1, value: o.done ? o.total_instances || 1 : o.processed_instances, "aria-label": `Operation ${o.operation_id}: ${percent}%` }),
        ` ${o.processed_instances.toLocaleString()} / ${o.total_instances.toLocaleString()}`),
      el("td", {}, o.done ? "done" : "re-indexing"),
    );
  }));
  say(answer.tags.length ? "" : "No extended query tag is registered (add them with the gRPC API or the client).");
}

refresh().catch((error) => say(error.message, "error"));
every(3000, refresh);
