// Formatting and DOM helpers of the dashboard (app.js).

// -- values -----------------------------------------------------------------------------------------
// Timestamps arrive as epoch seconds (numbers) or ISO 8601 strings; both become milliseconds.
export function toMs(v) {
  if (v === null || v === undefined || v === "") return null;
  if (typeof v === "number") return v * 1000;
  const ms = Date.parse(v);
  return Number.isNaN(ms) ? null : ms;
}
export function ago(v) {
  const ms = toMs(v);
  if (ms === null) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}
export function when(v) {
  const ms = toMs(v);
  return ms === null ? "–" : new Date(ms).toLocaleString();
}
export function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
export const short = (id) => (id ? String(id).slice(0, 8) : "–");
export const fmt = (x) => (typeof x === "number" ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(4)) : "–");

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else if (k === "title" || k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}
export const badge = (text) => el("span", { class: `badge ${String(text).toLowerCase()}` }, String(text));
export function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colSpan: columns }, empty))]));
}

