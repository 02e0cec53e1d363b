// goroscope leak workbench: the page served at `/` by `goroscope run` and `goroscope serve`.
//
// Plain JavaScript, no framework, no dependency, no external request (the page's CSP says
// so too): it reads the agent's JSON API (agent/src/export/web/API.md) and draws
//  - the traced processes, leak suspects first;
//  - the goroutine creation sites of one process, suspects first, filterable;
//  - the "created by" topology of those sites, and the contexts with their parents and the
//    goroutines waiting on them, as inline SVG;
//  - a site's goroutines grouped by blocking stack (like pprof's debug=1);
//  - the source lines of any file:line, when the agent has a --source-root.
//
// Why a hand-written layered layout rather than a graph library: the graphs have a few
// dozen nodes (creation sites, not goroutines), "created by" is a DAG almost always (a
// cycle needs a site whose goroutines create goroutines at a site upstream of it, which
// the layout handles by reversing that edge), and a layered (Sugiyama-style) layout of
// that size is ~100 lines: cycle breaking by DFS, longest-path layers, a few barycenter
// sweeps to reduce crossings. A library (d3, dagre, cytoscape, ~100–500 kB) would have to
// be vendored into the binary and audited, for no visible gain at this size.
//
// Every string from the API reaches the DOM through textContent or setAttribute, never
// through innerHTML; links to outside (a frame's source_url) only if they are http(s),
// and only open in a new tab on a click.
'use strict';

(function () {
  const REFRESH_MS = 5000;
  const STACK_POLL_MS = 2000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const state = {
    list: null, // GET /api/v1/processes
    listText: '',
    pid: null,
    proc: null, // GET /api/v1/processes/{pid}
    procText: '',
    site: null, // id of the site whose drill-down is open
    drill: null,
    drillText: '',
    drillTimer: null,
    search: '',
    showRuntime: false,
    source: null, // {file, line} shown in the source view
    graphSig: '',
    ctxGraphSig: '',
    refreshTimer: null,
    lastOk: 0,
  };

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers (text only: no HTML parsing of API data) -------------------

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    setProps(e, props);
    append(e, kids);
    return e;
  }

  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    append(e, kids);
    return e;
  }

  function setProps(e, props) {
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }

  // Replaces e's children (null and false kids skipped: replaceChildren would print them).
  function setKids(e, ...kids) {
    e.replaceChildren();
    append(e, kids);
  }

  function append(e, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.appendChild(typeof k === 'object' ? k : document.createTextNode(String(k)));
    }
  }

  // ---- formatting --------------------------------------------------------------------

  function fmtAge(s, lowerBound) {
    if (s === null || s === undefined || !(s > 0)) return '-';
    let t;
    if (s < 60) t = s.toFixed(s < 10 ? 1 : 0) + 's';
    else if (s < 3600) t = Math.floor(s / 60) + 'm' + pad2(Math.floor(s % 60)) + 's';
    else if (s < 86400) t = Math.floor(s / 3600) + 'h' + pad2(Math.floor((s % 3600) / 60)) + 'm';
    else t = Math.floor(s / 86400) + 'd' + Math.floor((s % 86400) / 3600) + 'h';
    return (lowerBound ? '>' : '') + t;
  }

  function plural(n, one, many) {
    return n + ' ' + (n === 1 ? one : many || one + 's');
  }

  function pad2(n) {
    return n < 10 ? '0' + n : String(n);
  }

  function fmtRate(perMin) {
    if (perMin === null || perMin === undefined) return '-';
    return (perMin >= 0 ? '+' : '') + perMin.toFixed(1);
  }

  function fmtStates(states) {
    return Object.entries(states || {})
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => k + ': ' + v)
      .join(', ');
  }

  // "function file:line" → {fn, file, line}; the file may contain spaces, the function not.
  function splitLocation(loc) {
    if (!loc) return null;
    const sp = loc.indexOf(' ');
    const fn = sp < 0 ? '' : loc.slice(0, sp);
    const rest = sp < 0 ? loc : loc.slice(sp + 1);
    const m = /^(.*):(\d+)$/.exec(rest);
    return m ? { fn, file: m[1], line: Number(m[2]) } : { fn, file: rest, line: 0 };
  }

  // The last three path components: enough to tell files apart in a table.
  function shortPath(file) {
    const parts = String(file).split('/');
    return parts.length > 4 ? '…/' + parts.slice(-3).join('/') : String(file);
  }

  // "github.com/o/r/pkg.(*T).m" → "pkg.(*T).m": the package path is in the tooltip.
  function shortFn(fn) {
    const f = String(fn || '');
    const cut = f.search(/[([]/); // generic type arguments and receivers may hold slashes
    return f.slice((cut < 0 ? f : f.slice(0, cut)).lastIndexOf('/') + 1);
  }

  function baseName(p) {
    const parts = String(p).split('/');
    return parts[parts.length - 1] || String(p);
  }

  function safeUrl(u) {
    return typeof u === 'string' && /^https?:\/\//i.test(u) ? u : null;
  }

  // ---- verdicts ----------------------------------------------------------------------

  function proven(s) {
    const l = s.leak || {};
    return l.scale === 'runtime' || (l.proven_leaked || 0) > 0 || (s.leaked || 0) > 0;
  }

  function suspected(s) {
    return proven(s) || !!(s.leak && s.leak.suspected);
  }

  function verdict(s) {
    return proven(s) ? 'proven' : suspected(s) ? 'suspect' : 'healthy';
  }

  function leakBadge(s) {
    if (proven(s)) return el('span', { class: 'badge proven', title: 'the Go runtime proved these goroutines leaked', text: 'runtime' });
    if (s.leak && s.leak.suspected) {
      const g = s.leak.growth_per_second;
      return el('span', {
        class: 'badge suspect',
        title: 'suspected by the leak model on its ' + s.leak.scale + ' scale' + (g ? ' (+' + g.toFixed(2) + '/s)' : ''),
        text: s.leak.scale || 'yes',
      });
    }
    return el('span', { class: 'muted', text: '-' });
  }

  // ---- source links ------------------------------------------------------------------

  // A file:line: opens the source view when the agent has a source root, and/or links to
  // source_url (new tab) when the API gave one.
  function fileLink(file, line, sourceUrl) {
    const label = shortPath(file) + (line ? ':' + line : '');
    const full = file + (line ? ':' + line : '');
    const url = safeUrl(sourceUrl);
    const out = el('span', { class: 'loc' });
    const readable = state.list && state.list.source_root && !String(file).startsWith('<') && line > 0;
    if (readable) {
      out.appendChild(el('a', { class: 'src', href: '#', title: 'show ' + full, 'data-file': file, 'data-line': line, text: label }));
      if (url) out.appendChild(el('a', { class: 'ext', href: url, target: '_blank', rel: 'noopener noreferrer', title: url, text: '↗' }));
    } else if (url) {
      out.appendChild(el('a', { class: 'ext-loc', href: url, target: '_blank', rel: 'noopener noreferrer', title: full + ' — ' + url, text: label }));
    } else {
      out.appendChild(el('span', { title: full, text: label }));
    }
    return out;
  }

  function locationNode(fn, file, line, sourceUrl) {
    return el('span', { class: 'location' }, fn ? el('span', { class: 'fn', text: fn }) : null, fn ? ' ' : null, fileLink(file, line, sourceUrl));
  }

  function locationString(loc, sourceUrl) {
    const p = splitLocation(loc);
    if (!p) return el('span', { class: 'muted', text: '-' });
    return locationNode(p.fn, p.file, p.line, sourceUrl);
  }

  // ---- fetching ----------------------------------------------------------------------

  async function getJSON(path) {
    const r = await fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } });
    const text = await r.text();
    let data = null;
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = null;
    }
    if (!r.ok) {
      const msg = data && data.error ? data.error : text.slice(0, 200) || r.statusText;
      const err = new Error(r.status + ': ' + msg);
      err.status = r.status;
      throw err;
    }
    if (data === null) throw new Error('not JSON: ' + path);
    return { data, text };
  }

  function setStatus(text, bad) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('bad', !!bad);
  }

  // ---- URL hash: #pid=N&site=ID (reload keeps the selection) ------------------------

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const pid = Number(h.get('pid'));
    return { pid: pid > 0 ? pid : null, site: h.get('site') || null };
  }

  function writeHash() {
    const h = new URLSearchParams();
    if (state.pid) h.set('pid', state.pid);
    if (state.site) h.set('site', state.site);
    const s = h.toString();
    history.replaceState(null, '', s ? '#' + s : location.pathname);
  }

  // ---- refresh loop ------------------------------------------------------------------

  // One refresh at a time: a refresh asked for while one runs (a click on a process)
  // runs right after it, instead of starting a second polling loop.
  let refreshing = false;
  let refreshAgain = false;

  async function refresh() {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    clearTimeout(state.refreshTimer);
    try {
      const list = await getJSON('/api/v1/processes');
      if (list.text !== state.listText) {
        state.listText = list.text;
        state.list = list.data;
        renderProcesses();
      }
      const procs = state.list.processes || [];
      if (!state.pid || !procs.some((p) => p.pid === state.pid)) {
        if (state.pid && state.proc) setStatus('process ' + state.pid + ' is no longer traced', true);
        const next = procs.length ? procs[0].pid : null;
        if (next !== state.pid) selectProcess(next, false);
      }
      if (state.pid) {
        const pid = state.pid;
        const p = await getJSON('/api/v1/processes/' + pid);
        if (pid === state.pid && p.text !== state.procText) {
          state.procText = p.text;
          state.proc = p.data;
          renderProcess();
        }
      } else {
        renderProcess();
      }
      if (state.site && !state.drillTimer) await loadDrill();
      state.lastOk = Date.now();
      const age = state.list.refreshed_at_unix ? Math.max(0, Date.now() / 1000 - state.list.refreshed_at_unix) : null;
      setStatus(
        'page refreshed ' + new Date().toLocaleTimeString() +
          (age !== null ? ' · agent snapshot ' + age.toFixed(0) + ' s old' : '') +
          (state.list.interval_seconds ? ' · agent refresh every ' + state.list.interval_seconds + ' s' : '')
      );
    } catch (e) {
      setStatus('cannot reach the agent (' + e.message + '); retrying every ' + REFRESH_MS / 1000 + ' s', true);
    }
    refreshing = false;
    if (refreshAgain) {
      refreshAgain = false;
      refresh();
    } else {
      state.refreshTimer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function selectProcess(pid, fetchNow) {
    if (pid === state.pid) return;
    state.pid = pid;
    state.proc = null;
    state.procText = '';
    state.graphSig = '';
    state.ctxGraphSig = '';
    closeDrill(false);
    closeSource();
    rowCache.clear();
    ctxRowCache.clear();
    setKids($('sites').tBodies[0]);
    setKids($('contexts').tBodies[0]);
    markSelectedProcess();
    writeHash();
    if (fetchNow) refresh();
  }

  // ---- process picker ----------------------------------------------------------------

  function renderProcesses() {
    const ul = $('processes');
    const scroll = ul.scrollTop;
    const procs = (state.list.processes || []).slice();
    // The API sorts already (suspects first, then by live); kept stable here.
    procs.sort((a, b) => (b.suspected || 0) - (a.suspected || 0) || (b.live || 0) - (a.live || 0) || a.pid - b.pid);
    const items = procs.map((p) => {
      const id = p.identity || {};
      const pod = id.pod ? (id.namespace ? id.namespace + '/' : '') + id.pod + (id.container ? ' · ' + id.container : '') : '';
      const b = el(
        'button',
        { class: 'proc' + (p.suspected ? ' has-suspects' : ''), type: 'button', 'data-pid': p.pid, title: p.exe },
        el('div', { class: 'proc-line1' },
          el('span', { class: 'badge ' + (p.suspected ? 'suspect' : 'ok'), title: 'leak suspects', text: p.suspected ? p.suspected + ' suspect' + (p.suspected > 1 ? 's' : '') : 'no suspect' }),
          ' ',
          el('span', { class: 'exe', text: baseName(p.exe) })),
        pod ? el('div', { class: 'pod', text: pod }) : null,
        el('div', { class: 'proc-line3 muted', text: 'pid ' + p.pid + ' · ' + p.go_version + ' · ' + p.live + ' live · ' + p.sites + ' sites' })
      );
      b.addEventListener('click', () => selectProcess(p.pid, true));
      return el('li', { 'data-pid': p.pid }, b);
    });
    if (!items.length) items.push(el('li', { class: 'muted empty', text: 'no Go process traced (yet)' }));
    setKids(ul, ...items);
    ul.scrollTop = scroll;
    markSelectedProcess();
  }

  function markSelectedProcess() {
    for (const li of $('processes').children) {
      li.classList.toggle('selected', Number(li.dataset.pid) === state.pid);
    }
  }

  // ---- one process -------------------------------------------------------------------

  function renderProcess() {
    const head = $('process');
    const p = state.proc;
    if (!p) {
      setKids(head, el('p', { class: 'muted', text: state.pid ? 'loading process ' + state.pid + '…' : 'no process selected' }));
      renderSites();
      renderTopology();
      renderContexts();
      return;
    }
    const id = p.identity || {};
    const m = p.module || null;
    const facts = [
      ['pid', String(p.pid)],
      ['Go', p.go_version],
      ['live goroutines', String(p.live) + (p.untracked ? ' (+' + p.untracked + ' untracked)' : '')],
      ['attached', fmtAge(p.attached_seconds) + ' ago'],
    ];
    if (id.pod) facts.push(['pod', (id.namespace ? id.namespace + '/' : '') + id.pod + (id.container ? ' · ' + id.container : '')]);
    else if (id.container_id) facts.push(['container', id.container_id.slice(0, 12)]);
    if (m && m.path) {
      facts.push(['module', m.path + ' ' + (m.version || '') + (m.revision ? ' @' + m.revision.slice(0, 12) : '') + (m.modified ? ' (modified)' : '')]);
    }
    const suspects = (p.suspected_leaks || []).map((s) => {
      const li = el('li', { class: s.proven_leaked ? 'proven' : 'suspect' },
        el('span', { class: 'badge ' + (s.proven_leaked ? 'proven' : 'suspect'), text: s.scale }), ' ',
        el('span', { class: 'kind', text: s.kind }), ' ',
        el('b', { text: String(s.live) }), ' ',
        el('span', { class: 'muted', text: s.kind === 'contexts' ? 'uncancelled' : 'live' }), ' ',
        el('span', { class: 'muted', text: fmtRate(s.growth_per_minute) + '/min' }), ' at ',
        locationString(s.site, null));
      if (s.kind === 'goroutines' && s.id) {
        li.appendChild(el('button', { class: 'link', type: 'button', text: 'stacks', on: { click: () => openSite(s.id) } }));
      } else if (s.id) {
        li.appendChild(el('button', { class: 'link', type: 'button', text: 'show', on: { click: () => focusContext(s.id) } }));
      }
      return li;
    });
    setKids(head,
      el('h2', { class: 'exe-title', title: p.exe, text: p.exe }),
      el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])),
      suspects.length
        ? el('div', { class: 'suspects' }, el('h3', { text: 'Suspected leaks' }), el('ul', null, suspects))
        : el('p', { class: 'ok-line', text: 'no leak suspected in this process' })
    );
    renderSites();
    renderTopology();
    renderContexts();
  }

  function siteRank(s) {
    return proven(s) ? 0 : suspected(s) ? 1 : 2;
  }

  function sortedSites(sites) {
    return sites.slice().sort((a, b) => siteRank(a) - siteRank(b) || b.live - a.live || String(a.location).localeCompare(String(b.location)));
  }

  // Runtime sites are hidden unless asked for; a suspected one is always shown.
  function siteShown(s) {
    return state.showRuntime || !s.system || suspected(s);
  }

  // The main goroutine (started by the runtime at runtime.main) creates the program's
  // first goroutines: the graph shows it even when it folds the runtime's sites.
  function isMain(s) {
    return s.system && s.start_function === 'runtime.main';
  }

  function graphShown(s) {
    return siteShown(s) || isMain(s);
  }

  function siteMatches(s) {
    if (!state.search) return true;
    const hay = [s.id, s.function, s.file + ':' + s.line, s.location, s.blocked_at, s.dominant_state, s.start_function].join(' ').toLowerCase();
    return state.search
      .toLowerCase()
      .split(/\s+/)
      .filter(Boolean)
      .every((w) => hay.includes(w));
  }

  // Rows are kept by site id and their cells rebuilt only when their content changed, so a
  // refresh keeps the selection, the hover and the scroll position.
  const rowCache = new Map();
  const ctxRowCache = new Map();

  function setCell(td, sig, build) {
    if (td._sig === sig) return;
    td._sig = sig;
    setKids(td, ...[].concat(build()));
  }

  function syncRows(tbody, rows) {
    let i = 0;
    for (const tr of rows) {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
      i++;
    }
    while (tbody.children.length > rows.length) tbody.lastChild.remove();
  }

  function renderSites() {
    const tbody = $('sites').tBodies[0];
    const p = state.proc;
    const sites = p ? sortedSites(p.sites || []) : [];
    const shown = sites.filter(siteShown);
    const hiddenRuntime = sites.length - shown.length;
    const visible = shown.filter(siteMatches);
    const rows = visible.map((s) => {
      let tr = rowCache.get(s.id);
      if (!tr) {
        tr = el('tr', { 'data-site-id': s.id }, el('td'), el('td', { class: 'num' }), el('td', { class: 'num' }), el('td', { class: 'num' }), el('td', { class: 'state' }), el('td'), el('td'));
        tr.tabIndex = 0;
        tr.addEventListener('click', (e) => {
          if (e.target.closest('a, button')) return;
          openSite(s.id);
        });
        tr.addEventListener('keydown', (e) => {
          if (e.key === 'Enter' && e.target === tr) openSite(s.id);
        });
        rowCache.set(s.id, tr);
      }
      tr.className = [verdict(s), s.system ? 'system' : '', state.site === s.id ? 'selected' : ''].join(' ').trim();
      const c = tr.children;
      const l = s.leak || {};
      setCell(c[0], [verdict(s), l.scale, l.growth_per_second].join('|'), () => leakBadge(s));
      setCell(c[1], String(s.live), () => String(s.live));
      setCell(c[2], String(s.growth_per_minute), () => fmtRate(s.growth_per_minute));
      setCell(c[3], fmtAge(s.oldest_age_seconds, s.oldest_age_is_lower_bound), () => fmtAge(s.oldest_age_seconds, s.oldest_age_is_lower_bound));
      setCell(c[4], s.dominant_state + '|' + fmtStates(s.states), () => {
        c[4].title = fmtStates(s.states);
        return s.dominant_state || '-';
      });
      setCell(c[5], [s.location, s.source_url, !!(state.list && state.list.source_root)].join('|'), () => locationNode(s.function, s.file, s.line, s.source_url));
      setCell(c[6], String(s.blocked_at) + '|' + !!(state.list && state.list.source_root), () => locationString(s.blocked_at, null));
      return tr;
    });
    const exists = new Set(p ? (p.sites || []).map((s) => s.id) : []);
    for (const id of rowCache.keys()) if (!exists.has(id)) rowCache.delete(id);
    syncRows(tbody, rows);
    if (!rows.length) {
      tbody.appendChild(el('tr', { class: 'empty' }, el('td', { colspan: 7, class: 'muted', text: p ? (state.search ? 'no site matches "' + state.search + '"' : 'no goroutine site') : '' })));
    }
    $('site-count').textContent = p
      ? visible.length + ' of ' + sites.length + ' sites shown' + (hiddenRuntime ? ' (' + hiddenRuntime + ' runtime sites hidden)' : '')
      : '';
  }

  // ---- graphs ------------------------------------------------------------------------

  // Layered layout of a directed graph, left to right: returns {x, y} per node index, and
  // the width and height. nodes[i].h is the node's height; edges are [from, to] indexes.
  function layeredLayout(nodes, edges, dims) {
    const n = nodes.length;
    const out = nodes.map(() => []);
    for (const [u, v] of edges) if (u !== v) out[u].push(v);
    // 1. Break cycles: a DFS from the sources (then from the rest, in order); an edge to a
    //    node still on the DFS stack closes a cycle and is reversed for layering.
    const mark = new Array(n).fill(0);
    const dag = [];
    const hasIn = new Array(n).fill(false);
    for (const [u, v] of edges) if (u !== v) hasIn[v] = true;
    const visit = (u) => {
      mark[u] = 1;
      for (const v of out[u]) {
        if (mark[v] === 1) dag.push([v, u]);
        else {
          dag.push([u, v]);
          if (mark[v] === 0) visit(v);
        }
      }
      mark[u] = 2;
    };
    for (let i = 0; i < n; i++) if (!hasIn[i] && mark[i] === 0) visit(i);
    for (let i = 0; i < n; i++) if (mark[i] === 0) visit(i);
    // 2. Longest-path layers (Kahn's order over the DAG).
    const preds = nodes.map(() => []);
    const succs = nodes.map(() => []);
    const indeg = new Array(n).fill(0);
    for (const [u, v] of dag) {
      succs[u].push(v);
      preds[v].push(u);
      indeg[v]++;
    }
    const layer = new Array(n).fill(0);
    const queue = [];
    for (let i = 0; i < n; i++) if (indeg[i] === 0) queue.push(i);
    while (queue.length) {
      const u = queue.shift();
      for (const v of succs[u]) {
        layer[v] = Math.max(layer[v], layer[u] + 1);
        if (--indeg[v] === 0) queue.push(v);
      }
    }
    const layers = [];
    for (let i = 0; i < n; i++) (layers[layer[i]] = layers[layer[i]] || []).push(i);
    for (let l = 0; l < layers.length; l++) layers[l] = layers[l] || [];
    // 3. Order within layers: barycenters of the neighbours in the previous layer (down
    //    sweeps) and the next one (up sweeps); ties keep the input order (importance).
    const pos = new Array(n).fill(0);
    const setPos = () => layers.forEach((ls) => ls.forEach((v, i) => (pos[v] = i)));
    setPos();
    const sweep = (ls, nbrs) => {
      const key = new Map(ls.map((v) => {
        const ns = nbrs[v];
        return [v, ns.length ? ns.reduce((a, u) => a + pos[u], 0) / ns.length : pos[v]];
      }));
      ls.sort((a, b) => key.get(a) - key.get(b) || a - b);
    };
    for (let it = 0; it < 4; it++) {
      for (let l = 1; l < layers.length; l++) { sweep(layers[l], preds); setPos(); }
      for (let l = layers.length - 2; l >= 0; l--) { sweep(layers[l], succs); setPos(); }
    }
    // 4. Coordinates: a column per layer, nodes stacked in it, each column centred on the
    //    tallest one.
    const heights = layers.map((ls) => ls.reduce((a, v) => a + nodes[v].h + dims.gapY, -dims.gapY));
    const tallest = Math.max(0, ...heights);
    const xy = new Array(n);
    layers.forEach((ls, l) => {
      let y = dims.pad + (tallest - heights[l]) / 2;
      for (const v of ls) {
        xy[v] = { x: dims.pad + l * (dims.nodeW + dims.gapX), y, layer: l };
        y += nodes[v].h + dims.gapY;
      }
    });
    return {
      xy,
      width: dims.pad * 2 + Math.max(1, layers.length) * (dims.nodeW + dims.gapX) - dims.gapX,
      height: dims.pad * 2 + tallest,
    };
  }

  const DIMS = { pad: 14, nodeW: 214, gapX: 56, gapY: 12 };
  // Characters that fit beside the mark: titles are 12px monospace (~7.3px a character),
  // the rest 11px sans-serif (~6.2px).
  const TITLE_CHARS = Math.floor((DIMS.nodeW - 52) / 7.3);
  const SUB_CHARS = Math.floor((DIMS.nodeW - 52) / 6.2);

  // Draws nodes [{key, kind, verdict, title, sub, size, tooltip, siteId, onClick}] and
  // edges [{from, to, label, cls, tooltip}] (keys) into container.
  function drawGraph(container, nodes, edges, maxSize, emptyText) {
    const scrollL = container.scrollLeft;
    const scrollT = container.scrollTop;
    if (!nodes.length) {
      setKids(container, el('p', { class: 'muted', text: emptyText }));
      return;
    }
    const index = new Map(nodes.map((nd, i) => [nd.key, i]));
    for (const nd of nodes) {
      nd.r = nd.kind === 'pseudo' ? 7 : 5 + 14 * Math.sqrt(Math.max(0, nd.size) / Math.max(1, maxSize));
      nd.h = Math.max(36, 2 * nd.r + 10);
    }
    const ix = edges.map((e) => [index.get(e.from), index.get(e.to)]);
    const L = layeredLayout(nodes, ix, DIMS);
    const root = svg('svg', { width: L.width, height: L.height, viewBox: '0 0 ' + L.width + ' ' + L.height, role: 'img', class: 'graph-svg' });
    root.appendChild(svg('defs', null,
      svg('marker', { id: container.id + '-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }))));
    const edgeLayer = svg('g', { class: 'edges' });
    const nodeLayer = svg('g', { class: 'nodes' });
    root.append(edgeLayer, nodeLayer);
    edges.forEach((e, k) => {
      const [u, v] = ix[k];
      const a = L.xy[u];
      const b = L.xy[v];
      const na = nodes[u];
      const nb = nodes[v];
      let d;
      let lx;
      let ly;
      if (u === v) {
        // A site whose goroutines create goroutines at the same site: a loop above it.
        const x = a.x + DIMS.nodeW - 30;
        d = 'M' + x + ',' + a.y + ' c 0,-26 40,-26 30,0';
        lx = x + 16;
        ly = a.y - 22;
      } else {
        const x1 = a.x + DIMS.nodeW;
        const y1 = a.y + na.h / 2;
        const x2 = b.x;
        const y2 = b.y + nb.h / 2;
        const back = x2 <= x1;
        const dx = back ? 80 : Math.max(30, (x2 - x1) / 2);
        d = 'M' + x1 + ',' + y1 + ' C' + (x1 + dx) + ',' + y1 + ' ' + (x2 - dx) + ',' + y2 + ' ' + x2 + ',' + y2;
        // The label near the target, where fanned-out edges are far apart.
        const t = back ? 0.5 : 0.8;
        const bez = (p0, p1, p2, p3) => (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t * t * p2 + t ** 3 * p3;
        lx = bez(x1, x1 + dx, x2 - dx, x2) - 4;
        ly = bez(y1, y1, y2, y2) - 4;
      }
      const g = svg('g', { class: 'edge ' + (e.cls || '') },
        svg('title', null, e.tooltip || ''),
        svg('path', { d, 'marker-end': 'url(#' + container.id + '-arrow)' }),
        e.label ? svg('text', { x: lx, y: ly, 'text-anchor': 'middle', class: 'edge-label' }, e.label) : null);
      edgeLayer.appendChild(g);
    });
    nodes.forEach((nd, i) => {
      const { x, y } = L.xy[i];
      const attrs = { class: 'node ' + nd.kind + ' ' + nd.verdict + (nd.onClick ? ' clickable' : '') + (nd.selected ? ' selected' : '') + (nd.dim ? ' dim' : ''), transform: 'translate(' + x + ',' + y + ')' };
      if (nd.siteId) attrs['data-site-id'] = nd.siteId;
      if (nd.onClick) {
        attrs.tabindex = 0;
        attrs.role = 'button';
      }
      const cy = nd.h / 2;
      const shape = nd.kind === 'pseudo'
        ? svg('path', { class: 'mark', d: 'M' + (14 - nd.r) + ',' + cy + ' l' + nd.r + ',' + -nd.r + ' l' + nd.r + ',' + nd.r + ' l' + -nd.r + ',' + nd.r + ' z' })
        : nd.kind === 'context'
          ? svg('rect', { class: 'mark', x: 8 + 14 - nd.r, y: cy - nd.r, width: 2 * nd.r, height: 2 * nd.r, rx: 3 })
          : svg('circle', { class: 'mark', cx: 8 + 14, cy, r: nd.r });
      const g = svg('g', attrs,
        svg('title', null, nd.tooltip || nd.title),
        svg('rect', { class: 'card', x: 0, y: 0, width: DIMS.nodeW, height: nd.h, rx: 6 }),
        shape,
        svg('text', { class: 'node-title', x: 44, y: cy - 3 }, clip(nd.title, nd.kind === 'pseudo' ? SUB_CHARS : TITLE_CHARS)),
        svg('text', { class: 'node-sub', x: 44, y: cy + 11 }, clip(nd.sub, SUB_CHARS)));
      if (nd.onClick) {
        g.addEventListener('click', nd.onClick);
        g.addEventListener('keydown', (ev) => {
          if (ev.key === 'Enter' || ev.key === ' ') {
            ev.preventDefault();
            nd.onClick();
          }
        });
      }
      nodeLayer.appendChild(g);
    });
    setKids(container, root);
    container.scrollLeft = scrollL;
    container.scrollTop = scrollT;
  }

  function clip(s, n) {
    s = String(s || '');
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  const RUNTIME_KEY = '#runtime';
  const UNKNOWN_KEY = '#unknown';
  const OTHER_KEY = '#other';
  const MAX_NODES = 60;

  function renderTopology() {
    const box = $('topology');
    const p = state.proc;
    if (!p) {
      state.graphSig = '';
      setKids(box);
      return;
    }
    const byId = new Map((p.sites || []).map((s) => [s.id, s]));
    // Sites drawn: those with live goroutines, suspects first then by live, at most
    // MAX_NODES (the rest collapsed into one node: the layout is made for a few dozen).
    const drawn = new Set();
    for (const s of sortedSites(p.sites || [])) {
      if (s.live > 0 && graphShown(s) && (drawn.size < MAX_NODES || suspected(s))) drawn.add(s.id);
    }
    const keyOf = (id) => {
      if (id === null || id === undefined) return UNKNOWN_KEY;
      const s = byId.get(id);
      if (!s) return UNKNOWN_KEY;
      if (s.system && !graphShown(s)) return RUNTIME_KEY;
      return drawn.has(id) ? id : OTHER_KEY;
    };
    const nodes = new Map();
    let maxLive = 1;
    const folded = { [RUNTIME_KEY]: [0, 0], [OTHER_KEY]: [0, 0] };
    for (const s of sortedSites(p.sites || [])) {
      if (!(s.live > 0)) continue;
      const key = keyOf(s.id);
      if (key !== s.id) {
        folded[key][0]++;
        folded[key][1] += s.live;
        continue;
      }
      maxLive = Math.max(maxLive, s.live);
      nodes.set(s.id, {
        key: s.id,
        siteId: s.id,
        kind: 'site',
        verdict: verdict(s),
        dim: !siteMatches(s),
        title: isMain(s) ? 'main goroutine' : shortFn(s.function) || s.location,
        sub: (isMain(s) ? 'runtime.main' : baseName(s.file) + ':' + s.line) + ' · ' + s.live + ' live',
        size: s.live,
        selected: state.site === s.id,
        tooltip: s.location + '\n' + s.live + ' live · ' + (s.dominant_state || '') + (s.blocked_at ? '\nblocked at ' + s.blocked_at : '') + (suspected(s) ? '\nLEAK ' + (proven(s) ? 'proven by the runtime' : 'suspected (' + s.leak.scale + ')') : ''),
        onClick: () => openSite(s.id),
      });
    }
    const [otherSites, otherLive] = folded[OTHER_KEY];
    if (otherSites) {
      maxLive = Math.max(maxLive, otherLive);
      nodes.set(OTHER_KEY, {
        key: OTHER_KEY,
        kind: 'site',
        verdict: 'healthy',
        title: otherSites + ' more sites',
        sub: otherLive + ' live · in the table',
        size: otherLive,
        tooltip: 'the sites with the fewest live goroutines, collapsed (the graph draws at most ' + MAX_NODES + ')',
      });
    }
    const [runtimeSites, runtimeLive] = folded[RUNTIME_KEY];
    if (runtimeSites) {
      maxLive = Math.max(maxLive, runtimeLive);
      nodes.set(RUNTIME_KEY, {
        key: RUNTIME_KEY,
        kind: 'site',
        verdict: 'runtime',
        title: 'runtime (' + runtimeSites + ' sites)',
        sub: runtimeLive + ' live · click to expand',
        size: runtimeLive,
        tooltip: "the Go runtime's own goroutines (GC, finalizers, …), collapsed; click to show them",
        onClick: () => setShowRuntime(true),
      });
    }
    const merged = new Map();
    for (const e of p.edges || []) {
      const from = keyOf(e.from);
      const to = keyOf(e.to);
      if (from === to && (from === RUNTIME_KEY || from === OTHER_KEY)) continue;
      if (!nodes.has(to)) continue;
      const k = from + '>' + to;
      const m = merged.get(k) || { from, to, goroutines: 0 };
      m.goroutines += e.goroutines || 0;
      merged.set(k, m);
    }
    if ([...merged.values()].some((e) => e.from === UNKNOWN_KEY)) {
      nodes.set(UNKNOWN_KEY, noParents()
        ? { key: UNKNOWN_KEY, kind: 'pseudo', verdict: 'unknown', title: 'unknown creator', sub: 'Go < 1.21 records none', size: 0, tooltip: 'Go before 1.21 does not record which goroutine created which' }
        : { key: UNKNOWN_KEY, kind: 'pseudo', verdict: 'unknown', title: 'exited / unknown creator', sub: 'creator no longer alive', size: 0, tooltip: 'goroutines whose creating goroutine has exited (or was not seen)' });
    }
    const edges = [...merged.values()]
      .filter((e) => nodes.has(e.from))
      .map((e) => ({ from: e.from, to: e.to, label: String(e.goroutines), tooltip: e.goroutines + ' live goroutines of ' + nodes.get(e.to).title + ' created by ' + nodes.get(e.from).title }));
    // Sources first in the input order: the layout keeps it within a layer.
    const list = [...nodes.values()].sort((a, b) => (b.key === UNKNOWN_KEY) - (a.key === UNKNOWN_KEY));
    const sig = JSON.stringify([list.map((n) => [n.key, n.verdict, n.title, n.sub, Math.round(20 * Math.sqrt(n.size / maxLive)), n.selected, n.dim]), edges.map((e) => [e.from, e.to, e.label])]);
    if (sig === state.graphSig) return;
    state.graphSig = sig;
    drawGraph(box, list, edges, maxLive, 'no live goroutine');
    if (p.parent_goids === false) {
      box.appendChild(el('p', { class: 'muted note', text: 'this Go version (< 1.21) does not record which goroutine created which: no "created by" edges' }));
    }
  }

  function renderLegend() {
    const item = (cls, text) => el('span', { class: 'legend-item' }, el('span', { class: 'swatch ' + cls }), text);
    setKids($('legend'),
      item('suspect', 'leak suspected'),
      item('proven', 'proven leaked (runtime)'),
      item('healthy', 'healthy'),
      item('runtime', 'runtime sites (collapsed)'),
      item('unknown', 'exited / unknown creator'),
      item('context', 'context site (contexts graph)')
    );
  }

  // ---- contexts ----------------------------------------------------------------------

  function ctxSuspected(c) {
    return !!(c.leak && c.leak.suspected);
  }

  function renderContexts() {
    const tbody = $('contexts').tBodies[0];
    const p = state.proc;
    const ctxs = p ? (p.contexts || []).slice() : [];
    ctxs.sort((a, b) => ctxSuspected(b) - ctxSuspected(a) || b.uncancelled - a.uncancelled || String(a.location).localeCompare(String(b.location)));
    const visible = ctxs.filter((c) => !state.search || [c.id, c.location, c.function].join(' ').toLowerCase().includes(state.search.toLowerCase()));
    const rows = visible.map((c) => {
      let tr = ctxRowCache.get(c.id);
      if (!tr) {
        tr = el('tr', { 'data-site-id': c.id }, el('td'), el('td', { class: 'num' }), el('td', { class: 'num' }), el('td', { class: 'num' }), el('td', { class: 'num' }), el('td'));
        ctxRowCache.set(c.id, tr);
      }
      tr.className = ctxSuspected(c) ? 'suspect' : 'healthy';
      const k = tr.children;
      const l = c.leak || {};
      setCell(k[0], [l.suspected, l.scale].join('|'), () => (l.suspected ? el('span', { class: 'badge suspect', text: l.scale || 'yes' }) : el('span', { class: 'muted', text: '-' })));
      setCell(k[1], String(c.uncancelled), () => String(c.uncancelled));
      setCell(k[2], String(c.lost_cancel), () => String(c.lost_cancel ?? '-'));
      setCell(k[3], String(c.oldest_uncancelled_age_seconds), () => fmtAge(c.oldest_uncancelled_age_seconds));
      setCell(k[4], String(c.waiting_goroutines), () => String(c.waiting_goroutines ?? '-'));
      setCell(k[5], [c.location, c.source_url, !!(state.list && state.list.source_root)].join('|'), () => locationNode(c.function, c.file, c.line, c.source_url));
      return tr;
    });
    syncRows(tbody, rows);
    if (!rows.length) tbody.appendChild(el('tr', { class: 'empty' }, el('td', { colspan: 6, class: 'muted', text: p ? 'no context created since attach' : '' })));
    renderContextGraph();
  }

  function renderContextGraph() {
    const box = $('context-graph');
    const p = state.proc;
    if (!p) {
      state.ctxGraphSig = '';
      setKids(box);
      return;
    }
    const sites = new Map((p.sites || []).map((s) => [s.id, s]));
    const ctxs = new Map((p.contexts || []).map((c) => [c.id, c]));
    const nodes = new Map();
    let maxSize = 1;
    const addCtx = (c) => {
      if (nodes.has(c.id)) return;
      maxSize = Math.max(maxSize, c.uncancelled);
      nodes.set(c.id, {
        key: c.id,
        kind: 'context',
        verdict: ctxSuspected(c) ? 'suspect' : 'healthy',
        title: shortFn(c.function) || c.location,
        sub: baseName(c.file) + ':' + c.line + ' · ' + c.uncancelled + ' uncancelled',
        size: c.uncancelled,
        tooltip: c.location + '\n' + c.uncancelled + ' uncancelled, ' + (c.lost_cancel || 0) + ' with a lost cancel, ' + (c.waiting_goroutines || 0) + ' goroutines waiting',
        onClick: () => focusContext(c.id),
      });
    };
    const edges = [];
    for (const e of p.context_edges || []) {
      const to = ctxs.get(e.to);
      if (!to) continue;
      addCtx(to);
      let from = UNKNOWN_KEY;
      if (e.from && ctxs.get(e.from)) {
        addCtx(ctxs.get(e.from));
        from = e.from;
      } else if (!nodes.has(UNKNOWN_KEY)) {
        nodes.set(UNKNOWN_KEY, { key: UNKNOWN_KEY, kind: 'pseudo', verdict: 'unknown', title: 'parent not seen created', sub: 'Background, TODO, or before attach', size: 0, tooltip: 'contexts whose parent context was not seen created' });
      }
      edges.push({ from, to: e.to, label: String(e.uncancelled), tooltip: e.uncancelled + ' uncancelled children' + (e.children_map_len !== null && e.children_map_len !== undefined ? ' (parent children map: ' + e.children_map_len + ')' : '') });
    }
    for (const c of p.contexts || []) {
      if (c.uncancelled > 0) addCtx(c);
      for (const [gid, count] of Object.entries(c.waiters || {})) {
        const s = sites.get(gid);
        if (!s) continue;
        addCtx(c);
        if (!nodes.has(gid)) {
          maxSize = Math.max(maxSize, s.live);
          nodes.set(gid, { key: gid, siteId: gid, kind: 'site', verdict: verdict(s), title: shortFn(s.function), sub: baseName(s.file) + ':' + s.line + ' · ' + s.live + ' live', size: s.live, tooltip: s.location, onClick: () => openSite(gid) });
        }
        edges.push({ from: c.id, to: gid, label: count + ' waiting', cls: 'wait', tooltip: count + ' goroutines of ' + s.location + ' wait on contexts of ' + c.location });
      }
    }
    const list = [...nodes.values()];
    const sig = JSON.stringify([list.map((n) => [n.key, n.verdict, n.sub, Math.round(20 * Math.sqrt(n.size / maxSize))]), edges.map((e) => [e.from, e.to, e.label])]);
    if (sig === state.ctxGraphSig) return;
    state.ctxGraphSig = sig;
    drawGraph(box, list, edges, maxSize, 'no uncancelled context');
  }

  function focusContext(id) {
    const tr = ctxRowCache.get(id);
    if (!tr) return;
    tr.scrollIntoView({ block: 'center' });
    tr.classList.add('flash');
    setTimeout(() => tr.classList.remove('flash'), 1500);
  }

  // ---- drill-down --------------------------------------------------------------------

  function openSite(id) {
    if (state.site !== id) {
      state.site = id;
      state.drill = null;
      state.drillText = '';
      clearTimeout(state.drillTimer);
      state.drillTimer = null;
      const box = $('drilldown');
      box.hidden = false;
      box._sections = null;
      setKids(box, drillHeader(id), el('p', { class: 'muted', text: 'loading…' }));
      box.scrollTop = 0;
      writeHash();
      renderSites();
      state.graphSig = '';
      renderTopology();
    }
    $('drilldown').hidden = false;
    loadDrill();
  }

  function closeDrill(updateHash) {
    state.site = null;
    state.drill = null;
    state.drillText = '';
    clearTimeout(state.drillTimer);
    state.drillTimer = null;
    const box = $('drilldown');
    box.hidden = true;
    box._sections = null;
    setKids(box);
    if (updateHash !== false) {
      writeHash();
      renderSites();
      state.graphSig = '';
      renderTopology();
    }
  }

  async function loadDrill() {
    const id = state.site;
    const pid = state.pid;
    if (!id || !pid) return;
    clearTimeout(state.drillTimer);
    state.drillTimer = null;
    try {
      const r = await getJSON('/api/v1/processes/' + pid + '/sites/' + encodeURIComponent(id));
      if (id !== state.site || pid !== state.pid) return;
      if (r.text !== state.drillText) {
        state.drillText = r.text;
        state.drill = r.data;
        renderDrill();
      }
      if (r.data.stacks === 'requested') {
        state.drillTimer = setTimeout(() => {
          state.drillTimer = null;
          loadDrill();
        }, STACK_POLL_MS);
      }
    } catch (e) {
      if (id !== state.site) return;
      const box = $('drilldown');
      box._sections = null;
      setKids(box, drillHeader(id), el('p', { class: 'error', text: 'cannot read this site: ' + e.message }));
    }
  }

  function drillHeader(id) {
    const s = state.proc && (state.proc.sites || []).find((x) => x.id === id);
    return el('div', { class: 'drill-head' },
      el('h2', null, s ? s.function : 'site', ' ', el('span', { class: 'muted', text: 'site ' + id })),
      el('button', { class: 'close', type: 'button', title: 'close (Esc)', text: '×', on: { click: () => closeDrill() } }));
  }

  // Go before 1.21 records no parent goroutine: every creator is unknown.
  function noParents() {
    return !!(state.proc && state.proc.parent_goids === false);
  }

  function siteRef(id) {
    const s = id && state.proc ? (state.proc.sites || []).find((x) => x.id === id) : null;
    if (!id || !s) return el('span', { class: 'muted', text: id ? 'site ' + id + ' (gone)' : noParents() ? 'an unknown creator (Go < 1.21 records none)' : 'exited / unknown creator' });
    return el('span', null,
      el('button', { class: 'link', type: 'button', 'data-goto': id, title: 'open ' + s.location, text: s.function, on: { click: () => openSite(id) } }),
      ' ', fileLink(s.file, s.line, s.source_url));
  }

  // The drill-down is made of sections, each rebuilt only when its content changed (a
  // leaking site's counts change at every refresh; its frames do not): a refresh keeps
  // the scroll position and any text selected in the stacks.
  function renderDrill() {
    const box = $('drilldown');
    const d = state.drill;
    const s = d.site;
    const scroll = box.scrollTop;
    if (box._site !== s.id || !box._sections) {
      box._site = s.id;
      box._sections = {
        title: el('div', { class: 'drill-title' }),
        head: el('div'),
        facts: el('div'),
        summary: el('div'),
        stacks: el('div', { class: 'stack-list' }),
        refs: el('div'),
      };
      box._stacks = new Map();
      const x = box._sections;
      setKids(box, x.title, x.head, x.facts, el('h3', { text: 'Blocking stacks' }), x.summary, x.stacks, x.refs);
    }
    const x = box._sections;
    const l = s.leak || {};
    const verdictText = proven(s)
      ? 'LEAK: ' + (l.proven_leaked || s.leaked) + ' goroutines proven leaked by the Go runtime'
      : l.suspected
        ? 'LEAK suspected on the ' + l.scale + ' scale: +' + (l.growth_per_second || 0).toFixed(2) + ' goroutines/s' + (l.suspected_for_seconds ? ', for ' + fmtAge(l.suspected_for_seconds) : '')
        : 'no leak suspected';
    const sourceRoot = !!(state.list && state.list.source_root);
    setCell(x.title, s.id + '|' + s.function, () => drillHeader(s.id));
    setCell(x.head, JSON.stringify([s.id, s.function, s.file, s.line, s.source_url, verdictText, verdict(s), sourceRoot]), () => [
      el('div', { class: 'drill-loc' }, el('span', { class: 'muted', text: 'go statement at ' }), locationNode(s.function, s.file, s.line, s.source_url)),
      el('p', { class: 'verdict ' + verdict(s), text: verdictText }),
    ]);
    const facts = [
      ['live', s.live],
      ['waiting', s.waiting],
      ['created / exited since attach', (s.created ?? '-') + ' / ' + (s.exited ?? '-')],
      ['oldest', fmtAge(s.oldest_age_seconds, s.oldest_age_is_lower_bound)],
      ['Δ/min', fmtRate(s.growth_per_minute)],
      ['states', fmtStates(s.states) || '-'],
      ['goroutines start in', s.start_function || '-'],
      ['sample goroutine ids', (s.sample_goids || []).join(' ') || '-'],
    ];
    setCell(x.facts, JSON.stringify(facts), () => el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: String(v) })])));
    const b = d.blocking;
    const stacks = d.stacks === 'read' && b ? b.stacks || [] : [];
    setCell(x.summary, JSON.stringify([d.stacks, b && [b.read, b.unread, b.other_stacks, b.other_goroutines], stacks.length]), () => {
      if (d.stacks === 'requested') return el('p', { class: 'pending', text: "stacks are read at the agent's next refresh… (checking every " + STACK_POLL_MS / 1000 + ' s)' });
      if (!stacks.length) return el('p', { class: 'muted', text: 'no blocked goroutine at this site (no stack to show)' });
      return el('p', { class: 'muted', text: plural(b.read, 'goroutine') + ' read' + (b.unread ? ', ' + b.unread + ' not read' : '') + (b.other_stacks ? '; ' + b.other_stacks + ' more stacks (' + b.other_goroutines + ' goroutines) not shown' : '') });
    });
    // Stack groups by their frames: only their heads (counts) change from one refresh to
    // the next.
    const nodes = stacks.map((st) => {
      const key = JSON.stringify([st.frames, st.truncated, sourceRoot]);
      let node = box._stacks.get(key);
      if (!node) {
        node = stackNode(st);
        box._stacks.set(key, node);
      }
      setCell(node.firstChild, JSON.stringify([st.count, st.states, st.sample_goids, st.truncated]), () => stackHead(st));
      return node;
    });
    const keep = new Set(nodes);
    for (const [k, n] of box._stacks) if (!keep.has(n)) box._stacks.delete(k);
    syncRows(x.stacks, nodes);
    const names = (ids) => ids.map((id) => {
      const t = id && state.proc && (state.proc.sites || []).find((y) => y.id === id);
      return t ? t.location : null;
    });
    setCell(x.refs, JSON.stringify([d.created_by, d.creates, d.contexts, names((d.created_by || []).map((e) => e.from).concat((d.creates || []).map((e) => e.to))), state.proc && state.proc.parent_goids, sourceRoot]), () => [
      el('h3', { text: 'Created by' }),
      refList(d.created_by, (e) => [el('b', { text: String(e.goroutines) }), e.goroutines === 1 ? ' live goroutine created by ' : ' live goroutines created by ', siteRef(e.from)], state.proc && state.proc.parent_goids === false ? 'unknown: this Go version does not record creators' : 'none'),
      el('h3', { text: 'Creates' }),
      refList(d.creates, (e) => [el('b', { text: String(e.goroutines) }), e.goroutines === 1 ? ' live goroutine at ' : ' live goroutines at ', siteRef(e.to)], 'no live goroutine created by this site’s goroutines'),
      el('h3', { text: 'Waits on contexts' }),
      refList(d.contexts, (c) => {
        const ctx = state.proc && (state.proc.contexts || []).find((y) => y.id === c.id);
        return [el('b', { text: String(c.goroutines) }), c.goroutines === 1 ? ' goroutine waits on contexts created at ' : ' goroutines wait on contexts created at ', ctx ? locationNode(ctx.function, ctx.file, ctx.line, ctx.source_url) : locationString(c.location, null),
          el('button', { class: 'link', type: 'button', text: 'show', on: { click: () => focusContext(c.id) } })];
      }, 'none'),
    ]);
    box.scrollTop = scroll;
  }

  function refList(items, render, emptyText) {
    if (!items || !items.length) return el('p', { class: 'muted', text: emptyText });
    return el('ul', { class: 'refs' }, items.map((it) => el('li', null, render(it))));
  }

  // A stack group, like pprof's goroutine?debug=1: "N @ state", then the frames, the
  // blocking one marked with →.
  function stackHead(st) {
    return [
      el('b', { text: String(st.count) }), ' @ ', el('span', { text: fmtStates(st.states) || '?' }),
      (st.sample_goids || []).length ? el('span', { class: 'muted', text: ' · goroutines ' + st.sample_goids.join(' ') + (st.count > st.sample_goids.length ? ' …' : '') }) : null,
      st.truncated ? el('span', { class: 'muted', text: ' · stack truncated' }) : null,
    ];
  }

  function stackNode(st) {
    const frames = (st.frames || []).map((f) =>
      el('li', { class: 'frame' + (f.blocking ? ' blocking' : '') },
        el('span', { class: 'mark', text: f.blocking ? '→' : '' }),
        el('span', { class: 'fn', text: f.function }),
        ' ',
        fileLink(f.file, f.line, f.source_url)));
    return el('div', { class: 'stack' }, el('div', { class: 'stack-head' }), el('ol', { class: 'frames' }, frames));
  }

  // ---- source view -------------------------------------------------------------------

  async function openSource(file, line) {
    const pid = state.pid;
    if (!pid) return;
    state.source = { file, line };
    const box = $('source');
    box.hidden = false;
    setKids(box, sourceHeader(file + ':' + line), el('p', { class: 'muted', text: 'loading…' }));
    try {
      const q = new URLSearchParams({ file, line: String(line), context: '8' });
      const r = await getJSON('/api/v1/processes/' + pid + '/source?' + q.toString());
      if (!state.source || state.source.file !== file || state.source.line !== line) return;
      const d = r.data;
      const lines = (d.lines || []).map((text, i) => {
        const n = d.first_line + i;
        return el('div', { class: 'line' + (n === d.line ? ' highlight' : ''), 'data-line': n },
          el('span', { class: 'ln', text: String(n) }),
          el('span', { class: 'code', text: text }));
      });
      setKids(box,
        sourceHeader(d.file + ':' + d.line),
        d.path && d.path !== d.file ? el('p', { class: 'muted path', text: 'read from ' + d.path }) : null,
        el('div', { class: 'code-box' }, lines));
      // Centre the line in the code box (scrollIntoView would scroll the page too).
      const hl = box.querySelector('.highlight');
      const code = box.querySelector('.code-box');
      if (hl && code) code.scrollTop = Math.max(0, hl.offsetTop - code.offsetTop - code.clientHeight / 2);
    } catch (e) {
      if (!state.source || state.source.file !== file) return;
      setKids(box, sourceHeader(file + ':' + line), el('p', { class: 'error', text: 'cannot show the source: ' + e.message }));
    }
  }

  function sourceHeader(title) {
    return el('div', { class: 'source-head' },
      el('h2', { title, text: shortPath(title) }),
      el('button', { class: 'close', type: 'button', title: 'close (Esc)', text: '×', on: { click: closeSource } }));
  }

  function closeSource() {
    state.source = null;
    const box = $('source');
    box.hidden = true;
    setKids(box);
  }

  function setShowRuntime(on) {
    state.showRuntime = on;
    $('show-runtime').checked = on;
    state.graphSig = '';
    renderSites();
    renderTopology();
  }

  // ---- wiring ------------------------------------------------------------------------

  function init() {
    renderLegend();
    const h = readHash();
    state.pid = h.pid;
    if (h.site) {
      state.site = h.site;
      $('drilldown').hidden = false;
      setKids($('drilldown'), drillHeader(h.site), el('p', { class: 'muted', text: 'loading…' }));
    }
    $('search').addEventListener('input', (e) => {
      state.search = e.target.value.trim();
      renderSites();
      renderTopology();
      renderContexts();
    });
    $('show-runtime').addEventListener('change', (e) => setShowRuntime(e.target.checked));
    // Every file:line link of the page (they come and go with refreshes: delegated).
    document.addEventListener('click', (e) => {
      const a = e.target.closest && e.target.closest('a.src');
      if (!a) return;
      e.preventDefault();
      openSource(a.dataset.file, Number(a.dataset.line));
    });
    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape') return;
      if (!$('source').hidden) closeSource();
      else if (state.site) closeDrill();
    });
    refresh();
  }

  init();
})();
