// 10,000 messages: the virtualized list keeps the DOM small and scrolling smooth. The node's API
// is replaced by synthetic answers here (page.route), so this measures the client alone; frame
// times are printed, not asserted (a shared 2-core machine is no timing reference).
import { expect, test } from '@playwright/test';

const N = 10_000;
const ME = 'cairn1me000000000000000000000000000000000000000000000000000000';
const YOU = 'cairn1you00000000000000000000000000000000000000000000000000000';
const CONV = 'ab'.repeat(32);

function message(seq: number) {
  const long = seq % 7 === 0 ? ' This one is longer, so that rows have different heights and wrap over several lines in the bubble.'.repeat(2) : '';
  return {
    seq,
    id: seq.toString(16).padStart(64, '0'),
    conversation: CONV,
    sender: seq % 3 === 0 ? ME : YOU,
    device: 'cairndev1x',
    handle: seq % 3 === 0 ? 'me' : 'you',
    timestamp_ms: 1_790_000_000_000 + seq * 1000,
    text: `message ${seq}.${long}`,
    parents: [],
    after_gap: false,
  };
}

test('10,000 messages scroll in a virtualized list', async ({ page }) => {
  await page.route('**/v1/**', async (route) => {
    const url = new URL(route.request().url());
    const json = (v: unknown) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(v) });
    if (url.pathname === '/v1/status')
      return json({ account: ME, device: 'cairndev1x', fingerprint: '1 2 3', handle: 'me', peer_id: 'p', p2p: [], peers: 1, store_peers: 1, ledger_height: 1, mailbox_backlog: 0, pending_sends: 0, conversations: 1, roles: ['user'] });
    if (url.pathname === '/v1/conversations')
      return json([{ id: CONV, topic: 'cd', epoch: 1, active: true, messages: N, members: [{ account: ME, handle: 'me', fingerprint: '1', devices: ['d'] }, { account: YOU, handle: 'you', fingerprint: '2', devices: ['e'] }] }]);
    if (url.pathname.endsWith('/messages')) {
      const after = Number(url.searchParams.get('after') ?? 0);
      const limit = Number(url.searchParams.get('limit') ?? 1000);
      const out = [];
      for (let s = after + 1; s <= Math.min(N, after + limit); s++) out.push(message(s));
      return json(out);
    }
    if (url.pathname === '/v1/requests') return json([]);
    return route.fulfill({ status: 404, contentType: 'application/json', body: '{"error":"no","code":"not_found"}' });
  });
  await page.routeWebSocket('**/v1/stream', () => {});
  await page.goto(`http://127.0.0.1:${await serveStatic(page)}/`);
  await page.getByTestId('conversation').first().click();
  await expect(page.locator('.msg .text').last()).toContainText(`message ${N}.`);
  const list = page.getByRole('log', { name: 'Messages' });
  await list.hover();
  // Scroll up through the whole history with the wheel, loading older pages on the way.
  await page.evaluate(() => {
    const deltas: number[] = [];
    let last = performance.now();
    let on = true;
    const tick = (t: number) => {
      deltas.push(t - last);
      last = t;
      if (on) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    (window as unknown as { stopFrames: () => number[] }).stopFrames = () => {
      on = false;
      return deltas;
    };
  });
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    await page.mouse.wheel(0, -4000);
    await page.waitForTimeout(16);
    const first = await page.locator('.msg').first().getAttribute('data-seq');
    if (first === '1') break;
  }
  const deltas = await page.evaluate(() => (window as unknown as { stopFrames: () => number[] }).stopFrames());
  await expect(page.locator('.msg .text').first()).toHaveText('message 1.');
  const rows = await page.locator('.vrow').count();
  expect(rows, 'only the rows in view are in the DOM').toBeLessThan(200);
  deltas.sort((a, b) => a - b);
  const pct = (p: number) => deltas[Math.min(deltas.length - 1, Math.floor((p / 100) * deltas.length))].toFixed(1);
  const janky = deltas.filter((d) => d > 50).length;
  console.log(`scrolling ${N} messages: ${deltas.length} frames, frame time p50 ${pct(50)} ms, p95 ${pct(95)} ms, p99 ${pct(99)} ms, max ${pct(100)} ms, ${janky} frames over 50 ms; ${rows} rows in the DOM`);
});

/** Serves web/dist on a loopback port for this test (the API is mocked by page.route). */
async function serveStatic(page: import('@playwright/test').Page): Promise<number> {
  const { createServer } = await import('node:http');
  const { readFile } = await import('node:fs/promises');
  const { join, extname } = await import('node:path');
  const dist = join(import.meta.dirname, '..', 'dist');
  const types: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
  const server = createServer(async (req, res) => {
    const path = req.url === '/' || !req.url ? '/index.html' : req.url.split('?')[0];
    try {
      const body = await readFile(join(dist, path.replace(/\.\./g, '')));
      res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  page.once('close', () => server.close());
  const a = server.address();
  return typeof a === 'object' && a ? a.port : 0;
}
