// Drives the workbench page (agent/src/export/web) of a live agent in Debian's chromium,
// the way a person would, and checks what it shows. Run by tests/tests/workbench.rs:
//
//   node workbench.mjs BASE_URL OUT_DIR EXPECTATIONS_JSON
//
// EXPECTATIONS_JSON:
//   {"pid": N,                       // the leaky process
//    "site_file": "tests/fixtures/go/leaky/main.go", "site_line": 28,   // suffix of the file
//    "blocking_function": "main.waitForReply", "blocking_line": 21,
//    "contexts": {"pid": M, "site_file": "...contexts/main.go", "site_line": 89,
//                 "waiters": 2} | null}
//
// Fails (exit 1, one line per failure) on: a console error or an uncaught exception in
// the page, any request to a host other than the agent, or anything the page should show
// and does not. Screenshots (1366×768): OUT_DIR/overview.png, drilldown.png, source.png,
// contexts.png.
import fs from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const [base, outDir, expectText] = process.argv.slice(2);
if (!base || !outDir || !expectText) {
  console.error('usage: node workbench.mjs BASE_URL OUT_DIR EXPECTATIONS_JSON');
  process.exit(2);
}
const want = JSON.parse(expectText);
const agent = new URL(base);
fs.mkdirSync(outDir, { recursive: true });

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const problems = []; // console errors, page errors, foreign requests: checked at the end
const requests = [];
const step = (msg) => console.log('· ' + msg);

class Failure extends Error {}
function check(cond, msg) {
  if (!cond) throw new Failure(msg);
}

function isAgent(u) {
  if (u.startsWith('data:') || u === 'about:blank') return true;
  let url;
  try {
    url = new URL(u);
  } catch {
    return false;
  }
  return url.host === agent.host && ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function shot(page, name) {
  const file = path.join(outDir, name);
  await page.screenshot({ path: file });
  step('screenshot ' + file);
}

const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--headless=new', '--no-first-run', '--no-default-browser-check', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  defaultViewport: { width: 1366, height: 768 },
});
let code = 0;
try {
  const page = await browser.newPage();
  await page.setRequestInterception(true);
  page.on('request', (r) => {
    const u = r.url();
    requests.push(u);
    if (isAgent(u)) {
      r.continue();
    } else {
      problems.push('request to a host other than the agent: ' + u);
      r.abort('blockedbyclient');
    }
  });
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push('console error: ' + m.text() + ' (' + JSON.stringify(m.location()) + ')');
  });
  page.on('pageerror', (e) => problems.push('uncaught exception in the page: ' + (e && e.message)));
  page.on('requestfailed', (r) => {
    if (isAgent(r.url())) problems.push('request failed: ' + r.url() + ': ' + (r.failure() && r.failure().errorText));
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && isAgent(r.url())) problems.push('HTTP ' + r.status() + ' for ' + r.url());
  });

  step('open ' + base);
  const opened = Date.now();
  await page.goto(base, { waitUntil: 'load' });

  // The process picker lists the leaky process; pick it.
  const procSel = `#processes li[data-pid="${want.pid}"] button`;
  await page.waitForSelector(procSel, { timeout: 20000 }).catch(() => {
    throw new Failure(`process ${want.pid} is not in the picker (#processes)`);
  });
  const pickerText = await page.$eval(procSel, (b) => b.innerText.replace(/\s*\n\s*/g, ' | '));
  check(/1 suspect/.test(pickerText), `picker entry of ${want.pid} does not say "1 suspect": ${pickerText}`);
  check(pickerText.includes('go1.'), `picker entry of ${want.pid} has no Go version: ${pickerText}`);
  const firstPid = await page.$eval('#processes li[data-pid]', (li) => Number(li.dataset.pid));
  step(`picker: ${pickerText.trim()} (first: pid ${firstPid})`);
  await page.click(procSel);

  // The suspected site is the first row of the sites table, with its exact file:line.
  const rows = '#sites tbody tr[data-site-id]';
  const first = await waitFor(page, 'the leaking site first in #sites', 30000, (file, line) => {
    const tr = document.querySelector('#sites tbody tr[data-site-id]');
    if (!tr) return null;
    const a = tr.children[5].querySelector('[data-file]');
    if (!a || !a.dataset.file.endsWith('/' + file) || Number(a.dataset.line) !== line) return null;
    return {
      id: tr.dataset.siteId,
      cls: tr.className,
      leak: tr.children[0].textContent.trim(),
      live: Number(tr.children[1].textContent),
      created: tr.children[5].textContent.trim(),
      blocked: tr.children[6].textContent.trim(),
      text: a.textContent,
    };
  }, want.site_file, want.site_line).catch(async (e) => {
    const rowsNow = await page.$$eval('#sites tbody tr[data-site-id]', (trs) => trs.slice(0, 3).map((tr) => [...tr.children].map((td) => td.textContent.trim()).join(' | ')));
    throw new Failure(`${e.message}: want ${want.site_file}:${want.site_line} first, the table starts with ${JSON.stringify(rowsNow)}`);
  });
  step(`first site row: ${JSON.stringify(first)}`);
  check(/\bsuspect\b|\bproven\b/.test(first.cls), `the first row is not marked as a suspect: class "${first.cls}"`);
  check(first.leak !== '-' && first.leak !== '', `the first row has no LEAK scale: "${first.leak}"`);
  check(first.text.endsWith(want.site_file.split('/').slice(-2).join('/') + ':' + want.site_line), `CREATED AT shows "${first.text}"`);
  check(first.created.startsWith('main.handleRequest'), `CREATED AT does not name main.handleRequest: "${first.created}"`);
  check(first.blocked.startsWith(want.blocking_function) && first.blocked.endsWith(':' + want.blocking_line), `BLOCKED AT is "${first.blocked}"`);
  check(first.live > 0, 'the leaking site has no live goroutine');

  // The topology shows it as a suspected node, with a "created by" edge into it.
  const node = await page.$(`#topology g.node[data-site-id="${first.id}"]`);
  check(node, `no node for ${first.id} in #topology`);
  const nodeCls = await node.evaluate((n) => n.getAttribute('class'));
  check(/\bsuspect\b|\bproven\b/.test(nodeCls), `topology node of the leak is not coloured as a suspect: ${nodeCls}`);
  const edgeLabels = await page.$$eval('#topology .edge-label', (ts) => ts.map((t) => t.textContent));
  check(edgeLabels.length > 0, 'no "created by" edge in #topology');
  const unknown = await page.$$eval('#topology g.node.pseudo', (ns) => ns.map((n) => n.textContent));
  check(unknown.some((t) => t.includes('exited / unknown creator')), 'no "exited / unknown creator" node: the leak\'s creators exit at once');

  // The search box filters; runtime sites are hidden until asked for.
  const shownBefore = await page.$$eval(rows, (r) => r.length);
  await page.type('#search', 'zz-no-such-site');
  await waitFor(page, 'the search to hide every site', 3000, (sel) => (document.querySelectorAll(sel).length === 0 ? true : null), rows);
  await page.$eval('#search', (i) => {
    i.value = 'handleRequest';
    i.dispatchEvent(new Event('input'));
  });
  const matched = await page.$$eval(rows, (r) => r.map((x) => x.textContent));
  check(matched.length >= 1 && matched.every((t) => t.includes('handleRequest')), `search "handleRequest" shows ${JSON.stringify(matched)}`);
  await page.$eval('#search', (i) => {
    i.value = '';
    i.dispatchEvent(new Event('input'));
  });
  check(!(await page.$$eval(rows, (r) => r.some((x) => x.classList.contains('system')))), 'runtime sites shown by default');
  await page.click('#show-runtime');
  const withRuntime = await page.$$eval(rows, (r) => r.filter((x) => x.classList.contains('system')).length);
  check(withRuntime > 0, 'the "show runtime sites" toggle shows no runtime site');
  check((await page.$$(`#topology g.node[data-site-id]`)).length > 2, 'runtime sites are not expanded in the topology');
  await page.click('#show-runtime');
  check((await page.$$eval(rows, (r) => r.length)) === shownBefore, 'hiding the runtime sites again changed the table');
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot(page, 'overview.png');

  // Click the row: the drill-down shows its goroutines by blocking stack, the blocking
  // frame marked.
  await page.click(`#sites tbody tr[data-site-id="${first.id}"] td:nth-child(2)`);
  const frame = await waitFor(page, 'the blocking stacks in #drilldown', 30000, () => {
    const d = document.getElementById('drilldown');
    if (!d || d.hidden) return null;
    const f = d.querySelector('.stack .frame.blocking');
    if (!f) return null;
    const a = f.querySelector('[data-file]');
    return {
      mark: f.querySelector('.mark').textContent,
      fn: f.querySelector('.fn').textContent,
      file: a && a.dataset.file,
      line: a && Number(a.dataset.line),
      head: f.closest('.stack').querySelector('.stack-head').textContent,
      frames: [...f.closest('.frames').children].map((li) => li.textContent),
      text: d.textContent,
    };
  });
  step(`blocking frame: ${frame.mark} ${frame.fn} ${frame.file}:${frame.line}; stack: ${frame.head}`);
  check(frame.mark === '→', `the blocking frame is not marked with →: "${frame.mark}"`);
  check(frame.fn === want.blocking_function, `the blocking frame is ${frame.fn}, not ${want.blocking_function}`);
  check(frame.file && frame.file.endsWith('/' + want.site_file) && frame.line === want.blocking_line, `the blocking frame is at ${frame.file}:${frame.line}`);
  check(/chan receive/.test(frame.head), `the stack group does not say "chan receive": ${frame.head}`);
  check(frame.frames.some((t) => t.startsWith('runtime.gopark')), 'runtime.gopark is not among the frames');
  check(frame.text.includes('exited / unknown creator'), 'the drill-down does not say who created the goroutines (exited / unknown creator)');
  const selected = await page.$eval(`#sites tbody tr[data-site-id="${first.id}"]`, (tr) => tr.classList.contains('selected'));
  check(selected, 'the clicked row is not marked selected');
  await shot(page, 'drilldown.png');

  // A refresh (every 5 s) keeps the selection and the same DOM: the row is not rebuilt.
  await page.$eval(`#sites tbody tr[data-site-id="${first.id}"]`, (tr) => (tr.__kept = 1));
  await page.$eval('#drilldown .frame.blocking', (f) => (f.__kept = 1));
  const countBefore = await page.$eval('#drilldown .stack-head b', (b) => Number(b.textContent));
  const before = await page.$eval('#status', (s) => s.textContent);
  await waitFor(page, 'an auto-refresh', 12000, (b) => (document.getElementById('status').textContent !== b ? true : null), before);
  const kept = await page.$eval(`#sites tbody tr[data-site-id="${first.id}"]`, (tr) => [tr.__kept === 1, tr.classList.contains('selected')]);
  check(kept[0], 'the auto-refresh rebuilt the site rows');
  check(kept[1], 'the auto-refresh lost the selection');
  check(!(await page.$eval('#drilldown', (d) => d.hidden)), 'the auto-refresh closed the drill-down');
  const frameKept = await page.$eval('#drilldown .frame.blocking', (f) => f.__kept === 1);
  check(frameKept, 'the auto-refresh rebuilt the stack frames of the drill-down');
  const countAfter = await page.$eval('#drilldown .stack-head b', (b) => Number(b.textContent));
  step(`auto-refresh kept the rows and frames; stack count ${countBefore} → ${countAfter}`);

  // The source view of the blocking frame, then of the go statement: the line asked for is
  // highlighted.
  await page.click('#drilldown .frame.blocking a.src');
  const blockSrc = await sourceShown(page, want.blocking_line);
  check(blockSrc.text.includes('<-ch'), `source line ${want.blocking_line} is "${blockSrc.text}"`);
  await page.click('#source .close');
  await page.click('#drilldown .drill-loc a.src');
  const goSrc = await sourceShown(page, want.site_line);
  check(goSrc.text.includes('go ' + want.blocking_function.replace(/^main\./, '')), `source line ${want.site_line} is "${goSrc.text}"`);
  step(`source view: line ${goSrc.line} highlighted: ${goSrc.text.trim()}`);
  await shot(page, 'source.png');
  await page.keyboard.press('Escape');
  check(await page.$eval('#source', (s) => s.hidden), 'Escape does not close the source view');

  // The contexts process: its context sites, and the goroutines waiting on them.
  if (want.contexts) {
    const c = want.contexts;
    await page.keyboard.press('Escape');
    await page.click(`#processes li[data-pid="${c.pid}"] button`);
    const row = await waitFor(page, 'the context site in #contexts', 30000, (file, line) => {
      for (const tr of document.querySelectorAll('#contexts tbody tr[data-site-id]')) {
        const a = tr.children[5].querySelector('[data-file]');
        if (a && a.dataset.file.endsWith('/' + file) && Number(a.dataset.line) === line) {
          return { id: tr.dataset.siteId, cells: [...tr.children].map((td) => td.textContent.trim()) };
        }
      }
      return null;
    }, c.site_file, c.site_line);
    step(`context row: ${JSON.stringify(row)}`);
    check(Number(row.cells[1]) >= c.waiters, `UNCANCELLED of the context site is ${row.cells[1]}`);
    check(Number(row.cells[4]) === c.waiters, `WAITING of the context site is ${row.cells[4]}, not ${c.waiters}`);
    const waits = await page.$$eval('#context-graph .edge.wait', (es) => es.map((e) => e.textContent));
    check(waits.some((t) => t.includes(c.waiters + ' waiting')), `no "${c.waiters} waiting" edge in the contexts graph: ${JSON.stringify(waits)}`);
    check((await page.$$('#context-graph g.node[data-site-id]')).length >= 1, 'no goroutine site (waiter) in the contexts graph');
    await page.$eval('#contexts', (t) => t.closest('.card').scrollIntoView());
    await shot(page, 'contexts.png');
  }

  const apiCalls = requests.filter((u) => u.includes('/api/v1/'));
  check(apiCalls.length > 0, 'the page made no API request');
  // One polling loop (every 5 s, plus one per process picked): not two.
  const polls = requests.filter((u) => new URL(u).pathname === '/api/v1/processes').length;
  const most = Math.ceil((Date.now() - opened) / 5000) + 3;
  check(polls <= most, `the page polled /api/v1/processes ${polls} times in ${((Date.now() - opened) / 1000).toFixed(1)} s`);
  step(`${requests.length} requests, all to ${agent.host}; ${apiCalls.length} API calls`);
} catch (e) {
  code = 1;
  if (e instanceof Failure) console.error('FAIL: ' + e.message);
  else console.error('FAIL: ' + (e && e.stack ? e.stack : e));
} finally {
  await browser.close().catch(() => {});
}
for (const p of problems) {
  console.error('FAIL: ' + p);
  code = 1;
}
if (code === 0) console.log('workbench: all checks passed');
process.exit(code);

// Polls fn (run in the page with args) until it returns non-null.
async function waitFor(page, what, timeout, fn, ...args) {
  try {
    const h = await page.waitForFunction(fn, { timeout, polling: 200 }, ...args);
    return await h.jsonValue();
  } catch (e) {
    if (e && e.name === 'TimeoutError') throw new Failure('timed out (' + timeout / 1000 + ' s) waiting for ' + what);
    throw e;
  }
}

async function sourceShown(page, line) {
  const got = await waitFor(page, `the source view of line ${line}`, 10000, (l) => {
    const s = document.getElementById('source');
    if (!s || s.hidden) return null;
    const err = s.querySelector('.error');
    if (err) return { error: err.textContent };
    const h = s.querySelectorAll('.highlight');
    if (h.length !== 1) return null;
    const n = Number(h[0].dataset.line);
    if (n !== l) return null;
    return { line: n, number: h[0].querySelector('.ln').textContent, text: h[0].querySelector('.code').textContent };
  }, line).catch(async (e) => {
    const now = await page.$$eval('#source .highlight', (h) => h.map((x) => x.dataset.line)).catch(() => []);
    throw new Failure(e.message + ' (highlighted now: ' + JSON.stringify(now) + ')');
  });
  check(!got.error, 'the source view says: ' + got.error);
  check(got.line === line && got.number === String(line), `the highlighted line is ${got.number}, not ${line}`);
  return got;
}
