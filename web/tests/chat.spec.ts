// End to end in Debian's Chromium against real cairn processes on 127.0.0.1: alice, bob and
// carol each in their own browser context, talking through a real network (validator, store
// node, three user nodes). The steps run in order and share the network.
import AxeBuilder from '@axe-core/playwright';
import { expect, test, type Browser, type BrowserContext, type Page, type WebSocketRoute } from '@playwright/test';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Network, writeLatency, type User } from './network';

test.describe.configure({ mode: 'serial' });

const SHOTS = join(import.meta.dirname, 'screenshots');
mkdirSync(SHOTS, { recursive: true });

const net = new Network();
/** Messages timed sent → shown (p99 of 100 is the second slowest). */
const PINGS = 100;
const pages = new Map<string, Page>();
const contexts: BrowserContext[] = [];

async function newPage(browser: Browser, u: User): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.on('dialog', (d) => void d.accept());
  page.on('pageerror', (e) => console.log(`[${u.name} page error] ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[${u.name} console] ${m.text()}`);
  });
  return page;
}

async function open(browser: Browser, u: User): Promise<Page> {
  const page = await newPage(browser, u);
  const link = await net.loginLink(u);
  const t0 = Date.now();
  await page.goto(link);
  await expect(page.getByRole('list', { name: 'Conversations' })).toBeVisible();
  console.log(`first render of ${u.name}'s conversation list: ${Date.now() - t0} ms after navigation`);
  pages.set(u.name, page);
  return page;
}

async function axe(page: Page, what: string) {
  const r = await new AxeBuilder({ page }).analyze();
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of r.violations) console.log(`axe (${what}): ${v.impact} ${v.id}: ${v.help} (${v.nodes.length})`);
  expect(bad.map((v) => `${v.id}: ${v.help}`), `serious accessibility violations on ${what}`).toEqual([]);
}

async function claim(page: Page, name: string) {
  await page.getByRole('button', { name: 'Account' }).click();
  await page.getByLabel('Handle', { exact: true }).fill(name);
  // A freshly started node may still be registering its account: retry like a person would.
  await expect(async () => {
    await page.getByRole('button', { name: /^Claim/ }).click();
    await expect(page.getByText(/Claimed at ledger height/)).toBeVisible({ timeout: 10_000 });
  }).toPass({ timeout: 90_000, intervals: [2_000] });
  await expect(page.getByTestId('me')).toHaveText(`@${name}`);
}

async function openChat(page: Page, name: RegExp | string) {
  await page.getByTestId('conversation').filter({ hasText: name }).first().click();
}

async function send(page: Page, text: string) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.keyboard.press('Enter');
}

function bubbles(page: Page) {
  return page.locator('.msg .text');
}

test.beforeAll(async () => {
  test.setTimeout(240_000);
  await net.start();
  await net.addUser('carol');
});

test.afterAll(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await net.stop();
});

test('sign-up and handle', async ({ browser }) => {
  const alice = await open(browser, net.users.get('alice')!);
  await expect(alice.getByTestId('me')).toHaveText('No handle yet');
  // bob's node starts without an account: he creates it, with his handle, in the browser.
  const { user: bobUser, link } = await net.addUserBySetup('bob');
  const bob = await newPage(browser, bobUser);
  await bob.goto(link);
  await expect(bob.getByRole('heading', { name: 'Create your account' })).toBeVisible();
  await bob.getByLabel(/^Passphrase/).fill(bobUser.pass);
  await bob.getByLabel('Repeat the passphrase').fill('not the same');
  await expect(bob.getByRole('button', { name: 'Create account' })).toBeDisabled();
  await bob.getByLabel('Repeat the passphrase').fill(bobUser.pass);
  await bob.getByLabel(/^Handle/).fill('@bob');
  await bob.screenshot({ path: join(SHOTS, 'sign-up.png') });
  await axe(bob, 'sign-up');
  await bob.getByRole('button', { name: 'Create account' }).click();
  // The node restarts with the new account on the same address; the page waits for it.
  await expect(bob.getByRole('list', { name: 'Conversations' })).toBeVisible({ timeout: 120_000 });
  await net.waitRunning(bobUser);
  pages.set('bob', bob);
  await claim(alice, 'alice');
  // The node claims the handle chosen at sign-up once its account is registered.
  await expect(bob.getByTestId('me')).toHaveText('@bob', { timeout: 90_000 });
  await expect(alice.getByTestId('fingerprint')).toHaveText(/^\d{5}( \d{5}){5}$/);
  await alice.screenshot({ path: join(SHOTS, 'account.png') });
  await axe(alice, 'account');
});

test('start a chat', async () => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  await alice.getByRole('button', { name: 'New conversation' }).click();
  await alice.getByLabel(/^Members/).fill('@bob');
  await alice.getByRole('button', { name: 'Create' }).click();
  await expect(alice.getByRole('heading', { name: '@bob' })).toBeVisible({ timeout: 60_000 });
  await expect(bob.getByTestId('conversation').filter({ hasText: '@alice' })).toBeVisible({ timeout: 60_000 });
});

test('messages both ways in order, with delivery states', async () => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  await openChat(bob, '@alice');
  // Layout shifts on bob's page while messages arrive (rows are positioned by transform).
  await bob.evaluate(() => {
    type Shift = { value: number; hadRecentInput: boolean; sources?: { node?: Node; previousRect: DOMRectReadOnly; currentRect: DOMRectReadOnly }[] };
    const w = window as unknown as { cls: number; shifts: string[] };
    w.cls = 0;
    w.shifts = [];
    new PerformanceObserver((l) => {
      for (const e of l.getEntries() as unknown as Shift[]) {
        if (e.hadRecentInput) continue;
        w.cls += e.value;
        for (const s of e.sources ?? []) {
          const el = s.node instanceof Element ? s.node : s.node?.parentElement;
          const r = (x: DOMRectReadOnly) => `${Math.round(x.x)},${Math.round(x.y)} ${Math.round(x.width)}x${Math.round(x.height)}`;
          w.shifts.push(`${e.value.toFixed(4)} <${el?.tagName.toLowerCase()} class="${el?.className}"> ${r(s.previousRect)} -> ${r(s.currentRect)}`);
        }
      }
    }).observe({ type: 'layout-shift', buffered: false });
  });
  for (let i = 1; i <= 3; i++) await send(alice, `hello bob ${i}`);
  await expect(bubbles(bob)).toHaveText(['hello bob 1', 'hello bob 2', 'hello bob 3']);
  await expect(alice.getByTestId('delivery').last()).toHaveText(/delivered to 1 of 1/);
  await send(bob, 'hi alice');
  await expect(bubbles(alice)).toHaveText(['hello bob 1', 'hello bob 2', 'hello bob 3', 'hi alice']);
  await expect(bob.getByTestId('delivery').last()).toHaveText(/delivered to 1 of 1/);

  // Sent in one browser → shown in the other, measured (reported, not asserted). bob's page
  // notes when each text first appears in its DOM (a mutation observer, same clock as this
  // process), so Playwright's polling interval is not part of the figure.
  await bob.evaluate(() => {
    const w = window as unknown as { seen: Record<string, number> };
    w.seen = {};
    new MutationObserver(() => {
      for (const el of Array.from(document.querySelectorAll('.msg .text'))) {
        const t = el.textContent ?? '';
        if (t.startsWith('ping ') && !(t in w.seen)) w.seen[t] = Date.now();
      }
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  const lat: number[] = [];
  for (let i = 0; i < PINGS; i++) {
    const t0 = Date.now();
    await send(alice, `ping ${i}`);
    await expect(bubbles(bob).last()).toHaveText(`ping ${i}`);
    const shown = await bob.evaluate((t) => (window as unknown as { seen: Record<string, number> }).seen[t], `ping ${i}`);
    lat.push(shown - t0);
  }
  const { cls, shifts } = await bob.evaluate(() => window as unknown as { cls: number; shifts: string[] }).then(() =>
    bob.evaluate(() => {
      const w = window as unknown as { cls: number; shifts: string[] };
      return { cls: w.cls, shifts: w.shifts };
    }),
  );
  console.log(`layout shift on the receiving page over ${3 + PINGS} arrivals: ${cls.toFixed(4)}`);
  for (const s of shifts) console.log(`  shifted: ${s}`);
  expect(cls, 'no layout shift when messages arrive').toBeLessThan(0.01);
  lat.sort((a, b) => a - b);
  const pct = (p: number) => lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))];
  const max = lat[lat.length - 1];
  console.log(`web send→shown (alice→bob, ${lat.length} messages): p50 ${pct(50)} ms, p99 ${pct(99)} ms, max ${max} ms`);
  // Beside the CLI's figures: `cairn bench e2e` prints this file (crates/cli/src/bench_web.rs).
  writeLatency({ samples: lat.length, p50_ms: pct(50), p99_ms: pct(99), max_ms: max });
  await alice.screenshot({ path: join(SHOTS, 'chat.png') });
  await axe(alice, 'chat');
});

test('a reload keeps the session and the delivery states', async () => {
  const alice = pages.get('alice')!;
  const t0 = Date.now();
  await alice.reload();
  await expect(alice.getByTestId('conversation').filter({ hasText: '@bob' })).toBeVisible();
  console.log(`first render of the conversation list after a reload: ${Date.now() - t0} ms`);
  await expect(alice.getByTestId('me')).toHaveText('@alice');
  // The reloaded page watched none of the deliveries: the node gives their states back.
  await openChat(alice, '@bob');
  await expect(bubbles(alice).last()).toHaveText(`ping ${PINGS - 1}`);
  await expect(alice.getByTestId('delivery').last()).toHaveText(/delivered to 1 of 1/);
  const mine = alice.locator('.msg', { hasText: `ping ${PINGS - 2}` });
  await expect(mine.getByTestId('delivery')).toHaveText(/delivered to 1 of 1/);
});

test('bob offline, then back, catching up; his delivery states survive the restart; a wrong passphrase is refused', async () => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  const bobUser = net.users.get('bob')!;
  await openChat(bob, '@alice');
  await send(bob, 'back soon');
  await expect(bob.locator('.msg', { hasText: 'back soon' }).getByTestId('delivery')).toHaveText(/delivered to 1 of 1/);
  await net.stopNode(bobUser);
  await openChat(alice, '@bob');
  for (let i = 1; i <= 3; i++) await send(alice, `while away ${i}`);
  // Held by the store node while bob is away.
  await expect(alice.getByTestId('delivery').last()).toHaveText(/stored on \d/);
  await net.startNode(bobUser);
  // The session outlived the restart: bob's page is still logged in and catches up.
  await bob.reload();
  await expect(bob.getByTestId('unread').first()).toBeVisible({ timeout: 60_000 });
  // Logged out, the page asks for the passphrase.
  await bob.getByRole('button', { name: 'Account' }).click();
  await bob.getByRole('button', { name: 'Log out of this browser' }).click();
  await expect(bob.getByLabel('Passphrase')).toBeVisible();
  await bob.reload();
  await expect(bob.getByLabel('Passphrase')).toBeVisible();
  await bob.getByLabel('Passphrase').fill('not my passphrase');
  await bob.getByRole('button', { name: 'Unlock' }).click();
  await expect(bob.getByRole('alert')).toHaveText(/wrong passphrase/);
  await bob.screenshot({ path: join(SHOTS, 'login.png') });
  await axe(bob, 'login');
  await bob.getByLabel('Passphrase').fill(bobUser.pass);
  await bob.getByRole('button', { name: 'Unlock' }).click();
  await expect(bob.getByTestId('unread').first()).toBeVisible({ timeout: 60_000 });
  await openChat(bob, '@alice');
  await expect(bubbles(bob).last()).toHaveText('while away 3', { timeout: 60_000 });
  const texts = await bubbles(bob).allTextContents();
  const tail = texts.slice(-3);
  expect(tail).toEqual(['while away 1', 'while away 2', 'while away 3']);
  // bob's node restarted: the state of what he sent before it was read back from its database.
  await expect(bob.locator('.msg', { hasText: 'back soon' }).getByTestId('delivery')).toHaveText(/delivered to 1 of 1/);
  await expect(alice.getByTestId('delivery').last()).toHaveText(/delivered to 1 of 1/, { timeout: 60_000 });
});

test('erasing a message removes it for the other member', async () => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  await openChat(alice, '@bob');
  await expect(bubbles(bob).last()).toHaveText('while away 3');
  await alice.getByRole('button', { name: 'Erase message “while away 3”' }).click();
  await expect(bubbles(alice).last()).toHaveText('while away 2');
  await expect(bubbles(bob).last()).toHaveText('while away 2');
  await expect(bob.locator('.msg .text', { hasText: 'while away 3' })).toHaveCount(0);
});

test('events missed by the stream are read again when it reconnects', async ({ browser }) => {
  const alice = pages.get('alice')!;
  await openChat(alice, '@bob');
  const conv = await alice.locator('section.chat').getAttribute('data-conv');
  // A second window of bob's whose stream goes through a proxy that can drop events.
  const ctx = await browser.newContext();
  contexts.push(ctx);
  const page = await ctx.newPage();
  let drop = false;
  const sockets: WebSocketRoute[] = [];
  await page.routeWebSocket(/\/v1\/stream$/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((m) => {
      if (!drop) ws.send(m);
    });
    sockets.push(ws);
  });
  await page.goto(await net.loginLink(net.users.get('bob')!));
  await page.locator(`[data-id="${conv}"]`).click();
  await send(alice, 'seen live');
  await expect(bubbles(page).last()).toHaveText('seen live');
  drop = true;
  await send(alice, 'missed by the stream');
  await expect(alice.getByTestId('delivery').last()).toHaveText(/delivered to 1 of 1/);
  await expect(bubbles(page).last()).toHaveText('seen live');
  drop = false;
  await sockets[sockets.length - 1].close(); // the client reconnects and catches up
  await expect(bubbles(page).last()).toHaveText('missed by the stream');
  expect(sockets.length).toBeGreaterThan(1);
});

test('verify', async () => {
  const alice = pages.get('alice')!;
  await openChat(alice, '@bob');
  await alice.getByRole('button', { name: 'Verify' }).click();
  await expect(alice.getByTestId('verify-result')).toHaveText(/History intact/);
  // Members: handle, fingerprint, devices; mark bob verified after comparing.
  await alice.getByRole('button', { name: 'Members' }).click();
  const bobRow = alice.getByTestId('member').filter({ hasText: '@bob' });
  await expect(bobRow).toContainText(/Fingerprint: \d{5}/);
  await expect(bobRow).toContainText('1 device');
  await bobRow.getByRole('button', { name: 'Mark verified' }).click();
  await expect(bobRow).toContainText('verified');
  // The conversation's policy contract: none pinned, then moderation (no admins, no rate
  // limit, one filtered word: a message with it is held) pinned through a commit on the ledger.
  await expect(alice.getByTestId('policy')).toHaveText('Policy: none');
  await alice.getByLabel('Policy to pin').selectOption('moderation');
  await alice.getByLabel('Filtered words').fill('spam');
  await alice.getByRole('button', { name: 'Set policy' }).click();
  await expect(alice.getByTestId('policy')).toHaveText(/^Policy: moderation/, { timeout: 60_000 });
});

test('a message the policy holds is listed with its reason, then released', async () => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  await openChat(bob, '@alice');
  const conv = await bob.locator('section.chat').getAttribute('data-conv');
  // bob's node applies the pin (sequenced on the ledger) before his next message is judged by it.
  const policyAtBob = () =>
    bob.evaluate(async (c) => ((await (await fetch(`/v1/conversations/${c}/policy`)).json()) as { policy: string }).policy, conv);
  await expect.poll(policyAtBob, { timeout: 60_000 }).toBe('moderation');
  // alice has the held list open before bob writes: it fills live, without a reload.
  await openChat(alice, '@bob');
  const members = alice.getByRole('button', { name: 'Members' });
  if ((await members.getAttribute('aria-expanded')) === 'true') await members.click();
  await alice.getByRole('button', { name: 'Held', exact: true }).click();
  await expect(alice.getByText('Nothing held')).toBeVisible({ timeout: 30_000 });
  await send(bob, 'cheap spam here');
  await send(bob, 'an ordinary line');
  await expect(bubbles(alice).last()).toHaveText('an ordinary line', { timeout: 60_000 });
  await expect(alice.locator('.msg .text', { hasText: 'cheap spam here' })).toHaveCount(0);
  const held = alice.getByTestId('held').filter({ hasText: 'cheap spam here' });
  await expect(held).toBeVisible({ timeout: 30_000 });
  await expect(held.getByTestId('held-reason')).toHaveText(/\S/);
  await expect(held).toContainText('@bob');
  await alice.screenshot({ path: join(SHOTS, 'held.png') });
  await axe(alice, 'held messages');
  await held.getByRole('button', { name: /^Release held message/ }).click();
  await expect(held).toHaveCount(0);
  const released = alice.locator('.msg', { hasText: 'cheap spam here' });
  await expect(released).toContainText('released from hold');
  await alice.getByRole('button', { name: 'Held', exact: true }).click();
});

test('balance and a payment', async () => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  const num = async (p: Page) => {
    const el = p.getByTestId('balance');
    await expect(el).toHaveText(/^[\d,]+$/);
    return Number((await el.textContent())!.replace(/,/g, ''));
  };
  await bob.getByRole('button', { name: 'Wallet' }).click();
  const bobBefore = await num(bob);
  await alice.getByRole('button', { name: 'Wallet' }).click();
  const before = await num(alice);
  const amount = 1_000_000;
  expect(before, 'the dev faucet funded alice').toBeGreaterThan(amount);
  await alice.getByLabel(/^To/).fill('@bob');
  await alice.getByLabel('Amount').fill(String(amount));
  await alice.getByRole('button', { name: 'Pay' }).click();
  await expect(alice.getByRole('status').filter({ hasText: /Paid 1,000,000 at ledger height \d+/ })).toBeVisible({ timeout: 60_000 });
  const after = await num(alice);
  expect(after, 'the amount (and a fee) left alice').toBeLessThanOrEqual(before - amount);
  // bob's node pays fees of its own meanwhile (history anchors, a few thousand units each).
  await expect(async () => {
    await bob.getByRole('button', { name: 'New conversation' }).click(); // leave the panel, then re-open it
    await bob.getByRole('button', { name: 'Wallet' }).click();
    const now = await num(bob);
    console.log(`bob's balance: ${bobBefore} before, ${now} now; alice ${before} -> ${after}`);
    expect(now).toBeGreaterThan(bobBefore + amount - 100_000);
    expect(now).toBeLessThanOrEqual(bobBefore + amount);
  }).toPass({ timeout: 30_000, intervals: [1_000] });
  // More than the balance: refused with the reason, nothing paid.
  await alice.getByLabel('Amount').fill(String(after * 2));
  await alice.getByRole('button', { name: 'Pay' }).click();
  await expect(alice.getByRole('alert')).toHaveText(/Not enough funds.*balance is/);
  expect(await num(alice), 'nothing paid (anchor fees aside)').toBeGreaterThan(after - 100_000);
  await alice.getByLabel(/^To/).fill('@nobody_here');
  await alice.getByLabel('Amount').fill('1');
  await alice.getByRole('button', { name: 'Pay' }).click();
  await expect(alice.getByRole('alert')).toHaveText(/not registered/);
  await alice.screenshot({ path: join(SHOTS, 'wallet.png') });
  await axe(alice, 'wallet');
});

test('a group with carol, then carol removed and no longer reading', async ({ browser }) => {
  const alice = pages.get('alice')!;
  const bob = pages.get('bob')!;
  const carol = await open(browser, net.users.get('carol')!);
  await claim(carol, 'carol');
  await alice.getByRole('button', { name: 'New conversation' }).click();
  await alice.getByLabel(/^Members/).fill('@bob, @carol');
  await alice.getByRole('button', { name: 'Create' }).click();
  await expect(alice.getByRole('heading', { name: '@bob, @carol' })).toBeVisible({ timeout: 60_000 });
  const group = /@alice, @(bob|carol)/;
  await expect(carol.getByTestId('conversation').filter({ hasText: group })).toBeVisible({ timeout: 60_000 });
  await openChat(carol, group);
  await expect(bob.getByTestId('conversation').filter({ hasText: group })).toBeVisible({ timeout: 60_000 });
  await openChat(bob, group);
  await send(alice, 'group hello');
  await expect(bubbles(carol).last()).toHaveText('group hello');
  await expect(bubbles(bob).last()).toHaveText('group hello');
  await expect(alice.getByTestId('delivery').last()).toHaveText(/delivered to 2 of 2/);

  await alice.getByRole('button', { name: 'Members' }).click();
  await alice.getByTestId('member').filter({ hasText: '@carol' }).getByRole('button', { name: 'Remove' }).click();
  await expect(alice.getByTestId('member').filter({ hasText: '@carol' })).toHaveCount(0, { timeout: 60_000 });
  await send(alice, 'without carol');
  await expect(bubbles(bob).last()).toHaveText('without carol');
  await expect(alice.getByTestId('delivery').last()).toHaveText(/delivered to 1 of 1/);
  // Carol's node no longer decrypts the group: give the message time to have arrived anyway.
  await carol.waitForTimeout(3_000);
  await expect(bubbles(carol).last()).toHaveText('group hello');
  await alice.getByRole('button', { name: 'Members' }).click();
  await alice.screenshot({ path: join(SHOTS, 'group.png') });
});

test('devices: link one, then revoke it; narrow screen and dark theme', async () => {
  const alice = pages.get('alice')!;
  await alice.getByRole('button', { name: 'Devices' }).click();
  await expect(alice.getByTestId('device')).toHaveCount(1, { timeout: 30_000 });
  await expect(alice.getByTestId('device')).toContainText('this device');
  await alice.getByLabel('Data directory of the new device').fill(join(net.dir, 'alice-laptop'));
  await alice.getByLabel("Passphrase for the new device's keystore").fill('laptop passphrase 1');
  await alice.getByRole('button', { name: 'Link device' }).click();
  await expect(alice.getByTestId('device')).toHaveCount(2, { timeout: 90_000 });
  await alice.screenshot({ path: join(SHOTS, 'devices.png') });
  await axe(alice, 'devices');
  await alice.getByTestId('device').filter({ hasNotText: 'this device' }).getByRole('button', { name: 'Revoke' }).click();
  await expect(alice.getByTestId('device')).toHaveCount(1, { timeout: 90_000 });
  await expect(alice.getByTestId('device')).toContainText('this device');
  await alice.getByRole('button', { name: /Switch to dark theme/ }).click();
  await expect(alice.locator('html')).toHaveAttribute('data-theme', 'dark');
  await alice.setViewportSize({ width: 360, height: 740 });
  await alice.getByRole('button', { name: 'Back to conversations' }).click();
  await expect(alice.getByRole('list', { name: 'Conversations' })).toBeVisible();
  // Keyboard: arrow keys move through conversations, Enter opens one.
  await alice.getByTestId('conversation').first().focus();
  await alice.keyboard.press('ArrowDown');
  await alice.keyboard.press('Enter');
  await expect(alice.getByLabel('Message', { exact: true })).toBeVisible();
  // Escape goes back to the list, with the focus on it.
  await alice.keyboard.press('Escape');
  await expect(alice.getByTestId('conversation').first()).toBeFocused();
  await alice.getByTestId('conversation').nth(1).click();
  const scroll = await alice.evaluate(() => document.documentElement.scrollWidth);
  expect(scroll, 'no horizontal scrolling at 360 px').toBeLessThanOrEqual(360);
  await alice.screenshot({ path: join(SHOTS, 'narrow-dark.png') });
  await axe(alice, 'narrow dark chat');
});

test('an invitation from a stranger waits for consent', async ({ browser }) => {
  const alice = pages.get('alice')!;
  await alice.setViewportSize({ width: 1100, height: 760 });
  const dave = await open(browser, await net.addUser('dave', 'ask'));
  const daveAccount = await dave.evaluate(async () => (await (await fetch('/v1/status')).json()).account as string);
  await alice.getByRole('button', { name: 'New conversation' }).click();
  await alice.getByLabel(/^Members/).fill(daveAccount);
  await expect(async () => {
    await alice.getByRole('button', { name: 'Create' }).click();
    await expect(alice.getByRole('button', { name: 'Verify' })).toBeVisible({ timeout: 10_000 });
  }).toPass({ timeout: 90_000, intervals: [2_000] });
  const invitations = dave.getByRole('region', { name: 'Invitations' });
  await expect(invitations).toBeVisible({ timeout: 60_000 });
  await expect(dave.getByTestId('conversation')).toHaveCount(0);
  await invitations.getByRole('button', { name: 'Accept' }).click();
  await expect(dave.getByTestId('conversation')).toHaveCount(1, { timeout: 60_000 });
  await openChat(dave, '@alice');
  await send(alice, 'welcome dave');
  await expect(bubbles(dave).last()).toHaveText('welcome dave');
});
