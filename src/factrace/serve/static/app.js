// factrace serve: the page. Routes live in the hash (#/view?key=value...), so every view has a
// URL that reopens it; the data come from the JSON API under /api/.
"use strict";

const view = document.getElementById("view");
let info = null;

// helpers -------------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = document.getElementById("error");
  box.textContent = "";
  box.hidden = true;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    showError(`the server did not answer (${e})`);
    throw e;
  }
  const data = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (!response.ok || data.error) {
    showError(data.error || `${response.status} ${response.statusText}`);
    throw new Error(data.error);
  }
  return data;
}

// A slow request (the model answering): `status` says so until the answer or the error comes.
async function slowApi(status, message, path, body) {
  status.textContent = message;
  try {
    const data = await api(path, body);
    clearError();
    return data;
  } finally {
    status.textContent = "";
  }
}

// START:END of the completion's characters that tokens[lo..hi] cover (at least one character).
function charSpan(tokens, lo, hi) {
  return `${tokens[lo].start}:${Math.max(tokens[hi].end, tokens[lo].start + 1)}`;
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, query] = hash.split("?");
  return {name: name || "browse", params: new URLSearchParams(query || "")};
}

function link(name, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return `#/${name}${text ? "?" + text : ""}`;
}

// Open a view; the one already open (the same URL: Ask again) is rendered again.
function go(name, params) {
  const target = link(name, params);
  if (location.hash === target) render();
  else location.hash = target;
}

// Replace the URL without a new history entry or a re-render (filters as they are typed).
function remember(name, params) { history.replaceState(null, "", link(name, params)); }

function fmt(score) { return (score >= 0 ? "+" : "") + Number(score).toFixed(4); }

// `text` with each occurrence of `target` (trimmed, any case) in <mark class="target">.
function highlighted(text, target) {
  const span = el("span", {class: "text"});
  const needle = (target || "").trim();
  if (!needle) { span.textContent = text; return span; }
  const lower = text.toLowerCase(), want = needle.toLowerCase();
  let at = 0;
  for (;;) {
    const found = lower.indexOf(want, at);
    if (found < 0) break;
    span.append(text.slice(at, found), el("mark", {class: "target", text: text.slice(found, found + needle.length)}));
    at = found + needle.length;
  }
  span.append(text.slice(at));
  return span;
}

// Tokens shaded by contribution: green raises the score, red lowers it.
function shadedTokens(tokens, attrs) {
  const scale = Math.max(1e-30, ...tokens.map((t) => Math.abs(t.contribution)));
  const box = el("div", Object.assign({class: "tokens"}, attrs || {}));
  for (const t of tokens) {
    const x = Math.min(Math.abs(t.contribution) / scale, 1);
    const colour = t.contribution >= 0 ? `rgba(0, 150, 60, ${0.75 * x})` : `rgba(210, 30, 30, ${0.75 * x})`;
    box.append(el("span", {
      class: "tok " + (t.contribution >= 0 ? "pos" : "neg"), style: `background: ${colour}`,
      title: fmt(t.contribution), dataset: {contribution: t.contribution},
    }, t.token));
  }
  return box;
}

function legend() {
  return el("p", {class: "legend"}, el("span", {class: "pos-sample", text: "green"}),
    " raises the score, ", el("span", {class: "neg-sample", text: "red"}), " lowers it");
}

// A query's prompt and target; or an answer's prompt and completion, its traced span in bold.
function queryLine(q) {
  const line = el("span", {class: "query-text"}, el("span", {class: "prompt", text: q.prompt || ""}));
  if (q.target) line.append(el("span", {class: "target", text: q.target}));
  if (q.completion) {
    const [start, end] = q.span || [0, q.completion.length];
    line.append(el("span", {class: "completion-text"}, q.completion.slice(0, start),
      el("strong", {text: q.completion.slice(start, end)}), q.completion.slice(end)));
  }
  if (!q.prompt && !q.target && !q.completion) line.append(el("span", {class: "muted", text: "(text unknown)"}));
  return line;
}

// One passage of a ranking: score (or, for a gold passage not listed, where it is), id, marks
// (gold, missing, shared) and text; with `href` (its explanation) all of it is one link.
function passageItem(p, target, href) {
  const classes = ["passage"];
  if (p.gold) classes.push("gold");
  if (p.missing) classes.push("missing");
  if (p.shared) classes.push("shared");
  if (href) classes.push("clickable");
  const body = [
    p.note ? el("span", {class: "note", text: p.note}) : el("span", {class: "score", text: fmt(p.score)}),
    el("span", {class: "doc", text: p.id}),
    p.gold ? el("span", {class: "badge gold", text: "gold"}) : null,
    p.missing ? el("span", {class: "badge missing", text: "missing"}) : null,
    p.shared ? el("span", {class: "badge shared", text: "both"}) : null,
    p.kind ? el("span", {class: `badge kind kind-${p.kind}`, title: "what this passage says of the query's fact", text: p.kind}) : null,
    p.window !== null && p.window !== undefined ? el("span", {class: "muted", text: ` window ${p.window}`}) : null];
  if (p.text === null || p.text === undefined) {
    body.push(el("span", {class: "text", text: "not in the store or its corpus"}));
  } else if (p.tokens) {
    body.push(shadedTokens(p.tokens));
  } else {
    body.push(highlighted(p.text, target));
  }
  return el("li", {class: classes.join(" "), dataset: {doc: p.id}},
    href ? el("a", {class: "row-link", href, title: "explain this score token by token"}, body) : body);
}

// `hrefOf(p)`: the link of a passage (its explanation), or null: plain items.
function passageList(title, passages, target, hrefOf, id) {
  const card = el("div", {class: "card", id});
  card.append(el("h3", {text: `${title} (${passages.length})`}));
  if (!passages.length) card.append(el("p", {class: "muted", text: "none"}));
  card.append(el("ol", {class: "passages"}, passages.map((p) => passageItem(p, target, hrefOf ? hrefOf(p) : null))));
  return card;
}

// A set as the page names it: its name, and its method when that differs.
function setLabel(s) { return s.method && s.method !== s.name ? `${s.name} (${s.method})` : s.name; }

function setOptions(select, chosen) {
  for (const s of info.sets) {
    select.append(el("option", {value: s.name, selected: s.name === chosen, disabled: !!s.error},
      setLabel(s) + (s.error ? " (not loaded)" : "")));
  }
}

// Whether a gold passage is among the method's top k (null: the query has no qrels).
function goldBadge(hit, k) {
  if (hit === null || hit === undefined) return null;
  return el("span", {class: `badge ${hit ? "hit" : "miss"}`, title: `whether a gold passage is among this method's top ${k}`},
    hit ? `gold in top ${k}` : `no gold in top ${k}`);
}

function loadedSets() { return info.sets.filter((s) => !s.error); }

// Browse ----------------------------------------------------------------------------------------
async function renderBrowse(params) {
  const sets = loadedSets();
  if (!sets.length) {
    view.replaceChildren(el("p", {class: "muted", text: "No rankings loaded: start factrace serve with --rankings FILE."}));
    return;
  }
  const state = {set: params.get("set") || info.default_set, search: params.get("search") || "",
                 correct: params.get("correct") || "", k: params.get("k") || "", q: params.get("q") || "",
                 fields: {}};
  for (const [key, value] of params) if (key.startsWith("f.")) state.fields[key.slice(2)] = value;
  const save = () => {
    const out = {set: state.set, search: state.search, correct: state.correct, k: state.k, q: state.q};
    for (const [key, value] of Object.entries(state.fields)) out["f." + key] = value;
    return out;
  };

  const select = el("select", {id: "set"});
  setOptions(select, state.set);
  const search = el("input", {id: "search", type: "search", placeholder: "search id, prompt, target", value: state.search});
  const k = state.k || info.default_k;
  const correct = el("select", {id: "correct", "aria-label": `gold in top ${k}`}, el("option", {value: ""}, "any gold rank"),
    el("option", {value: "yes"}, `gold in top ${k}`), el("option", {value: "no"}, `no gold in top ${k}`));
  correct.value = state.correct;
  const filters = el("span", {id: "filters"});
  const count = el("div", {id: "count", class: "muted"});
  const list = el("ul", {class: "queries", id: "queries"});
  const detail = el("div", {id: "detail"}, el("p", {class: "muted", text: "Choose a query."}));
  view.replaceChildren(el("div", {class: "panes"},
    el("section", {}, el("div", {class: "controls"},
      el("label", {for: "set"}, "method"), select, search, info.has_qrels ? correct : null,
      filters), count, list),
    el("section", {}, detail)));

  let timer = null;
  const refresh = async () => {
    remember("browse", save());
    const query = new URLSearchParams({search: state.search, correct: state.correct, k: state.k});
    for (const [key, value] of Object.entries(state.fields)) query.set("field." + key, value);
    const data = await api(`/api/sets/${encodeURIComponent(state.set)}/queries?${query}`);
    clearError();
    if (!filters.childElementCount) {
      for (const [name, values] of Object.entries(data.filters)) {
        const f = el("select", {id: `filter-${name}`, dataset: {field: name}},
          el("option", {value: ""}, `${name}: all`), values.map((v) => el("option", {value: String(v)}, `${name}: ${v}`)));
        f.value = state.fields[name] || "";
        f.addEventListener("change", () => { state.fields[name] = f.value; if (!f.value) delete state.fields[name]; refresh(); });
        filters.append(f);
      }
    }
    count.textContent = `${data.queries.length} of ${data.total} queries`;
    list.replaceChildren(...data.queries.map((q) => el("li", {class: "query" + (q.id === state.q ? " selected" : ""), dataset: {id: q.id}},
      el("a", {class: "row-link", href: link("browse", Object.assign(save(), {q: q.id}))},
        el("span", {class: "qid", text: q.id}), queryLine(q), goldBadge(q.correct, data.k)))));
  };
  select.addEventListener("change", () => { state.set = select.value; state.fields = {}; filters.replaceChildren(); refresh(); });
  search.addEventListener("input", () => { state.search = search.value; clearTimeout(timer); timer = setTimeout(refresh, 150); });
  correct.addEventListener("change", () => { state.correct = correct.value; refresh(); });
  await refresh();
  if (state.q) await renderDetail(detail, state.set, state.q, state.k);
}

async function renderDetail(box, setName, qid, k, kind) {
  const data = await api(`/api/sets/${encodeURIComponent(setName)}/queries/${encodeURIComponent(qid)}?k=${k || ""}&kind=${encodeURIComponent(kind || "")}`);
  const q = data.query;
  const target = q.target || q.completion;
  const explain = info.can_ask ? (p) => link("explain", {set: setName, q: qid, doc: p.id}) : null;
  const where = (g) => (g.rank ? `rank ${g.rank}` : `not in the top ${data.ranked}`) + (g.opponent_rank ? `, opponent ${g.opponent_rank}` : "");
  const head = el("div", {class: "card", id: "query-head"},
    el("h2", {}, el("span", {class: "qid", text: q.id}), queryLine(q), goldBadge(data.correct, data.k)),
    el("div", {class: "muted"}, `method ${setLabel(data.set)}`,
      Object.entries(q.fields).map(([key, value]) => ` · ${key}: ${value}`)),
    data.gold.length ? el("div", {class: "muted", id: "gold-ranks"}, "gold: " + data.gold.map((g) => `${g.id} (${where(g)})`).join(", ")) : null,
    explain ? el("div", {class: "muted", text: "Click a passage to explain its score token by token."}) : null,
    el("a", {href: link("compare", {a: setName, q: qid}), id: "compare-link"}, "compare with another method"));
  // gold passages the list leaves out: their text, and where the method ranks them
  const outside = data.gold.filter((g) => !g.rank).map((g) => Object.assign({}, g, {gold: true, note: where(g)}));
  // the proponents of one kind only (entails, object, subject, relation, other)
  const kinds = data.kinds.length ? el("select", {id: "kind", "aria-label": "proponent kind"}, el("option", {value: ""}, "every kind"),
    ...data.kinds.map((name) => el("option", {value: name}, name))) : null;
  if (kinds) {
    kinds.value = data.kind || "";
    kinds.addEventListener("change", () => renderDetail(box, setName, qid, k, kinds.value));
  }
  box.replaceChildren(...[head, kinds, passageList("proponents", data.proponents, target, explain, "proponents"),
    outside.length ? passageList(`gold passages not in the top ${data.ranked}`, outside, target, explain, "gold-outside") : null,
    passageList("opponents", data.opponents, target, explain, "opponents")].filter(Boolean));
}

// Compare ---------------------------------------------------------------------------------------
async function renderCompare(params) {
  const sets = loadedSets();
  if (sets.length < 2) {
    view.replaceChildren(el("p", {class: "muted", text: "Comparing needs two rankings sets: give --rankings twice (or a compare output directory)."}));
    return;
  }
  const a = params.get("a") || info.default_set;
  const b = params.get("b") || (sets.find((s) => s.name !== a) || sets[1]).name;
  const selectA = el("select", {id: "set-a"}), selectB = el("select", {id: "set-b"});
  setOptions(selectA, a);
  setOptions(selectB, b);
  const search = el("input", {id: "compare-search", type: "search", autocomplete: "off",
                              placeholder: "find a query by id, prompt or target"});
  const matches = el("ul", {id: "compare-matches", class: "matches", hidden: true});
  const steps = el("span", {class: "steps"});
  const summary = el("div", {id: "overlap", class: "muted"});
  const columns = el("div", {class: "columns"});
  view.replaceChildren(el("div", {class: "controls"}, el("label", {for: "set-a"}, "left"), selectA,
    el("label", {for: "set-b"}, "right"), selectB, el("label", {for: "compare-search"}, "query"),
    el("span", {class: "chooser"}, search, matches), steps),
    el("div", {class: "card", id: "compare-head"}), summary, columns);
  const data = await api(`/api/compare?${new URLSearchParams({a, b, q: params.get("q") || ""})}`);
  clearError();
  const q = data.query;
  const open = (qid) => link("compare", {a, b, q: qid});
  const reopen = () => go("compare", {a: selectA.value, b: selectB.value, q: q.id});
  selectA.addEventListener("change", reopen);
  selectB.addEventListener("change", reopen);
  chooseQuery(search, matches, data.common, open);
  const at = data.common.findIndex((c) => c.id === q.id);
  steps.replaceChildren(el("span", {},
    at > 0 ? el("a", {id: "compare-prev", href: open(data.common[at - 1].id)}, "‹ previous") : null,
    el("span", {class: "muted", text: ` query ${at + 1} of ${data.common.length} `}),
    at + 1 < data.common.length ? el("a", {id: "compare-next", href: open(data.common[at + 1].id)}, "next ›") : null));
  document.getElementById("compare-head").append(el("h2", {}, el("span", {class: "qid", text: q.id}), queryLine(q)));
  summary.textContent = `${data.shared.length} passages in both top lists (marked "both")`;
  const target = q.target || q.completion;
  for (const [id, side] of [["side-a", data.a], ["side-b", data.b]]) {
    const explain = info.can_ask ? (p) => link("explain", {set: side.set.name, q: q.id, doc: p.id}) : null;
    const column = el("section", {id}, el("h3", {text: setLabel(side.set)}),
      passageList("proponents", side.proponents, target, explain));
    columns.append(column);
  }
}

// The queries (`choices`: id, prompt, target, completion) whose text holds what `search` says,
// listed under it as links (`open(id)`); Enter opens the first, Escape clears.
const MAX_MATCHES = 50;
function chooseQuery(search, matches, choices, open) {
  const text = (c) => `${c.id} ${c.prompt || ""}${c.target || ""}${c.completion || ""}`.toLowerCase();
  const show = () => {
    const needle = search.value.trim().toLowerCase();
    matches.hidden = !needle;
    if (!needle) return;
    const found = choices.filter((c) => text(c).includes(needle));
    matches.replaceChildren(...found.slice(0, MAX_MATCHES).map((c) => el("li", {dataset: {id: c.id}},
      el("a", {href: open(c.id)}, el("span", {class: "qid", text: c.id}), queryLine(c)))));
    if (!found.length) matches.append(el("li", {class: "muted", text: "no query matches"}));
    if (found.length > MAX_MATCHES) matches.append(el("li", {class: "muted", text: `${found.length - MAX_MATCHES} more: search for more of the text`}));
  };
  search.addEventListener("input", show);
  search.addEventListener("keydown", (event) => {
    const first = matches.querySelector("a");
    if (event.key === "Enter" && first) location.hash = first.getAttribute("href");
    if (event.key === "Escape") { search.value = ""; show(); }
  });
}

// Ask -------------------------------------------------------------------------------------------
async function renderAsk(params) {
  if (!info.can_ask) {
    view.replaceChildren(el("p", {class: "muted", text: "Asking needs a store: start factrace serve with --index STORE."}));
    return;
  }
  const prompt = el("textarea", {id: "prompt", rows: 2, placeholder: "a prompt for the model"});
  prompt.value = params.get("prompt") || "";
  const tokens = el("input", {id: "max-new-tokens", type: "number", min: 1, max: 64, value: params.get("n") || "8"});
  const button = el("button", {id: "ask-go", type: "button"}, "Ask");
  const status = el("div", {id: "ask-status", class: "status"});
  const result = el("div", {id: "answer"});
  view.replaceChildren(el("div", {class: "card"}, prompt,
    el("div", {class: "controls"}, el("label", {for: "max-new-tokens"}, "new tokens at most"), tokens, button)),
    status, result);
  button.addEventListener("click", () => {
    if (!prompt.value.trim()) {
      showError("Type a prompt first: the model completes it, and the completion is traced.");
      prompt.focus();
      return;
    }
    go("ask", {prompt: prompt.value, n: tokens.value});
  });
  if (!params.get("prompt")) return;
  const request = {prompt: params.get("prompt"), max_new_tokens: Number(params.get("n") || 8), span: params.get("span") || null};
  const answer = await slowApi(status, "The model is answering and the answer is being traced…",
    "/api/ask", request);
  renderAnswer(result, answer, request);
}

function renderAnswer(box, answer, request) {
  let first = null, last = null;  // the token range chosen (click, then shift-click)
  const spans = answer.tokens.map((t, i) => el("span", {class: "tok" + (t.traced ? " traced" : ""), dataset: {i, start: t.start, end: t.end}}, t.token));
  const mark = () => spans.forEach((s, i) => s.classList.toggle("selecting", first !== null && i >= Math.min(first, last) && i <= Math.max(first, last)));
  spans.forEach((s, i) => s.addEventListener("click", (event) => {
    if (event.shiftKey && first !== null) last = i; else { first = i; last = i; }
    mark();
  }));
  const completion = el("div", {class: "tokens completion", id: "completion"}, el("span", {class: "prompt", text: answer.prompt}), spans);
  const traceSpan = el("button", {id: "trace-span", type: "button"}, "Trace the selected tokens");
  const traceAll = el("button", {id: "trace-all", type: "button"}, "Trace the whole completion");
  traceSpan.addEventListener("click", () => {
    let range = null;
    if (first !== null) {
      range = charSpan(answer.tokens, Math.min(first, last), Math.max(first, last));
    } else {
      range = selectionSpan(spans, answer.tokens);
    }
    if (!range) { showError("select tokens of the completion first (click one, shift-click another)"); return; }
    go("ask", {prompt: request.prompt, n: request.max_new_tokens, span: range});
  });
  traceAll.addEventListener("click", () => go("ask", {prompt: request.prompt, n: request.max_new_tokens}));
  const traced = answer.span ? `characters ${answer.span[0]}:${answer.span[1]} of the completion` : "the whole completion";
  const explain = (p) => link("explain", {prompt: request.prompt, n: request.max_new_tokens, span: request.span, doc: p.id});
  box.replaceChildren(
    el("div", {class: "card", id: "answer-head"}, completion,
      el("div", {class: "muted", id: "traced", text: `traced: ${traced} · R_eval: ${(answer.whitening || {}).r_eval || "?"}`}),
      el("div", {class: "controls"}, traceSpan, traceAll,
        el("span", {class: "muted", text: "click a token, shift-click another, to choose a span"}))),
    legend(),
    passageList("proponents", answer.proponents, answer.completion, explain, "proponents"),
    passageList("opponents", answer.opponents, answer.completion, explain, "opponents"));
}

// The text selected with the mouse inside the completion, as a START:END of its characters.
function selectionSpan(spans, tokens) {
  const selection = window.getSelection();
  if (!selection || selection.isCollapsed) return null;
  const chosen = spans.map((s, i) => (selection.containsNode(s, true) ? i : -1)).filter((i) => i >= 0);
  if (!chosen.length) return null;
  return charSpan(tokens, chosen[0], chosen[chosen.length - 1]);
}

// Explain ---------------------------------------------------------------------------------------
async function renderExplain(params) {
  const status = el("div", {id: "explain-status", class: "status"});
  const box = el("div", {id: "explanation"});
  view.replaceChildren(status, box);
  const doc = params.get("doc");
  const request = params.get("set")
    ? {set: params.get("set"), query_id: params.get("q"), doc_id: doc}
    : {prompt: params.get("prompt"), max_new_tokens: Number(params.get("n") || 8), span: params.get("span") || null, doc_id: doc};
  const data = await slowApi(status, "Explaining the score token by token…", "/api/explain", request);
  const back = params.get("set")
    ? link("browse", {set: params.get("set"), q: params.get("q")})
    : link("ask", {prompt: params.get("prompt"), n: params.get("n"), span: params.get("span")});
  const sum = (tokens) => tokens.reduce((total, t) => total + t.contribution, 0);
  box.replaceChildren(
    el("div", {class: "card", id: "explain-head"},
      el("h2", {}, "passage ", el("span", {class: "doc", text: data.doc_id}), " for query ",
        el("span", {class: "qid", text: data.query_id})),
      el("div", {}, queryLine(data.query)),
      scoreTable(data),
      el("a", {href: back, id: "back"}, "back")),
    legend(),
    el("div", {class: "card"}, el("h3", {text: `passage tokens (they sum to ${fmt(sum(data.passage_tokens))})`}),
      shadedTokens(data.passage_tokens, {id: "passage-tokens"})),
    el("div", {class: "card"}, el("h3", {text: `query tokens (they sum to ${fmt(sum(data.query_tokens))})`}),
      shadedTokens(data.query_tokens, {id: "query-tokens"})),
    el("p", {class: "muted", text: `R_eval: ${(data.whitening || {}).r_eval || "?"} · per-token products: ${data.per_token}`}));
}

// The score the ranking lists the pair with (its method's: BM25's is no TrackStar score) and
// the store's score, the one split over tokens below.
function scoreTable(data) {
  const l = data.listed;
  const where = l.rank ? `${l.list === "opponents" ? "opponent" : "proponent"} ${l.rank}` : "not in its list";
  const named = l.set && l.set !== l.method ? `${l.method} (${l.set})` : l.method;
  return el("table", {class: "scores", id: "explain-scores"},
    el("tr", {id: "explain-listed"}, el("th", {}, "listed by ", el("strong", {text: named}), ` · ${where}`),
      el("td", {class: "score", id: "listed-score", text: l.rank ? fmt(l.score) : "—"})),
    el("tr", {id: "explain-split"}, el("th", {}, "split below: the store's ", el("strong", {text: data.method}), " score"),
      el("td", {class: "score", id: "explain-score", text: fmt(data.score)})));
}

// main ------------------------------------------------------------------------------------------
const VIEWS = {browse: renderBrowse, compare: renderCompare, ask: renderAsk, explain: renderExplain};

async function render() {
  const {name, params} = route();
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.id === `nav-${name}`);
  clearError();
  view.dataset.view = name;
  view.dataset.ready = "";
  try {
    await (VIEWS[name] || renderBrowse)(params);
  } catch (e) {
    if (!document.getElementById("error").textContent) showError(String(e));
  } finally {
    view.dataset.ready = "1";
  }
}

async function start() {
  try {
    info = await api("/api/info");
  } catch (e) {
    return;
  }
  document.getElementById("where").textContent = info.index ? `store ${info.index}` : "";
  document.getElementById("load-errors").replaceChildren(
    ...info.sets.filter((s) => s.error).map((s) => el("div", {class: "load-error"}, `rankings ${s.path} not loaded: ${s.error}`)));
  window.addEventListener("hashchange", render);
  await render();
}

start();
