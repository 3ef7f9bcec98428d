// esrc console: browse streams, read events, follow the log live, watch
// subscriptions and verify chains, through the JSON API of `esrc serve`
// (doc/server.md).  Plain JavaScript, no dependencies, no build step.
//
// Everything that comes from the store (keys, types, data, subscription
// names, error messages) reaches the page as text nodes (el() below), never
// as markup: a stream named <img src=x onerror=…> shows as those characters.
// The Content-Security-Policy of the page forbids inline script as a second
// wall.
'use strict';

(() => {
  const TOKEN_KEY = 'esrc.token';
  const PAGE = 50; // events per stream page
  const LIVE_MAX = 1000; // rows kept in the live tail

  const $ = (id) => document.getElementById(id);

  // An element with properties and children; a string child is a text node.
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) {
      if (k === undefined || k === null || k === false) continue;
      e.append(typeof k === 'string' || typeof k === 'number' ? String(k) : k);
    }
    return e;
  }

  // ---- the token ----

  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  function showWho() {
    const t = token();
    // a token is est_ID_SECRET: show only its public id
    $('who').textContent = t ? 'token ' + (t.split('_')[1] || '?') : '';
    $('signout').hidden = !t;
  }

  function showLogin(why) {
    $('login-why').textContent = why || 'This server needs a token.';
    $('login').hidden = false;
    $('token').focus();
  }

  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $('token').value = '';
    $('login').hidden = true;
    showWho();
    render();
  });

  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showWho();
    render();
  });

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const r = await fetch(path, { headers, cache: 'no-store' });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const msg = (body && body.message) || r.statusText;
      if (r.status === 401) showLogin(t ? 'The token was refused: ' + msg : msg);
      throw new ApiError(r.status, body && body.error, msg);
    }
    return body;
  }

  function showError(e) {
    const box = $('error');
    if (!e) {
      box.hidden = true;
      box.textContent = '';
      return;
    }
    let text = e.message || String(e);
    if (e.status === 403) text = 'Forbidden: ' + text + ' (the token does not reach this).';
    box.textContent = text;
    box.hidden = false;
  }

  // ---- keys as bytes ----
  // A key is bytes: the API gives "stream" (UTF-8 text) or "stream_b64".
  // Paths carry it percent-encoded, one path segment, as the server wants.

  const utf8 = new TextEncoder();
  const strict = new TextDecoder('utf-8', { fatal: true });

  function bytesOf(obj, field) {
    if (typeof obj[field] === 'string') return utf8.encode(obj[field]);
    const b64 = obj[field + '_b64'];
    if (typeof b64 === 'string') return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Uint8Array(0);
  }

  function escBytes(bytes) {
    let s = '';
    for (const b of bytes) {
      const c = String.fromCharCode(b);
      s += /[A-Za-z0-9\-._~]/.test(c) ? c : '%' + b.toString(16).toUpperCase().padStart(2, '0');
    }
    return s;
  }

  // A percent-encoded segment back to bytes; null when it is not one.
  function unescBytes(seg) {
    const out = [];
    for (let i = 0; i < seg.length; i++) {
      const c = seg.charCodeAt(i);
      if (seg[i] === '%') {
        const h = seg.slice(i + 1, i + 3);
        if (!/^[0-9A-Fa-f]{2}$/.test(h)) return null;
        out.push(parseInt(h, 16));
        i += 2;
      } else if (c < 0x80) {
        out.push(c);
      } else {
        out.push(...utf8.encode(seg[i]));
      }
    }
    return new Uint8Array(out);
  }

  function label(bytes) {
    try {
      return strict.decode(bytes);
    } catch (_) {
      return escBytes(bytes) + ' (not UTF-8)';
    }
  }

  const streamHref = (bytes) => '#/stream/' + escBytes(bytes);

  // ---- values ----

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  // µs since the epoch → "2026-01-05 10:00:00.000000 UTC+01:00", local time.
  function localTime(us) {
    if (typeof us !== 'number' || !us) return '';
    const d = new Date(Math.floor(us / 1000));
    const off = -d.getTimezoneOffset();
    const sign = off < 0 ? '-' : '+';
    const frac = pad(((us % 1000000) + 1000000) % 1000000, 6);
    return (
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${frac} ` +
      `UTC${sign}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`
    );
  }

  function timeCell(ev) {
    return el('td', { class: 'time', title: ev.time || '' }, localTime(ev.time_us));
  }

  // data or meta: pretty JSON when it parses, else the text, else base64
  function payload(ev, field) {
    if (typeof ev[field] === 'string') {
      const text = ev[field];
      if (text === '') return null;
      try {
        const v = JSON.parse(text);
        return el('pre', { class: 'json' }, JSON.stringify(v, null, 2));
      } catch (_) {
        return el('pre', { class: 'text' }, text);
      }
    }
    if (typeof ev[field + '_b64'] === 'string')
      return el('pre', { class: 'b64' }, 'base64: ' + ev[field + '_b64']);
    return null;
  }

  function dataCell(ev) {
    const data = payload(ev, 'data');
    const meta = payload(ev, 'meta');
    return el(
      'td',
      { class: 'data' },
      data || el('span', { class: 'muted' }, '(no data)'),
      meta && el('div', { class: 'muted' }, 'meta'),
      meta
    );
  }

  const typeText = (ev) => label(bytesOf(ev, 'type'));

  // ---- pages ----

  let gen = 0; // the current page's number: late answers of older pages are dropped
  let cleanups = [];

  function page(...kids) {
    const main = $('main');
    main.replaceChildren(...kids);
    return main;
  }

  // A "More" button that fetches `next` (a path the server gave) and hands
  // the answer to `add`, until there is no next.
  function moreButton(first, prefix, add) {
    const b = el('button', { type: 'button', class: 'more' }, 'More');
    let next = first;
    const my = gen;
    const sync = () => {
      b.hidden = !(typeof next === 'string' && next.startsWith(prefix));
    };
    b.addEventListener('click', async () => {
      b.disabled = true;
      try {
        const body = await api(next);
        if (my !== gen) return;
        add(body);
        next = body.next;
      } catch (e) {
        showError(e);
      }
      b.disabled = false;
      sync();
    });
    sync();
    return b;
  }

  async function streamsPage(q) {
    const my = gen;
    const prefix = q.get('prefix') || '';
    const input = el('input', { id: 'prefix', value: prefix, placeholder: 'key prefix', size: 30 });
    const form = el(
      'form',
      {
        class: 'toolbar',
        on: {
          submit: (e) => {
            e.preventDefault();
            location.hash = '#/streams' + (input.value ? '?prefix=' + encodeURIComponent(input.value) : '');
          },
        },
      },
      input,
      el('button', { type: 'submit' }, 'List')
    );
    const tbody = el('tbody');
    const table = el('table', { id: 'streams' }, el('thead', {}, el('tr', {}, el('th', {}, 'Stream'), el('th', {}, 'Head'))), tbody);
    page(el('h1', {}, 'Streams'), form, el('p', { class: 'muted' }, 'Loading…'));
    const body = await api('/streams?limit=100' + (prefix ? '&prefix=' + encodeURIComponent(prefix) : ''));
    if (my !== gen) return;
    const add = (b) => {
      for (const s of b.streams) {
        const bytes = bytesOf(s, 'stream');
        tbody.append(
          el('tr', {}, el('td', {}, el('a', { class: 'key', href: streamHref(bytes) }, label(bytes))), el('td', { class: 'num' }, s.head))
        );
      }
    };
    add(body);
    page(
      el('h1', {}, 'Streams'),
      form,
      body.streams.length ? table : el('p', { class: 'muted', id: 'no-streams' }, prefix ? 'No stream under this prefix.' : 'No streams.'),
      moreButton(body.next, '/streams?', add)
    );
  }

  async function streamPage(seg, q) {
    const my = gen;
    const bytes = unescBytes(seg);
    if (!bytes || !bytes.length) throw new Error('not a stream key: ' + seg);
    const path = '/streams/' + escBytes(bytes);
    const backward = q.get('direction') === 'backward';
    const verifyOut = el('span', { id: 'verify-result' });
    const verify = el('button', { type: 'button', id: 'verify' }, 'Verify chain');
    verify.addEventListener('click', async () => {
      verify.disabled = true;
      verifyOut.className = 'muted';
      verifyOut.textContent = 'verifying…';
      try {
        const v = await api(path + '/verify');
        if (v.ok) {
          verifyOut.className = 'ok';
          verifyOut.textContent = `chain ok: ${v.events_checked} events checked`;
        } else {
          const b = v.bad || {};
          verifyOut.className = 'bad';
          verifyOut.textContent = `chain broken at seq ${b.seq} (position ${b.position}): ${b.reason}`;
        }
      } catch (e) {
        verifyOut.className = 'bad';
        verifyOut.textContent = e.message;
      }
      verify.disabled = false;
    });
    const order = el(
      'a',
      { href: '#/stream/' + escBytes(bytes) + (backward ? '' : '?direction=backward') },
      backward ? 'Oldest first' : 'Newest first'
    );
    const tbody = el('tbody');
    const table = el(
      'table',
      { id: 'events' },
      el('thead', {}, el('tr', {}, ...['Seq', 'Position', 'Time (local)', 'Type', 'Data', 'Id'].map((h) => el('th', {}, h)))),
      tbody
    );
    const head = el('span', { class: 'muted', id: 'stream-head' });
    page(el('h1', { class: 'key', id: 'stream-key' }, label(bytes)), el('p', { class: 'muted' }, 'Loading…'));
    const body = await api(path + '?limit=' + PAGE + (backward ? '&direction=backward' : ''));
    if (my !== gen) return;
    head.textContent = `head ${body.head}`;
    const add = (b) => {
      for (const ev of b.events)
        tbody.append(
          el(
            'tr',
            {},
            el('td', { class: 'num' }, ev.seq),
            el('td', { class: 'num' }, ev.position),
            timeCell(ev),
            el('td', { class: 'type' }, typeText(ev)),
            dataCell(ev),
            el('td', { class: 'muted key' }, ev.id || '')
          )
        );
    };
    add(body);
    page(
      el('h1', { class: 'key', id: 'stream-key' }, label(bytes)),
      el('div', { class: 'toolbar' }, head, order, verify, verifyOut),
      body.events.length ? table : el('p', { class: 'muted' }, 'No events: the stream does not exist.'),
      moreButton(body.next, '/streams/', add)
    );
  }

  function livePage(q) {
    const prefix = q.get('prefix') || '';
    const type = q.get('type') || '';
    const from = q.get('from') || '';
    const inputs = {
      prefix: el('input', { id: 'live-prefix', value: prefix, placeholder: 'key prefix', size: 24 }),
      type: el('input', { id: 'live-type', value: type, placeholder: 'type', size: 14 }),
      from: el('input', { id: 'live-from', value: from, placeholder: 'from position (blank: now)', size: 22 }),
    };
    const status = el('span', { id: 'live-status', class: 'muted' }, 'connecting…');
    const form = el(
      'form',
      {
        class: 'toolbar',
        on: {
          submit: (e) => {
            e.preventDefault();
            const p = new URLSearchParams();
            for (const [k, i] of Object.entries(inputs)) if (i.value) p.set(k, i.value);
            const s = p.toString();
            location.hash = '#/live' + (s ? '?' + s : '');
          },
        },
      },
      inputs.prefix,
      inputs.type,
      inputs.from,
      el('button', { type: 'submit' }, 'Follow'),
      status
    );
    const tbody = el('tbody');
    const table = el(
      'table',
      { id: 'live' },
      el('thead', {}, el('tr', {}, ...['Position', 'Time (local)', 'Stream', 'Seq', 'Type', 'Data'].map((h) => el('th', {}, h)))),
      tbody
    );
    page(el('h1', {}, 'Live log'), form, table);

    const p = new URLSearchParams();
    p.set('from', /^[0-9]+$/.test(from) ? from : 'end');
    if (prefix) p.set('prefix', prefix);
    if (type) p.set('type', type);
    // EventSource cannot send an Authorization header: the feed takes the
    // token as access_token (and only the feed does)
    if (token()) p.set('access_token', token());
    const src = new EventSource('/log/feed?' + p.toString());
    cleanups.push(() => src.close());
    src.addEventListener('open', () => {
      status.className = 'ok';
      status.textContent = 'live';
    });
    src.addEventListener('error', () => {
      if (src.readyState === EventSource.CLOSED) {
        status.className = 'bad';
        status.textContent = 'closed';
        // the feed refused us (401, 403, 400): ask the API why
        api('/log?limit=1' + (prefix ? '&prefix=' + encodeURIComponent(prefix) : '')).catch(showError);
      } else {
        status.className = 'muted';
        status.textContent = 'reconnecting…';
      }
    });
    src.addEventListener('message', (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      const bytes = bytesOf(ev, 'stream');
      tbody.prepend(
        el(
          'tr',
          { class: 'fresh' },
          el('td', { class: 'num' }, ev.position),
          timeCell(ev),
          el('td', {}, el('a', { class: 'key', href: streamHref(bytes) }, label(bytes))),
          el('td', { class: 'num' }, ev.seq),
          el('td', { class: 'type' }, typeText(ev)),
          dataCell(ev)
        )
      );
      while (tbody.rows.length > LIVE_MAX) tbody.lastChild.remove();
    });
  }

  function seconds(us) {
    if (!us) return '0 s';
    const s = us / 1e6;
    return s < 60 ? s.toFixed(1) + ' s' : s < 3600 ? (s / 60).toFixed(1) + ' min' : (s / 3600).toFixed(1) + ' h';
  }

  async function subsPage() {
    const my = gen;
    const stamp = el('span', { class: 'muted', id: 'subs-stamp' });
    const tbody = el('tbody');
    const heads = ['Name', 'State', 'Checkpoint', 'Head', 'Behind (events)', 'Behind (time)', 'Parked', 'Last ack (local)', 'Partitions', 'Members'];
    const table = el('table', { id: 'subs' }, el('thead', {}, el('tr', {}, ...heads.map((h) => el('th', {}, h)))), tbody);
    const none = el('p', { class: 'muted', id: 'no-subs', hidden: true }, 'No subscriptions.');
    page(el('h1', {}, 'Subscriptions'), el('div', { class: 'toolbar' }, stamp), table, none);
    const load = async () => {
      const body = await api('/subscriptions');
      if (my !== gen) return;
      tbody.replaceChildren(
        ...body.subscriptions.map((s) =>
          el(
            'tr',
            {},
            el('td', { class: 'key' }, s.name),
            el('td', { class: 'state-' + s.state }, s.state.replace('_', ' ')),
            el('td', { class: 'num' }, s.checkpoint),
            el('td', { class: 'num' }, s.head),
            el('td', { class: 'num behind' }, s.behind + (s.behind_capped ? '+' : '')),
            el('td', { class: 'num' }, seconds(s.behind_us)),
            el('td', { class: 'num' }, s.parked),
            el('td', {}, s.last_ack_us ? localTime(s.last_ack_us) : 'never'),
            el('td', { class: 'num' }, s.partitions),
            el('td', { class: 'num' }, s.members)
          )
        )
      );
      none.hidden = body.subscriptions.length > 0;
      table.hidden = !none.hidden;
      stamp.textContent = 'as of ' + localTime(Date.now() * 1000).slice(11, 19) + ', every 2 s';
    };
    await load();
    const timer = setInterval(() => load().catch(showError), 2000);
    cleanups.push(() => clearInterval(timer));
  }

  // ---- the router: #/streams, #/stream/KEY, #/live, #/subscriptions ----

  async function render() {
    gen++;
    for (const f of cleanups) f();
    cleanups = [];
    showError(null);
    const hash = location.hash.replace(/^#/, '') || '/streams';
    const qi = hash.indexOf('?');
    const path = qi < 0 ? hash : hash.slice(0, qi);
    const q = new URLSearchParams(qi < 0 ? '' : hash.slice(qi + 1));
    const parts = path.split('/').filter((x) => x !== '');
    for (const a of document.querySelectorAll('nav a')) a.classList.remove('active');
    const nav = { streams: 'nav-streams', stream: 'nav-streams', live: 'nav-live', subscriptions: 'nav-subs' }[parts[0]];
    if (nav) $(nav).classList.add('active');
    try {
      if (parts[0] === 'streams' && parts.length === 1) await streamsPage(q);
      else if (parts[0] === 'stream' && parts.length === 2) await streamPage(parts[1], q);
      else if (parts[0] === 'live' && parts.length === 1) livePage(q);
      else if (parts[0] === 'subscriptions' && parts.length === 1) await subsPage();
      else page(el('p', {}, 'No such page. '), el('a', { href: '#/streams' }, 'Streams'));
    } catch (e) {
      showError(e);
    }
  }

  window.addEventListener('hashchange', render);
  showWho();
  render();
})();
