// The live notebook page: cells and outputs as the daemon sends them over a WebSocket.
// Hand-written, no framework: the daemon sends each changed cell whole, this renders it.
"use strict";

const MIME_ORDER = [
  "application/vnd.jupyter.widget-view+json", "text/html", "image/svg+xml", "image/png",
  "image/jpeg", "image/gif", "text/markdown", "text/latex", "application/json", "text/plain",
];
const frames = new Map(); // iframe window -> iframe (heights posted by HTML outputs)
let order = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ANSI colours (SGR) of streams and tracebacks -------------------------------------------------
const PALETTE = ["#000", "#c33", "#3a3", "#a80", "#36c", "#a3a", "#199", "#bbb",
                 "#666", "#f55", "#5c5", "#dc3", "#58f", "#d5d", "#3cc", "#fff"];

function color256(n) {
  if (n < 16) return PALETTE[n];
  if (n >= 232) { const g = 8 + (n - 232) * 10; return `rgb(${g},${g},${g})`; }
  n -= 16;
  const c = (v) => (v ? 55 + v * 40 : 0);
  return `rgb(${c(Math.floor(n / 36))},${c(Math.floor(n / 6) % 6)},${c(n % 6)})`;
}

function ansi(text) {
  const out = document.createDocumentFragment();
  let style = {};
  const pattern = /\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07/g;
  let last = 0, match;
  const push = (chunk) => {
    if (!chunk) return;
    const css = [];
    if (style.fg) css.push(`color:${style.fg}`);
    if (style.bg) css.push(`background:${style.bg}`);
    if (style.bold) css.push("font-weight:bold");
    if (style.italic) css.push("font-style:italic");
    if (style.underline) css.push("text-decoration:underline");
    out.append(css.length ? el("span", { style: css.join(";"), class: "ansi", text: chunk })
                          : document.createTextNode(chunk));
  };
  while ((match = pattern.exec(text))) {
    push(text.slice(last, match.index));
    last = pattern.lastIndex;
    if (match[1] === undefined) continue; // another escape: dropped
    const codes = match[1] === "" ? [0] : match[1].split(";").map(Number);
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) style = {};
      else if (code === 1) style.bold = true;
      else if (code === 3) style.italic = true;
      else if (code === 4) style.underline = true;
      else if (code === 22) style.bold = false;
      else if (code === 23) style.italic = false;
      else if (code === 24) style.underline = false;
      else if (code >= 30 && code <= 37) style.fg = PALETTE[code - 30];
      else if (code >= 90 && code <= 97) style.fg = PALETTE[code - 90 + 8];
      else if (code >= 40 && code <= 47) style.bg = PALETTE[code - 40];
      else if (code >= 100 && code <= 107) style.bg = PALETTE[code - 100 + 8];
      else if (code === 39) style.fg = null;
      else if (code === 49) style.bg = null;
      else if ((code === 38 || code === 48) && codes[i + 1] === 5) {
        style[code === 38 ? "fg" : "bg"] = color256(codes[i + 2] || 0); i += 2;
      } else if ((code === 38 || code === 48) && codes[i + 1] === 2) {
        style[code === 38 ? "fg" : "bg"] = `rgb(${codes[i + 2]},${codes[i + 3]},${codes[i + 4]})`; i += 4;
      }
    }
  }
  push(text.slice(last));
  return out;
}

// maths -----------------------------------------------------------------------------------------
function typeset(root) {
  if (!window.katex) return;
  for (const node of root.querySelectorAll(".math")) {
    if (node.dataset.typeset) continue;
    const block = node.classList.contains("block");
    try {
      katex.render(node.textContent, node, { displayMode: block, throwOnError: false });
      node.dataset.typeset = "1";
    } catch (error) { node.title = String(error); }
  }
}

function latex(text) {
  let body = text.trim(), block = true;
  if (body.startsWith("$$") && body.endsWith("$$")) body = body.slice(2, -2);
  else if (body.startsWith("\\[") && body.endsWith("\\]")) body = body.slice(2, -2);
  else if (body.startsWith("$") && body.endsWith("$")) { body = body.slice(1, -1); block = false; }
  const node = el("div", { class: "latex" });
  try { katex.render(body, node, { displayMode: block, throwOnError: false }); }
  catch (error) { node.textContent = text; }
  return node;
}

// JSON, collapsible ------------------------------------------------------------------------------
function jsonTree(value, key) {
  const label = key === undefined ? "" : `${JSON.stringify(key)}: `;
  if (value === null || typeof value !== "object") {
    return el("div", { class: "json-leaf", text: label + JSON.stringify(value) });
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const details = el("details", { open: "" },
    el("summary", { text: `${label}${Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`}` }));
  for (const [k, v] of entries) details.append(jsonTree(v, Array.isArray(value) ? undefined : k));
  return details;
}

// outputs ---------------------------------------------------------------------------------------
function blobOf(value) {
  return value && typeof value === "object" && "$blob" in value ? value.$blob : null;
}

async function textOf(value) {
  const url = blobOf(value);
  if (url) return (await fetch(url, { credentials: "same-origin" })).text();
  return Array.isArray(value) ? value.join("") : String(value);
}

function htmlFrame(html) {
  const frame = el("iframe", { sandbox: "allow-scripts", class: "html-output" });
  // the frame tells its height (it runs in an origin of its own: it cannot reach the page)
  frame.srcdoc = html + "<script>new ResizeObserver(() => parent.postMessage({runtimedHeight:" +
    " document.documentElement.scrollHeight}, '*')).observe(document.documentElement)</script>";
  frame.addEventListener("load", () => frames.set(frame.contentWindow, frame));
  return frame;
}

window.addEventListener("message", (event) => {
  const frame = frames.get(event.source);
  if (frame && event.data && typeof event.data.runtimedHeight === "number") {
    frame.style.height = `${Math.min(event.data.runtimedHeight + 4, 4000)}px`;
  }
});

function renderData(output) {
  const data = output.data || {};
  const mime = MIME_ORDER.find((m) => m in data) || Object.keys(data)[0];
  const box = el("div", { class: "output", "data-mime": mime || "none" });
  if (!mime) return box;
  const value = data[mime];
  if (mime === "text/html") {
    textOf(value).then((html) => box.append(htmlFrame(html)));
  } else if (mime.startsWith("image/")) {
    const url = blobOf(value) || (mime === "image/svg+xml"
      ? `data:image/svg+xml;charset=utf-8,${encodeURIComponent(Array.isArray(value) ? value.join("") : value)}`
      : `data:${mime};base64,${String(value).replace(/\s/g, "")}`);
    const img = el("img", { src: url, alt: (data["text/plain"] || "") + "" });
    const meta = (output.metadata || {})[mime] || {};
    if (meta.width) img.width = meta.width;
    if (meta.height) img.height = meta.height;
    box.append(img);
  } else if (mime === "text/markdown") {
    const md = el("div", { class: "markdown" });
    md.innerHTML = (output.rendered || {})["text/markdown"] || "";
    typeset(md);
    box.append(md);
  } else if (mime === "text/latex") {
    textOf(value).then((text) => box.append(latex(text)));
  } else if (mime === "application/json") {
    box.append(jsonTree(value));
  } else if (mime === "text/plain") {
    textOf(value).then((text) => box.append(el("pre", {}, ansi(text))));
  } else if (mime === "application/vnd.jupyter.widget-view+json") {
    box.append(Widgets.mount(value.model_id));
  } else {
    box.append(el("div", { class: "fallback", text: `output of type ${mime}` }));
  }
  return box;
}

function renderOutput(output) {
  if (output.output_type === "stream") {
    return el("div", { class: `output stream ${output.name}`, "data-mime": "stream" },
      el("pre", {}, ansi(Array.isArray(output.text) ? output.text.join("") : output.text || "")));
  }
  if (output.output_type === "error") {
    const text = (output.traceback || []).join("\n") || `${output.ename}: ${output.evalue}`;
    return el("div", { class: "output error", "data-mime": "error" }, el("pre", {}, ansi(text)));
  }
  return renderData(output);
}

// cells -----------------------------------------------------------------------------------------
function renderCell(cell) {
  const node = el("section", { class: `cell ${cell.cell_type}`, "data-cell-id": cell.id });
  if (cell.cell_type === "markdown") {
    const md = el("div", { class: "markdown" });
    md.innerHTML = cell.html || "";
    typeset(md);
    node.append(md);
  } else if (cell.cell_type === "raw") {
    node.append(el("pre", { class: "raw", text: cell.source }));
  } else {
    const count = cell.execution_count == null ? " " : cell.execution_count;
    if (cell.source != null) {  // the sidecar may have a kernel's outputs without their code
      node.append(el("div", { class: "input" },
        el("span", { class: "prompt", text: `[${count}]:` }),
        el("pre", { class: "source", text: cell.source })));
    }
    const outputs = el("div", { class: "outputs" });
    for (const output of cell.outputs || []) outputs.append(renderOutput(output));
    node.append(outputs);
  }
  return node;
}

function apply(message) {
  const main = document.getElementById("cells");
  Widgets.update(message.widgets, message.type === "snapshot"); // before the cells that show them
  if (message.type === "snapshot") main.replaceChildren();
  for (const [id, cell] of Object.entries(message.cells)) {
    const fresh = renderCell(cell);
    const old = main.querySelector(`[data-cell-id="${CSS.escape(id)}"]`);
    if (old) old.replaceWith(fresh); else main.append(fresh);
  }
  order = message.order;
  const wanted = new Set(order);
  for (const node of [...main.children]) if (!wanted.has(node.dataset.cellId)) node.remove();
  order.forEach((id, i) => {
    const node = main.querySelector(`[data-cell-id="${CSS.escape(id)}"]`);
    if (node && main.children[i] !== node) main.insertBefore(node, main.children[i] || null);
  });
  const title = message.path || message.notebook_id;
  document.getElementById("title").textContent = title;
  document.title = `${title.split("/").pop()} - runtimed`;
  const kernel = message.kernel || {};
  document.getElementById("kernel").textContent = kernel.lifecycle === "running"
    ? `${kernel.kernel_type} ${kernel.activity || ""}` : (kernel.lifecycle || "");
  document.body.dataset.state = "live";
  document.body.dataset.version = String(Number(document.body.dataset.version || 0) + 1);
}

// the connection ---------------------------------------------------------------------------------
function connect(delay = 250) {
  const query = new URLSearchParams(location.search);
  query.delete("token");
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}` +
    `${window.RUNTIMED_SOCKET || "/ws/notebook"}?${query}`);
  const status = document.getElementById("connection");
  socket.onopen = () => { status.textContent = "live"; delay = 250; };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "error") { status.textContent = message.message; return; }
    if (message.type === "notice") { // the daemon refused what a control sent
      status.textContent = message.message;
      document.body.dataset.notice = message.message;
      return;
    }
    apply(message);
  };
  // a control moved on the page: a comm message to the kernel
  Widgets.setSender((comm_id, data) => {
    if (socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify({ type: "comm_msg", comm_id, data }));
    return true;
  });
  socket.onclose = () => {
    status.textContent = "reconnecting";
    document.body.dataset.state = "reconnecting";
    setTimeout(() => connect(Math.min(delay * 2, 5000)), delay);
  };
}

connect();
