// The web console of `esrc serve` in headless Chromium (run by
// console_test.sh, which installs puppeteer-core).  Two servers on one store
// where `esrc demo` ran:
//   --open:   the demo's streams and events render (data pretty-printed,
//             times in the browser's time zone), a live append shows in the
//             tail within a second, subscriptions show their lag, verify says
//             ok, and a stream key, type and data made of HTML render as text;
//             no script error, no Content-Security-Policy violation.
//   --tokens: the page asks for a token, keeps it in sessionStorage, sees only
//             the token's prefix, follows the feed with it (access_token),
//             and is refused the subscriptions.
// usage: node console_test.mjs ESRC TMPDIR
import { spawn, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

const [esrc, tmp] = process.argv.slice(2);
const store = 'lmdb:' + join(tmp, 'store');
const tokens = join(tmp, 'tokens');
const XSS = '<img src=x onerror=alert(1)>';
const TZ = 'Asia/Kolkata'; // UTC+05:30 all year: local time differs from UTC by a half hour
let n = 0;
let fails = 0;
const servers = [];

function ok(cond, name, detail) {
  n++;
  if (cond) {
    console.log(`ok ${n}: ${name}`);
  } else {
    fails++;
    console.log(`FAIL ${n}: ${name}${detail === undefined ? '' : '\n  ' + detail}`);
  }
}

const run = (args, input) => execFileSync(esrc, ['--store', store, ...args], { input, encoding: 'utf8' });

function curl(args) {
  return execFileSync('curl', ['-s', '-S', '--fail-with-body', ...args], { encoding: 'utf8' });
}

function serve(extra) {
  return new Promise((resolve, reject) => {
    const p = spawn(esrc, ['--store', store, 'serve', '--listen', '127.0.0.1:0', ...extra], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    servers.push(p);
    let out = '';
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/[^ ]+)/.exec(out);
      if (m) resolve({ url: m[1], proc: p, log: () => err });
    });
    p.on('exit', (code) => reject(new Error(`esrc serve exited ${code}: ${err}`)));
  });
}

// SIGTERM; a clean exit (0) also means no sanitizer report in a sanitizer build
async function stop(s) {
  s.proc.removeAllListeners('exit');
  const done = new Promise((r) => s.proc.on('exit', (code, sig) => r(code === null ? sig : code)));
  s.proc.kill('SIGTERM');
  const code = await done;
  ok(code === 0, 'the server stops cleanly', `exit ${code}: ${s.log().split('\n').slice(-20).join('\n  ')}`);
}

const text = (page, sel) => page.$eval(sel, (e) => e.textContent);
const texts = (page, sel) => page.$$eval(sel, (es) => es.map((e) => e.textContent));

// wait for a condition in the page; false (not a throw) when it does not come
async function until(page, fn, timeout, ...args) {
  try {
    await page.waitForFunction(fn, { timeout, polling: 'mutation' }, ...args);
    return true;
  } catch (_) {
    return false;
  }
}

async function newPage(browser, problems) {
  const page = await browser.newPage();
  await page.emulateTimezone(TZ);
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('dialog', async (d) => {
    problems.push('a dialog opened: ' + d.message());
    await d.dismiss();
  });
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/.test(m.text())) problems.push('console: ' + m.text());
  });
  return page;
}

async function openPhase(browser) {
  const s = await serve(['--open']);
  const U = s.url;
  const problems = [];
  const page = await newPage(browser, problems);

  // the headers of the page
  const resp = await page.goto(U + '/', { waitUntil: 'load' });
  const h = resp.headers();
  ok(/default-src 'self'/.test(h['content-security-policy'] || ''), "CSP default-src 'self'", h['content-security-policy']);
  ok(!/unsafe-inline/.test(h['content-security-policy'] || ''), 'CSP allows no inline script');
  ok(h['x-content-type-options'] === 'nosniff', 'X-Content-Type-Options: nosniff');

  // streams: the demo's, and the hostile key as text
  ok(await until(page, () => document.querySelectorAll('#streams a.key').length >= 2, 5000), 'the streams page lists streams');
  const keys = await texts(page, '#streams a.key');
  ok(keys.includes('company/1'), "the demo's stream company/1 is listed", JSON.stringify(keys));
  ok(keys.includes(XSS), 'the hostile key is listed as its text', JSON.stringify(keys));
  ok((await page.$$('img')).length === 0, 'no <img> element came from the key');

  // by prefix
  await page.goto(U + '/#/streams?prefix=company%2F');
  ok(await until(page, () => {
    const ks = [...document.querySelectorAll('#streams a.key')].map((a) => a.textContent);
    return ks.length === 1 && ks[0] === 'company/1';
  }, 5000), 'a prefix lists only the streams under it');

  // a stream: events with pretty data and local times
  await page.click('#streams a.key');
  ok(await until(page, () => document.querySelectorAll('#events tbody tr').length === 13, 5000), "company/1's 13 events show");
  ok((await text(page, '#stream-key')) === 'company/1', 'the stream page is titled with its key');
  const first = await page.$eval('#events tbody tr', (tr) => ({
    seq: tr.cells[0].textContent,
    time: tr.cells[2].textContent,
    utc: tr.cells[2].title,
    type: tr.cells[3].textContent,
    data: tr.cells[4].querySelector('pre').textContent,
  }));
  ok(first.seq === '1' && first.type === 'InsertGroup', 'the first event is seq 1, InsertGroup', JSON.stringify(first));
  ok(first.time === '2026-01-05 14:30:00.000000 UTC+05:30', `its time is in the browser's zone (${TZ})`, first.time);
  ok(first.utc === '2026-01-05T09:00:00.000000Z', 'with the UTC time in its title', first.utc);
  ok(first.data === '{\n  "v": 1,\n  "group": 1,\n  "name": "Simpsons"\n}', 'its data is pretty-printed JSON', JSON.stringify(first.data));

  // verify
  await page.click('#verify');
  ok(await until(page, () => /^chain ok/.test(document.querySelector('#verify-result').textContent), 5000), 'verify says the chain is ok');
  ok((await text(page, '#verify-result')) === 'chain ok: 13 events checked', '  13 events checked', await text(page, '#verify-result'));

  // the hostile stream's page: key, type and data as text
  await page.goto(U + '/#/streams');
  await until(page, () => document.querySelectorAll('#streams a.key').length >= 2, 5000);
  const links = await page.$$('#streams a.key');
  for (const a of links) if ((await a.evaluate((e) => e.textContent)) === XSS) await a.click();
  ok(await until(page, () => document.querySelectorAll('#events tbody tr').length === 1, 5000), "the hostile stream's page opens");
  ok((await text(page, '#stream-key')) === XSS, '  its key is the title, as text');
  const row = await page.$eval('#events tbody tr', (tr) => ({ type: tr.cells[3].textContent, data: tr.cells[4].textContent }));
  ok(row.type === '<b>bold</b>', '  its type is text', row.type);
  ok(row.data.startsWith('<script>alert(2)</script>'), '  its data is text', row.data);
  const injected = await page.evaluate(() => document.querySelectorAll('main img, main b, main script').length);
  ok(injected === 0, '  no element came from the store');

  // subscriptions with their lag
  const info = JSON.parse(curl([U + '/subscriptions/search']));
  await page.goto(U + '/#/subscriptions');
  ok(await until(page, () => document.querySelectorAll('#subs tbody tr').length === 1, 5000), 'the subscription shows');
  const sub = await page.$eval('#subs tbody tr', (tr) => [...tr.cells].map((c) => c.textContent));
  ok(sub[0] === 'search', '  by name', JSON.stringify(sub));
  ok(sub[4] === String(info.behind) && info.behind === 14, `  with its lag (${info.behind} events behind)`, JSON.stringify(sub));
  ok(sub[2] === '0' && sub[3] === String(info.head), '  its checkpoint and head', JSON.stringify(sub));

  // the live tail: an append shows within a second
  await page.goto(U + '/#/live');
  ok(await until(page, () => document.querySelector('#live-status').textContent === 'live', 5000), 'the live tail connects');
  const t0 = Date.now();
  curl(['-X', 'POST', '-d', '{"type":"Live","data":{"hello":"world"}}', U + '/streams/live%2F1']);
  const came = await until(page, () => {
    const r = document.querySelector('#live tbody tr');
    return r && r.cells[2].textContent === 'live/1';
  }, 1000);
  ok(came, `a live append shows in the tail within a second (${Date.now() - t0} ms)`);
  if (came) {
    const live = await page.$eval('#live tbody tr', (tr) => [...tr.cells].map((c) => c.textContent));
    ok(live[4] === 'Live' && live[5] === '{\n  "hello": "world"\n}', '  with its type and pretty data', JSON.stringify(live));
    ok(/ UTC\+05:30$/.test(live[1]), '  and a local time', live[1]);
  }
  // a second one, to see the tail keep going (newest first)
  curl(['-X', 'POST', '-d', '{"type":"Live","data":"two"}', U + '/streams/live%2F1']);
  ok(await until(page, () => document.querySelectorAll('#live tbody tr').length === 2 && document.querySelector('#live tbody tr').cells[3].textContent === '2', 1000), '  and the next one above it');

  ok(problems.length === 0, 'no script error, dialog or CSP violation', problems.join('\n  '));
  await page.close();
  await stop(s);
}

async function tokenPhase(browser) {
  const reader = run(['token', 'create', '--tokens', tokens, '--name', 'reader', '--rights', 'read', '--prefix', 'company/']).trim();
  const writer = run(['token', 'create', '--tokens', tokens, '--name', 'writer', '--rights', 'append', '--prefix', '']).trim();
  const s = await serve(['--tokens', tokens]);
  const U = s.url;
  const problems = [];
  const page = await newPage(browser, problems);
  await page.goto(U + '/');
  ok(await until(page, () => !document.querySelector('#login').hidden, 5000), 'with tokens, the page asks for one');
  await page.type('#token', reader);
  await page.click('#login button[type=submit]');
  ok(await until(page, () => document.querySelectorAll('#streams a.key').length >= 1, 5000), '  and lists streams with it');
  const keys = await texts(page, '#streams a.key');
  ok(JSON.stringify(keys) === '["company/1"]', "  only the token's prefix", JSON.stringify(keys));
  const stored = await page.evaluate(() => [sessionStorage.getItem('esrc.token'), localStorage.length]);
  ok(stored[0] === reader && stored[1] === 0, '  kept in sessionStorage only');
  ok((await text(page, '#who')) === 'token ' + reader.split('_')[1], '  the header shows its public id only');

  // the feed with access_token: a live append to the token's prefix shows
  await page.goto(U + '/#/live');
  ok(await until(page, () => document.querySelector('#live-status').textContent === 'live', 5000), '  the live tail connects with the token');
  curl(['-H', 'Authorization: Bearer ' + writer, '-X', 'POST', '-d', '{"type":"Other","data":"not mine"}', U + '/streams/other']);
  curl(['-H', 'Authorization: Bearer ' + writer, '-X', 'POST', '-d', '{"type":"Mine","data":"x"}', U + '/streams/company%2F1']);
  ok(await until(page, () => {
    const r = document.querySelector('#live tbody tr');
    return r && r.cells[4].textContent === 'Mine';
  }, 1000), '  and an append under its prefix shows within a second');
  const streams = await page.$$eval('#live tbody tr', (rs) => rs.map((r) => r.cells[2].textContent));
  ok(JSON.stringify(streams) === '["company/1"]', '  but not one outside it', JSON.stringify(streams));

  // no admin right: the subscriptions are refused, and the page says so
  await page.goto(U + '/#/subscriptions');
  ok(await until(page, () => /^Forbidden/.test(document.querySelector('#error').textContent), 5000), '  subscriptions: forbidden');
  ok(problems.length === 0, 'no script error, dialog or CSP violation', problems.join('\n  '));
  await page.close();
  await stop(s); // a feed's access log line is written when it ends
  ok(s.log().includes('"target":"/log/feed?from=end&access_token=REDACTED"'), 'the feed was asked with access_token', s.log());
  ok(!s.log().includes(reader.split('_')[2]), '  and the access log never shows the token');
}

async function main() {
  run(['demo']);
  run(['append', XSS, '<b>bold</b>', '<script>alert(2)</script><img src=x onerror=alert(3)>']);
  const s0 = await serve(['--open']);
  curl(['-X', 'POST', '-d', '{"name":"search","start":"beginning"}', s0.url + '/subscriptions']);
  await stop(s0);

  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    await openPhase(browser);
    await tokenPhase(browser);
  } finally {
    await browser.close();
  }
  console.log(`${n - fails} of ${n} passed`);
  process.exitCode = fails ? 1 : 0;
}

main().catch((e) => {
  console.log('FAIL: ' + (e && e.stack ? e.stack : e));
  for (const p of servers) p.kill('SIGKILL');
  process.exitCode = 1;
});
