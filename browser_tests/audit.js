// What a reader sees on one page, measured in the browser after MathJax has
// typeset it. Returns plain data; browser_tests/test_reader.py judges it.
async () => {
  const main = document.querySelector("main") || document.body;
  const article = main.querySelector("article") || main;
  const visible = (el) => !!el && el.getClientRects().length > 0 &&
    getComputedStyle(el).visibility !== "hidden";
  const snippet = (s, i, n = 60) =>
    s.slice(Math.max(0, i - n), i + n).replace(/\s+/g, " ").trim();
  const PROSE_SKIP = "mjx-container, pre, code, script, style, textarea, kbd, " +
    ".cell_input, .cell_output, .output, .jupyter-widgets, .headerlink, " +
    ".MathJax_Preview, .math";

  // ---- prose: every visible text node outside math, code and outputs ----
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const prose = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(PROSE_SKIP)) continue;
    if (!n.nodeValue.trim()) continue;
    prose.push(n.nodeValue);
  }
  const text = prose.join(" ");
  const find = (re) => {
    const out = [];
    for (const m of text.matchAll(re)) {
      out.push(snippet(text, m.index));
      if (out.length >= 5) break;
    }
    return out;
  };
  const texLeft = find(/\$|\\[A-Za-z]{2,}|\^\{|_\{|\\\(|\\\[/g);
  const rawRoles = find(
    /\{(?:cite|ref|numref|eq|term|doc|math|abbr|download|footcite)(?::[a-z]+)?\}|```|\{(?:exercise|solution)-(?:start|end)\}|^:label:|\((?:sec|fig|eq|ex|tab)-[\w-]+\)=/gm);

  // ---- math: MathJax errors and math items that swallowed prose ----
  const mathErrors = [...main.querySelectorAll("mjx-merror, [data-mjx-error]")]
    .map((e) => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 80));
  const swallowed = [];
  const items = (window.MathJax && MathJax.startup && MathJax.startup.document &&
                 MathJax.startup.document.math) ? [...MathJax.startup.document.math] : [];
  for (const item of items) {
    const tex = String(item.math || "");
    const bare = tex
      .replace(/\\(?:text|mathrm|operatorname|textrm|mbox|texttt|mathit|mathsf|textbf|mathbf)\s*\{[^{}]*\}/g, " ")
      .replace(/\\[A-Za-z]+/g, " ");
    if (/\$/.test(tex) || /(?:\b[A-Za-z]{3,}\b[\s,.;:()]+){3}/.test(bare)) {
      swallowed.push(tex.replace(/\s+/g, " ").slice(0, 100));
    }
    const role = tex.match(/\{(?:cite|ref|numref|eq|term|doc)(?::[a-z]+)?\}`[^`]*`/);
    if (role) rawRoles.push(`in math: ${role[0]}`);
  }

  // ---- solutions: hidden until opened, none leaked outside a dropdown ----
  const solutions = [...main.querySelectorAll(".solution")];
  const shownSolutions = solutions.filter((s) =>
    [...s.children].some((c) => !c.matches(".admonition-title, .toggle-button, button") &&
                                visible(c) && c.getBoundingClientRect().height > 2))
    .map((s) => s.id || (s.querySelector(".admonition-title") || s).textContent.trim().slice(0, 40));
  const leaked = [...main.querySelectorAll(".cell")]
    .filter((c) => !c.closest(".solution") && visible(c))
    .filter((c) => {
      const src = (c.querySelector(".cell_input") || {}).textContent || "";
      const out = (c.querySelector(".cell_output") || {}).textContent || "";
      return /assert\s+lb\.exercises\.(check|close)\(/.test(src) || /\bCorrect!/.test(out);
    })
    .map((c) => ((c.querySelector(".cell_input") || c).textContent || "").trim().slice(0, 60));

  // ---- stray reprs of Python objects in what the outputs show ----
  const strays = [];
  for (const out of main.querySelectorAll(".cell_output")) {
    if (!visible(out)) continue;
    const t = out.innerText || "";
    const m = t.match(/<[\w.]+(?: object)? at 0x[0-9a-f]+>|\bnp\.(?:float|int|bool_?)\w*\(|^interactive\(children/m);
    if (m) strays.push(snippet(t, m.index, 40));
  }

  // ---- widths: outputs, display math, tables, images, the page ----
  const pad = getComputedStyle(article);
  const column = article.clientWidth - parseFloat(pad.paddingLeft) - parseFloat(pad.paddingRight);
  const wide = [];
  for (const pre of main.querySelectorAll(".cell_output pre, .output pre")) {
    if (!visible(pre)) continue;
    if (pre.scrollWidth > pre.clientWidth + 1) {
      const longest = Math.max(...pre.textContent.split("\n").map((l) => l.length));
      wide.push(`output block: ${pre.scrollWidth}px in ${pre.clientWidth}px ` +
                `(${longest} chars): ${pre.textContent.trim().slice(0, 50)}`);
    }
  }
  for (const mj of main.querySelectorAll('mjx-container[display="true"]')) {
    if (!visible(mj)) continue;
    const inner = mj.querySelector("mjx-math") || mj;
    const box = (mj.closest("div.math") || mj.parentElement);
    const avail = Math.min(box.clientWidth || column, column);
    const w = inner.getBoundingClientRect().width;
    if (w > avail + 1) {
      const tex = (items.find((i) => i.typesetRoot === mj) || {}).math || mj.textContent;
      wide.push(`display math: ${Math.round(w)}px in ${avail}px: ` +
                String(tex).replace(/\s+/g, " ").slice(0, 60));
    }
  }
  for (const t of main.querySelectorAll("table")) {
    if (!visible(t)) continue;
    const w = t.getBoundingClientRect().width;
    if (w > column + 1) wide.push(`table: ${Math.round(w)}px in ${column}px: ` +
                                  t.textContent.trim().replace(/\s+/g, " ").slice(0, 50));
  }
  for (const img of main.querySelectorAll("img")) {
    if (!visible(img)) continue;
    const w = img.getBoundingClientRect().width;
    if (w > column + 1) wide.push(`image: ${Math.round(w)}px in ${column}px: ${img.src.slice(-40)}`);
  }
  const page = {scroll: document.documentElement.scrollWidth, viewport: window.innerWidth};

  // ---- figures: every label's rendered height (SVG text, scaled) ----
  const figures = [];
  const imgs = [...main.querySelectorAll(".cell_output img, figure img, .output img")]
    .filter((i) => visible(i) && i.getBoundingClientRect().width > 40);
  for (const img of imgs) {
    const src = img.currentSrc || img.src;
    const rendered = img.getBoundingClientRect().width;
    const rec = {src: src.startsWith("data:") ? src.slice(0, 30) : src.split("/").pop(),
                 rendered: Math.round(rendered), kind: "raster", texts: 0,
                 minPx: null, smallest: ""};
    let svgText = null;
    if (/^data:image\/svg\+xml/.test(src)) {
      const body = src.slice(src.indexOf(",") + 1);
      svgText = /;base64,/.test(src.slice(0, 40)) ? atob(body) : decodeURIComponent(body);
    } else if (/\.svg(\?|#|$)/.test(src)) {
      svgText = await (await fetch(src)).text();
    }
    if (svgText !== null) {
      rec.kind = "svg";
      const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
      const svg = doc.documentElement;
      const vb = (svg.getAttribute("viewBox") || "").split(/[\s,]+/).map(Number);
      const intrinsic = vb.length === 4 && vb[2] > 0 ? vb[2] : parseFloat(svg.getAttribute("width"));
      const scale = rendered / intrinsic;
      for (const t of doc.querySelectorAll("text")) {
        if (!t.textContent.trim()) continue;
        let size = null;
        for (let e = t; e && e.getAttribute && size === null; e = e.parentNode) {
          const style = e.getAttribute("style") || "";
          const m = style.match(/font-size:\s*([\d.]+)px/) || style.match(/font:[^;]*?([\d.]+)px/);
          if (m) size = parseFloat(m[1]);
          else if (e.getAttribute("font-size")) size = parseFloat(e.getAttribute("font-size"));
        }
        if (size === null) continue;
        const sm = (t.getAttribute("transform") || "").match(/scale\(([-\d.]+)/);
        const px = size * scale * (sm ? Math.abs(parseFloat(sm[1])) : 1);
        rec.texts += 1;
        if (rec.minPx === null || px < rec.minPx) {
          rec.minPx = px;
          rec.smallest = t.textContent.trim().slice(0, 30);
        }
      }
      rec.glyphPaths = doc.querySelectorAll("defs path[id^='DejaVu'], use[*|href^='#DejaVu']").length;
    }
    figures.push(rec);
  }

  // ---- chrome: title, numbers, search boxes, footer ----
  const h1 = [...main.querySelectorAll("article h1, section h1, h1")].find(visible);
  const titles = (sel) => [...main.querySelectorAll(sel)].map((e) => e.textContent.replace(/\s+/g, " ").trim());
  const searchBoxes = [...document.querySelectorAll(".search-button-field, input[type='search']")]
    .filter((e) => visible(e) && e.getBoundingClientRect().width > 0 && !e.closest("dialog"));
  const header = document.querySelector("header.bd-header");
  const footer = [...document.querySelectorAll("footer, .bd-footer-content, .footer-item")]
    .map((f) => f.textContent.replace(/\s+/g, " ").trim()).join(" | ");
  return {
    texLeft, rawRoles, mathErrors, swallowed, mathItems: items.length,
    solutions: solutions.length, shownSolutions, leaked, strays, wide, page, column, figures,
    h1: h1 ? h1.textContent.replace(/[#¶]/g, "").replace(/\s+/g, " ").trim() : "",
    exercises: titles(".exercise .admonition-title, .exercise > .admonition-title"),
    captions: titles("figcaption .caption-number"),
    eqnos: titles(".eqno"),
    searchBoxes: searchBoxes.length,
    headerHeight: header && visible(header) ? header.getBoundingClientRect().height : 0,
    footer,
  };
}
