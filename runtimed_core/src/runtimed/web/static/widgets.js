// Widgets on the live page: the kernel's widget models (ipywidgets controls and containers,
// Output widgets, tqdm.notebook's progress bars) drawn from the state the daemon sends and
// updated in place as it changes; moving a control sends the kernel a comm message, as a
// notebook frontend does. Hand-written for the common controls (no widget library is loaded);
// a model it does not know shows its name and state.
"use strict";

const Widgets = (() => {
  const models = new Map(); // model id -> {model_name, model_module, state}
  const watchers = new Map(); // model id -> Set of views to refresh when it changes
  let sender = null; // (comm_id, data) -> bool: the page's connection
  const SEND_INTERVAL = 50; // ms between two messages of a control being dragged
  const BUSY_FOR = 500; // ms after its last move a control shows the model's value again

  const node = (tag, attrs = {}, ...children) => {
    const n = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") n.className = value;
      else if (key === "text") n.textContent = value;
      else n.setAttribute(key, value);
    }
    for (const child of children) n.append(child);
    return n;
  };
  const refId = (value) => (typeof value === "string" && value.startsWith("IPY_MODEL_")
    ? value.slice("IPY_MODEL_".length) : null);

  // HTML in widget values (HTML, HTMLMath, descriptions) is parsed inertly and rebuilt from a
  // few harmless tags, text only: no attribute, script or style survives.
  const SAFE_TAGS = new Set(["B", "I", "EM", "STRONG", "U", "S", "CODE", "PRE", "BR", "P", "DIV",
    "SPAN", "SUB", "SUP", "SMALL", "UL", "OL", "LI", "H1", "H2", "H3", "H4", "H5", "H6", "TABLE",
    "THEAD", "TBODY", "TR", "TD", "TH", "HR", "BLOCKQUOTE"]);
  function safeHtml(html) {
    const parsed = new DOMParser().parseFromString(String(html ?? ""), "text/html");
    const copy = (from) => {
      const out = document.createDocumentFragment();
      for (const child of from.childNodes) {
        if (child.nodeType === Node.TEXT_NODE) out.append(child.textContent);
        else if (child.nodeType === Node.ELEMENT_NODE && SAFE_TAGS.has(child.tagName)) {
          const el = document.createElement(child.tagName);
          el.append(copy(child));
          out.append(el);
        } else if (child.nodeType === Node.ELEMENT_NODE && !["SCRIPT", "STYLE"].includes(child.tagName)) {
          out.append(copy(child));
        }
      }
      return out;
    };
    return copy(parsed.body);
  }

  // sending ----------------------------------------------------------------------------------
  function send(id, data) {
    return sender ? sender(id, data) : false;
  }

  // A control being dragged sends its latest value at most every SEND_INTERVAL ms (and the
  // last one always), and ignores the values coming back meanwhile (the page is ahead of
  // them); once it is let go, it shows the model's state again.
  function updater(id) {
    let timer = null, pending = null, last = 0, idle = null, busy = false;
    const flush = () => {
      timer = null;
      if (pending) { send(id, { method: "update", state: pending, buffer_paths: [] }); pending = null; }
      last = performance.now();
    };
    const fn = (state) => {
      pending = { ...(pending || {}), ...state };
      busy = true;
      clearTimeout(idle);
      idle = setTimeout(() => { busy = false; redraw(id); }, BUSY_FOR);
      const wait = SEND_INTERVAL - (performance.now() - last);
      if (wait <= 0) flush(); else if (!timer) timer = setTimeout(flush, wait);
    };
    fn.busy = () => busy;
    return fn;
  }

  // views --------------------------------------------------------------------------------------
  // A view draws one model into `el`; `draw(state)` runs on every change of the model (and of
  // its layout and style models). Controls update in place, so a slider keeps its grip.
  function labelled(el, control) {
    const label = node("label", { class: "widget-label" });
    el.append(label, control);
    return (state) => {
      label.replaceChildren(safeHtml(state.description));
      label.hidden = !state.description;
    };
  }

  function fmt(value, format, isInt) {
    if (value === null || value === undefined) return "";
    if (isInt) return String(Math.round(value));
    const digits = /\.(\d+)f/.exec(format || "");
    return Number(value).toFixed(digits ? Number(digits[1]) : 2);
  }

  const kinds = {
    slider(el, id, model) {
      const name = model.model_name;
      const isInt = name.startsWith("Int"), log = name === "FloatLogSliderModel";
      const input = node("input", { type: "range", class: "widget-slider" });
      const readout = node("span", { class: "widget-readout" });
      const box = node("span", { class: "widget-control" }, input, readout);
      const describe = labelled(el, box);
      const update = updater(id);
      input.addEventListener("input", () => {
        const state = models.get(id)?.state || {};
        let value = Number(input.value);
        if (log) value = Math.pow(state.base || 10, value);
        readout.textContent = fmt(value, state.readout_format, isInt);
        update({ value });
      });
      return (state) => {
        describe(state);
        input.min = state.min; input.max = state.max;
        input.step = state.step ?? (isInt ? 1 : 0.1);
        input.disabled = !!state.disabled;
        input.setAttribute("aria-valuetext", String(state.value));
        if (!update.busy()) {
          input.value = log ? Math.log(state.value) / Math.log(state.base || 10) : state.value;
          readout.textContent = fmt(state.value, state.readout_format, isInt);
        }
        readout.hidden = state.readout === false;
      };
    },
    range(el, id, model) {
      const isInt = model.model_name.startsWith("Int");
      const low = node("input", { type: "range", class: "widget-slider" });
      const high = node("input", { type: "range", class: "widget-slider" });
      const readout = node("span", { class: "widget-readout" });
      const describe = labelled(el, node("span", { class: "widget-control" }, low, high, readout));
      const update = updater(id);
      const moved = () => {
        const value = [Number(low.value), Number(high.value)].sort((a, b) => a - b);
        readout.textContent = value.map((v) => fmt(v, null, isInt)).join(" – ");
        update({ value });
      };
      low.addEventListener("input", moved); high.addEventListener("input", moved);
      return (state) => {
        describe(state);
        for (const input of [low, high]) {
          input.min = state.min; input.max = state.max; input.step = state.step ?? 1;
          input.disabled = !!state.disabled;
        }
        if (!update.busy()) {
          [low.value, high.value] = state.value || [state.min, state.max];
          readout.textContent = (state.value || []).map((v) => fmt(v, state.readout_format, isInt)).join(" – ");
        }
      };
    },
    progress(el) {
      const bar = node("progress", { class: "widget-progress" });
      const describe = labelled(el, bar);
      return (state, style) => {
        describe(state);
        bar.max = Math.max(state.max - state.min, 0) || 1;
        bar.value = Math.min(Math.max(state.value - state.min, 0), bar.max);
        bar.dataset.barStyle = state.bar_style || "";
        bar.style.setProperty("--bar-color", (style && style.bar_color) || "");
      };
    },
    html(el) {
      const content = node("div", { class: "widget-html-content" });
      const describe = labelled(el, content);
      return (state) => { describe(state); content.replaceChildren(safeHtml(state.value)); };
    },
    label(el) {
      return (state) => { el.textContent = state.value ?? ""; };
    },
    text(el, id, model) {
      const area = model.model_name === "TextareaModel";
      const input = node(area ? "textarea" : "input", area ? {} : {
        type: model.model_name === "PasswordModel" ? "password" : "text" });
      input.className = "widget-text";
      const describe = labelled(el, input);
      const update = updater(id);
      input.addEventListener("input", () => {
        if (models.get(id)?.state.continuous_update !== false) update({ value: input.value });
      });
      input.addEventListener("change", () => update({ value: input.value }));
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !area) send(id, { method: "custom", content: { event: "submit" } });
      });
      return (state) => {
        describe(state);
        input.placeholder = state.placeholder || "";
        input.disabled = !!state.disabled;
        if (!update.busy() && document.activeElement !== input) input.value = state.value ?? "";
      };
    },
    number(el, id, model) {
      const isInt = model.model_name.includes("Int");
      const input = node("input", { type: "number", class: "widget-number" });
      const describe = labelled(el, input);
      const update = updater(id);
      input.addEventListener("change", () => {
        if (input.value !== "") update({ value: isInt ? Math.round(Number(input.value)) : Number(input.value) });
      });
      return (state) => {
        describe(state);
        if (state.min !== undefined) input.min = state.min;
        if (state.max !== undefined) input.max = state.max;
        input.step = state.step ?? (isInt ? 1 : "any");
        input.disabled = !!state.disabled;
        if (!update.busy() && document.activeElement !== input) input.value = state.value;
      };
    },
    checkbox(el, id) {
      const input = node("input", { type: "checkbox" });
      const describe = labelled(el, input);
      input.addEventListener("change", () => send(id, { method: "update", state: { value: input.checked }, buffer_paths: [] }));
      return (state) => { describe(state); input.checked = !!state.value; input.disabled = !!state.disabled; };
    },
    toggle(el, id) {
      const button = node("button", { class: "widget-button" });
      el.append(button);
      button.addEventListener("click", () => {
        const value = !models.get(id)?.state.value;
        send(id, { method: "update", state: { value }, buffer_paths: [] });
      });
      return (state) => {
        button.textContent = state.description || "";
        button.setAttribute("aria-pressed", String(!!state.value));
        button.disabled = !!state.disabled;
        button.dataset.buttonStyle = state.button_style || "";
      };
    },
    button(el, id) {
      const button = node("button", { class: "widget-button" });
      el.append(button);
      button.addEventListener("click", () => send(id, { method: "custom", content: { event: "click" } }));
      return (state) => {
        button.textContent = state.description || "";
        button.title = state.tooltip || "";
        button.disabled = !!state.disabled;
        button.dataset.buttonStyle = state.button_style || "";
      };
    },
    select(el, id, model) {
      const many = model.model_name === "SelectMultipleModel";
      const select = node("select", many ? { multiple: "" } : {});
      if (model.model_name !== "DropdownModel") select.size = 5;
      const describe = labelled(el, select);
      select.addEventListener("change", () => {
        const chosen = [...select.selectedOptions].map((o) => Number(o.value));
        send(id, { method: "update", state: { index: many ? chosen : (chosen[0] ?? null) }, buffer_paths: [] });
      });
      return (state) => {
        describe(state);
        const labels = state._options_labels || [];
        if (select.options.length !== labels.length || labels.some((l, i) => select.options[i].text !== l)) {
          select.replaceChildren(...labels.map((l, i) => node("option", { value: String(i), text: l })));
        }
        const picked = new Set([].concat(state.index ?? []));
        for (const option of select.options) option.selected = picked.has(Number(option.value));
        select.disabled = !!state.disabled;
      };
    },
    choices(el, id, model) {
      const radio = model.model_name === "RadioButtonsModel";
      const group = node("span", { class: radio ? "widget-radios" : "widget-toggles" });
      const describe = labelled(el, group);
      return (state) => {
        describe(state);
        group.replaceChildren(...(state._options_labels || []).map((label, i) => {
          const pick = () => send(id, { method: "update", state: { index: i }, buffer_paths: [] });
          if (!radio) {
            const b = node("button", { class: "widget-button", text: label, "aria-pressed": String(state.index === i) });
            b.addEventListener("click", pick);
            return b;
          }
          const input = node("input", { type: "radio", name: `radio-${id}` });
          input.checked = state.index === i;
          input.addEventListener("change", pick);
          return node("label", {}, input, label);
        }));
      };
    },
    box(el, id, model) {
      el.classList.add(model.model_name === "HBoxModel" ? "widget-hbox" : "widget-vbox");
      let shown = null;
      return (state) => {
        const children = (state.children || []).map(refId).filter(Boolean);
        if (shown && shown.join() === children.join()) return;
        shown = children;
        const titles = state.titles || [];
        el.replaceChildren(...children.map((child, i) => (titles[i]
          ? node("div", { class: "widget-titled" }, node("div", { class: "widget-title", text: titles[i] }), mount(child))
          : mount(child))));
      };
    },
    output(el) {
      return (state) => {
        el.replaceChildren(...(state.outputs || []).map((output) => renderOutput(output)));
      };
    },
    image(el, id, model) {
      const media = model.model_name.replace("Model", "").toLowerCase();
      const tag = media === "image" ? "img" : media;
      const item = node(tag, tag === "img" ? {} : { controls: "" });
      el.append(item);
      return (state) => {
        const value = state.value || {};
        const type = `${media}/${state.format === "svg" ? "svg+xml" : state.format}`;
        item.src = value.$blob || (value.$base64 ? `data:${type};base64,${value.$base64}` : "");
        if (state.width) item.width = state.width;
        if (state.height) item.height = state.height;
      };
    },
    valid(el) {
      return (state) => {
        el.textContent = `${state.description ? state.description + " " : ""}${state.value ? "✔" : "✘ " + (state.readout || "")}`;
      };
    },
  };

  const KINDS = {
    IntSliderModel: "slider", FloatSliderModel: "slider", FloatLogSliderModel: "slider",
    IntRangeSliderModel: "range", FloatRangeSliderModel: "range",
    IntProgressModel: "progress", FloatProgressModel: "progress",
    HTMLModel: "html", HTMLMathModel: "html", LabelModel: "label",
    TextModel: "text", TextareaModel: "text", PasswordModel: "text",
    IntTextModel: "number", FloatTextModel: "number", BoundedIntTextModel: "number",
    BoundedFloatTextModel: "number",
    CheckboxModel: "checkbox", ToggleButtonModel: "toggle", ButtonModel: "button",
    DropdownModel: "select", SelectModel: "select", SelectMultipleModel: "select",
    RadioButtonsModel: "choices", ToggleButtonsModel: "choices",
    HBoxModel: "box", VBoxModel: "box", BoxModel: "box", GridBoxModel: "box",
    AccordionModel: "box", TabModel: "box", StackModel: "box",
    OutputModel: "output", ImageModel: "image", VideoModel: "image", AudioModel: "image",
    ValidModel: "valid",
  };
  const LAYOUT = ["width", "height", "min_width", "max_width", "min_height", "max_height", "margin",
    "padding", "border", "flex", "display", "visibility", "justify_content", "align_items", "overflow"];

  function unknown(el, id, model) {
    return (state) => {
      el.classList.add("widget-unknown");
      const shown = Object.fromEntries(Object.entries(state).filter(([k]) => !k.startsWith("_view")));
      el.replaceChildren(node("div", { class: "widget-name", text:
        `${model.model_name} (${model.model_module || "no module"}): not drawn on this page; its state:` }),
        jsonTree(shown));
    };
  }

  // one view of one model: it redraws when the model, its layout or its style changes
  function mount(id) {
    const el = node("div", { class: "widget", "data-model-id": id });
    const view = { el, id, draw: null, kind: null, deps: [] };
    view.refresh = () => refresh(view);
    refresh(view);
    return el;
  }

  function watch(view, ids) {
    for (const old of view.deps) watchers.get(old)?.delete(view);
    view.deps = ids;
    for (const id of ids) {
      if (!watchers.has(id)) watchers.set(id, new Set());
      watchers.get(id).add(view);
    }
  }

  function refresh(view) {
    const model = models.get(view.id);
    if (!model) {
      watch(view, [view.id]);
      view.kind = null;
      view.el.className = "widget widget-missing";
      view.el.textContent = `widget ${view.id}: its state is not available here (closed, or its kernel is gone)`;
      return;
    }
    const kind = KINDS[model.model_name] || "unknown";
    if (view.kind !== kind) {
      view.kind = kind;
      view.el.replaceChildren();
      view.el.className = `widget widget-${kind}`;
      view.el.dataset.modelName = model.model_name;
      view.draw = (kinds[kind] || unknown)(view.el, view.id, model);
    }
    const state = model.state || {};
    const layoutId = refId(state.layout), styleId = refId(state.style);
    watch(view, [view.id, layoutId, styleId].filter(Boolean));
    const style = styleId ? models.get(styleId)?.state : null;
    view.draw(state, style);
    const layout = layoutId ? models.get(layoutId)?.state || {} : {};
    for (const key of LAYOUT) view.el.style.setProperty(key.replace("_", "-"), layout[key] || "");
  }

  function redraw(id) {
    for (const view of [...(watchers.get(id) || [])]) {
      if (view.el.isConnected) view.refresh(); else watch(view, []);
    }
  }

  // the page feeds it --------------------------------------------------------------------------
  function update(changed, fresh) {
    if (fresh) models.clear();
    for (const [id, model] of Object.entries(changed || {})) {
      if (model === null) models.delete(id); else models.set(id, model);
    }
    const due = new Set();
    for (const id of (fresh ? [...watchers.keys()] : Object.keys(changed || {}))) {
      for (const view of watchers.get(id) || []) due.add(view);
    }
    for (const view of due) {
      if (view.el.isConnected) view.refresh(); else watch(view, []);
    }
  }

  return { mount, update, setSender: (fn) => { sender = fn; }, models };
})();
