// The console's shared code: the token, authenticated calls, the page frame, DICOM JSON.
// Data comes from the archive's DICOMweb service (PS3.18) and the console's API; with
// authentication on, every call carries the token the user gave (README, "Console").

const TOKEN_KEY = "dicomrpc-console-token";
export const DICOMWEB = "/dicomweb";
export const API = "/console/api";

const PAGES = [
  ["index.html", "Dashboard"],
  ["studies.html", "Studies"],
  ["changes.html", "Change feed"],
  ["worklist.html", "Worklist"],
  ["query-tags.html", "Query tags"],
];

/** Create an element: el("a", {href: "x"}, "text", child). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Tell the user something, politely (the status line is an aria-live region). */
export function say(text, kind = "info") {
  const status = document.getElementById("status");
  status.textContent = text;
  status.dataset.kind = kind;
}

/** Ask for a token in the page's dialog; resolves with it, or null when cancelled. */
function askToken(reason) {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input");
  dialog.querySelector(".reason").textContent = reason;
  input.value = "";
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null),
      { once: true },
    );
  });
}

let asking = null; // one dialog for every call that meets a 401 at the same time

/** fetch() with the token: a 401 asks for a (new) token and tries again. */
export async function call(url, options = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(url, { ...options, headers });
    if (response.status !== 401) {
      if (response.status === 403) throw new Error(`Not allowed: ${await reason(response)}`);
      return response;
    }
    const message = token
      ? "The archive refused this token (expired or unknown). Enter another."
      : "The archive needs an access token (a bearer token or an API key).";
    asking = asking || askToken(message).finally(() => { asking = null; });
    const given = await asking;
    if (given === null) throw new Error("An access token is needed to show this page.");
    if (!sessionStorage.getItem(TOKEN_KEY) || given !== token) {
      sessionStorage.setItem(TOKEN_KEY, given);
    }
  }
}

async function reason(response) {
  try {
    const body = await response.json();
    return body.message || body.error || response.statusText;
  } catch {
    return response.statusText || String(response.status);
  }
}

/** A JSON call: the parsed body, [] for 204 No Content (an empty search), or an Error. */
export async function json(url, accept = "application/json") {
  const response = await call(url, { headers: { Accept: accept } });
  if (response.status === 204) return [];
  if (!response.ok) throw new Error(`${response.status}: ${await reason(response)}`);
  return response.json();
}

/** A DICOMweb search or metadata read (PS3.18 §10.6, §10.4): DICOM JSON. */
export function dicomJson(path) {
  return json(DICOMWEB + path, "application/dicom+json");
}

/** A frame rendered by the archive (PS3.18 §9.5) as an object URL for an <img>. */
export async function rendered(study, series, instance, size) {
  const url = `${DICOMWEB}/studies/${study}/series/${series}/instances/${instance}/rendered` +
    (size ? `?viewport=${size},${size}` : "");
  const response = await call(url, { headers: { Accept: "image/png" } });
  if (!response.ok) throw new Error(`${response.status}`);
  return URL.createObjectURL(await response.blob());
}

/** The first value of a DICOM JSON attribute (PS3.18 Annex F.2), PN as its alphabetic form. */
export function value(dataset, tag) {
  const attribute = dataset && dataset[tag];
  const first = attribute && attribute.Value ? attribute.Value[0] : undefined;
  if (first && typeof first === "object" && "Alphabetic" in first) return first.Alphabetic;
  return first === undefined ? "" : first;
}

/** Every value of an attribute, joined for display. */
export function values(dataset, tag) {
  const attribute = dataset && dataset[tag];
  if (!attribute || !attribute.Value) return "";
  return attribute.Value.map((v) => (v && typeof v === "object" && "Alphabetic" in v ? v.Alphabetic : v)).join("\\");
}

/** A DA value (YYYYMMDD) as YYYY-MM-DD. */
export function date(da) {
  return da && da.length >= 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da || "";
}

export function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = count;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
  return `${unit ? n.toFixed(1) : n} ${units[unit]}`;
}

export function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

export function viewerUrl(study) {
  return `/viewer?StudyInstanceUIDs=${encodeURIComponent(study)}`;
}

export function studyUrl(study) {
  return `study.html?study=${encodeURIComponent(study)}`;
}

/**
 * Follow a stream of server-sent events (text/event-stream, HTML §9.2) of the console's API:
 * `onEvent(type, data)` for each, in order, from the event after `since` (null: from now).
 * It is read with fetch() rather than EventSource, so that the token goes in the Authorization
 * header as with every other call (EventSource cannot set one; a token in the URL would be
 * logged). A dropped stream is asked for again after a pause, from the last event's id, so
 * nothing is missed; `onState(connected)` says when it is (re)connected or lost.
 */
export function follow(url, onEvent, { since = null, onState = () => {}, retryMs = 2000 } = {}) {
  let last = since;
  const once = async (opened) => {
    const target = last === null ? url : `${url}${url.includes("?") ? "&" : "?"}since=${last}`;
    const response = await call(target, { headers: { Accept: "text/event-stream" } });
    if (!response.ok) throw new Error(`${response.status}: ${await reason(response)}`);
    opened();
    onState(true);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value: chunk, done } = await reader.read();
      if (done) return;
      buffer += chunk.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = "message";
        let id = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue; // a comment: keep-alive
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (name === "event") type = text;
          else if (name === "data") data.push(text);
          else if (name === "id") id = text;
        }
        if (id !== null) last = id;
        if (!data.length) continue;
        const parsed = JSON.parse(data.join("\n"));
        if (type === "error") {
          if (parsed.since !== undefined) last = parsed.since;
          throw new Error(parsed.message);
        }
        onEvent(type, parsed);
      }
    }
  };
  (async () => {
    let pause = retryMs;
    for (;;) {
      let connected = false;
      try {
        await once(() => { connected = true; });
      } catch (error) {
        say(error.message, "error");
      }
      onState(false);
      // Soon after a stream that ran; longer and longer while none can be opened (the
      // server down, a token refused), up to half a minute.
      pause = connected ? retryMs : Math.min(pause * 2, 30000);
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  })();
}

/** Repeat `work` every `ms` while the page is visible, never two at a time. */
export function every(ms, work) {
  let timer = null;
  const run = async () => {
    timer = null;
    try { await work(); } catch (error) { say(error.message, "error"); }
    timer = setTimeout(run, document.hidden ? ms * 5 : ms);
  };
  timer = setTimeout(run, ms);
  return () => clearTimeout(timer);
}

/** The frame of every page: navigation, the status line, the token dialog, sign-out. */
export function frame(current) {
  const nav = document.getElementById("nav");
  const list = el("ul");
  for (const [href, label] of PAGES) {
    list.append(el("li", {}, el("a", { href, "aria-current": href === current ? "page" : null }, label)));
  }
  list.append(el("li", {}, el("a", { href: "/" }, "Viewer")));
  nav.append(list);
  const header = document.querySelector("header");
  header.append(
    el("button", {
      type: "button",
      class: "secondary",
      onclick: () => { sessionStorage.removeItem(TOKEN_KEY); say("Signed out: the token is forgotten."); },
    }, "Forget token"),
  );
  document.body.append(
    el("dialog", { id: "token-dialog", "aria-labelledby": "token-title" },
      el("form", { method: "dialog" },
        el("h2", { id: "token-title" }, "Access token"),
        el("p", { class: "reason" }),
        el("label", { for: "token-input" }, "Token"),
        el("input", { id: "token-input", name: "token", type: "password", autocomplete: "off", required: true }),
        el("div", { class: "actions" },
          el("button", { value: "ok" }, "Use token"),
          el("button", { value: "cancel", formnovalidate: true, class: "secondary" }, "Cancel"),
        ),
      ),
    ),
  );
}
