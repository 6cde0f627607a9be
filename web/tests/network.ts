// A real Cairn network on 127.0.0.1 for the browser tests: `cairn dev` (one validator, a store
// node and alice's node), then bob's and carol's nodes (`cairn up`) joining it. Every process
// is killed by stop(); every wait is bounded.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
// The binary `cargo build -p cairn` made: CAIRN_BIN, else under CARGO_TARGET_DIR when cargo was
// told to build elsewhere, else the repository's target/.
const TARGET = process.env.CARGO_TARGET_DIR ?? join(import.meta.dirname, '../../target');
export const BIN = resolve(process.env.CAIRN_BIN ?? join(TARGET, 'debug/cairn'));

/**
 * Writes the browser's send→shown latency where `cairn bench e2e` prints it from:
 * `<target>/bench/web-latency.json` beside the `cairn` binary the network ran.
 */
export function writeLatency(f: { samples: number; p50_ms: number; p99_ms: number; max_ms: number }): void {
  const dir = join(dirname(dirname(BIN)), 'bench');
  mkdirSync(dir, { recursive: true });
  const record = {
    ...f,
    command: 'cd web && npx playwright test',
    measured_at: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    cairn_bin: BIN,
    what: 'sent in one browser → shown in the other (2 members, Chromium headless, real cairn processes on 127.0.0.1)',
  };
  writeFileSync(join(dir, 'web-latency.json'), JSON.stringify(record, null, 2) + '\n');
}

export interface User {
  name: string;
  home: string;
  pass: string;
  port: number;
  api: string;
  proc?: ChildProcess;
  log: string[];
  invitations?: 'everyone' | 'ask';
}

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => ok(port));
    });
  });
}

/** An error that ends a wait at once (a process died). */
class Fatal extends Error {}

async function until<T>(what: string, ms: number, f: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      if (e instanceof Fatal) throw e;
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

export class Network {
  dir = mkdtempSync(join(tmpdir(), 'cairn-web-'));
  users = new Map<string, User>();
  genesis = '';
  bootstrap = '';
  private dev?: ChildProcess;

  env(u: User) {
    return { ...process.env, CAIRN_PASSPHRASE: u.pass, RUST_LOG: process.env.RUST_LOG ?? 'warn' };
  }

  /** alice's node with the validator and store node (`cairn dev`). */
  async start(): Promise<void> {
    const alice: User = { name: 'alice', home: join(this.dir, 'alice'), pass: 'alice passphrase 1', port: 0, api: '', log: [] };
    this.users.set('alice', alice);
    const dev = spawn(BIN, ['--home', alice.home, 'dev'], { env: this.env(alice), stdio: ['ignore', 'pipe', 'pipe'] });
    this.dev = dev;
    alice.proc = dev;
    let out = '';
    dev.stdout!.on('data', (d) => (out += String(d)));
    dev.stderr!.on('data', (d) => alice.log.push(String(d)));
    const line = await until('`cairn dev` to print the join command', 60_000, () => {
      if (dev.exitCode !== null) throw new Fatal(`cairn dev exited: ${alice.log.join('')}`);
      const m = /up --genesis (\S+) --bootstrap (\S+)/.exec(out);
      return m ? m : undefined;
    });
    this.genesis = line[1];
    this.bootstrap = line[2];
    alice.api = await this.waitApi(alice);
    alice.port = Number(new URL(alice.api).port);
  }

  private async waitApi(u: User): Promise<string> {
    const file = join(u.home, 'run', 'node.json');
    const api = await until(`${u.name}'s node to write its run file`, 90_000, () => {
      if (u.proc && u.proc.exitCode !== null) throw new Fatal(`${u.name}'s node exited (code ${u.proc.exitCode}): ${u.log.join('')}`);
      if (!existsSync(file)) return undefined;
      const j = JSON.parse(readFileSync(file, 'utf8')) as { api: string };
      return j.api || undefined;
    });
    await until(`${u.name}'s node to answer`, 30_000, async () => ((await fetch(`${api}/health`)).ok ? true : undefined));
    return api;
  }

  /** A user's node joining the network (`cairn init` + `cairn up`), on a fixed API port. */
  async addUser(name: string, invitations: 'everyone' | 'ask' = 'everyone'): Promise<User> {
    const u: User = { name, home: join(this.dir, name), pass: `${name} passphrase 1`, port: await freePort(), api: '', log: [], invitations };
    this.users.set(name, u);
    await run(BIN, ['--home', u.home, 'init'], { env: this.env(u) });
    await this.startNode(u);
    return u;
  }

  private spawnNode(u: User): ChildProcess {
    const args = ['--home', u.home, 'up', '--genesis', this.genesis, '--bootstrap', this.bootstrap, '--api', `127.0.0.1:${u.port}`, '--invitations', u.invitations ?? 'everyone'];
    const p = spawn(BIN, args, { env: this.env(u), stdio: ['ignore', 'ignore', 'pipe'] });
    p.stderr!.on('data', (d) => u.log.push(String(d)));
    u.proc = p;
    return p;
  }

  async startNode(u: User): Promise<void> {
    this.spawnNode(u);
    u.api = await this.waitApi(u);
  }

  /**
   * A user's node started without an account (`cairn up` on an empty data directory): returns
   * the one-time setup link it prints; the account is then created in the browser, after which
   * `waitRunning` finds the node's API.
   */
  async addUserBySetup(name: string): Promise<{ user: User; link: string }> {
    const u: User = { name, home: join(this.dir, name), pass: `${name} passphrase 1`, port: await freePort(), api: '', log: [], invitations: 'everyone' };
    this.users.set(name, u);
    const p = this.spawnNode(u);
    const link = await until(`${name}'s node to print its setup link`, 60_000, () => {
      if (p.exitCode !== null) throw new Fatal(`${name}'s node exited (code ${p.exitCode}): ${u.log.join('')}`);
      return /(http:\/\/127\.0\.0\.1:\d+\/#setup=[0-9a-f]{64})/.exec(u.log.join(''))?.[1];
    });
    return { user: u, link };
  }

  async waitRunning(u: User): Promise<void> {
    u.api = await this.waitApi(u);
  }

  /** Stops a user's node (SIGTERM, then SIGKILL after 10 s). */
  async stopNode(u: User): Promise<void> {
    const p = u.proc;
    if (!p || p.exitCode !== null) return;
    const done = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
    await done;
    clearTimeout(t);
  }

  /** A one-time login link from `cairn web`. */
  async loginLink(u: User): Promise<string> {
    const { stdout } = await run(BIN, ['--home', u.home, 'web', '--quiet'], { env: this.env(u) });
    return stdout.trim();
  }

  async stop(): Promise<void> {
    for (const u of this.users.values()) if (u !== this.users.get('alice')) await this.stopNode(u);
    if (this.dev && this.dev.exitCode === null) {
      const done = new Promise((r) => this.dev!.once('exit', r));
      this.dev.kill('SIGTERM');
      const t = setTimeout(() => this.dev!.kill('SIGKILL'), 15_000);
      await done;
      clearTimeout(t);
    }
    if (!process.env.CAIRN_KEEP) rmSync(this.dir, { recursive: true, force: true });
    else {
      // With CAIRN_KEEP, each node's log (stderr, RUST_LOG) is kept beside its data.
      for (const u of this.users.values()) writeFileSync(join(this.dir, `${u.name}.log`), u.log.join(''));
      console.log(`network data and node logs kept in ${this.dir}`);
    }
  }
}
