// The node's local API, same origin. Authentication is the HttpOnly session cookie; every
// state-changing call carries X-Cairn-Csrf (the node refuses cookie requests without it).

export interface MemberView {
  account: string;
  handle: string | null;
  fingerprint: string;
  devices: string[];
}
export interface ConversationView {
  id: string;
  topic: string;
  epoch: number;
  active: boolean;
  members: MemberView[];
  messages: number;
}
export interface StatusView {
  account: string;
  device: string;
  fingerprint: string;
  handle: string | null;
  peer_id: string;
  p2p: string[];
  peers: number;
  store_peers: number;
  ledger_height: number | null;
  mailbox_backlog: number;
  pending_sends: number;
  conversations: number;
  roles: string[];
}
export type DeliveryState = 'sent' | 'stored' | 'delivered';
export interface DeliveryView {
  state: DeliveryState;
  stored_on: number;
  delivered_to: number;
  members: number;
}
export interface SendResult {
  id: string;
  delivery: DeliveryView;
}
export interface MessageView {
  seq: number;
  id: string;
  conversation: string;
  sender: string;
  device: string;
  handle: string | null;
  timestamp_ms: number;
  text: string;
  parents: string[];
  after_gap: boolean;
  /** The conversation policy's verdict, if one was pinned at its epoch. */
  verdict?: 'allow' | 'label' | 'reply' | 'propose_remove' | 'released' | null;
  labels?: string[];
}
/** What the conversation's policy kept out of the history on this device. */
export interface HeldListView {
  held: { id: string; sender: string; device: string; timestamp_ms: number; reason: string; waiting: boolean; text: string }[];
  denied: { id: string; sender: string; reason: string }[];
  proposed_removals: { id: string; sender: string; account: string }[];
}
export interface VerifyView {
  intact: boolean;
  envelopes: number;
  signatures_verified: number;
  anchors: number;
  erased: number;
  first_problem: string | null;
  problems: number;
}
export interface TxView {
  tx: string;
  height: number;
}
export interface DeviceView {
  device: string;
  this_device: boolean;
}
export interface RequestView {
  id: string;
  inviter: string;
  inviter_device: string;
  received_at_ms: number;
  members: number;
}
export interface DeliveryEntry {
  id: string;
  delivery: DeliveryView;
}
export interface BalanceView {
  account: string;
  balance: number;
  registered: boolean;
  height: number;
}
export interface PaymentView {
  tx: string;
  height: number;
  to: string;
  amount: number;
  balance: number;
}
export interface SetupDone {
  account: string;
  handle: string | null;
}
export type PolicyName = 'moderation' | 'echo_bot' | 'none';
export interface PolicyView {
  policy: PolicyName | 'unknown';
  code_hash: string | null;
  config: string | null;
}
export type StreamEvent =
  | ({ type: 'message' } & MessageView)
  | { type: 'delivery'; id: string; conversation: string; delivery: DeliveryView }
  | { type: 'erased'; conversation: string; id: string }
  | { type: 'held'; conversation: string; id: string }
  | { type: 'joined'; conversation: ConversationView }
  | { type: 'lagged'; skipped: number };

/** An API error: `status` 0 when the node could not be reached at all. */
export class ApiFailure extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { 'X-Cairn-Csrf': '1' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp: Response;
  try {
    resp = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiFailure(0, 'offline', 'The node is not answering. Check that `cairn up` is still running, then retry.');
  }
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  let json: unknown = undefined;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON */
  }
  if (!resp.ok) {
    const e = json as { error?: string; code?: string } | undefined;
    throw new ApiFailure(resp.status, e?.code ?? 'http', e?.error ?? `The node answered ${resp.status}. Retry, or see its log.`);
  }
  return json as T;
}

const enc = encodeURIComponent;

export const api = {
  login: (body: { code: string } | { passphrase: string }) => call<{ status: string }>('POST', '/v1/session', body),
  logout: () => call<void>('DELETE', '/v1/session'),
  status: () => call<StatusView>('GET', '/v1/status'),
  conversations: () => call<ConversationView[]>('GET', '/v1/conversations'),
  conversation: (id: string) => call<ConversationView>('GET', `/v1/conversations/${enc(id)}`),
  create: (members: string[]) => call<ConversationView>('POST', '/v1/conversations', { members }),
  addMembers: (id: string, members: string[]) =>
    call<ConversationView>('POST', `/v1/conversations/${enc(id)}/members`, { members }),
  removeMember: (id: string, member: string) =>
    call<ConversationView>('DELETE', `/v1/conversations/${enc(id)}/members/${enc(member)}`),
  leave: (id: string) => call<void>('POST', `/v1/conversations/${enc(id)}/leave`),
  send: (id: string, text: string) => call<SendResult>('POST', `/v1/conversations/${enc(id)}/messages`, { text }),
  messages: (id: string, after: number, limit: number) =>
    call<MessageView[]>('GET', `/v1/conversations/${enc(id)}/messages?after=${after}&limit=${limit}`),
  erase: (id: string, message: string) =>
    call<SendResult>('DELETE', `/v1/conversations/${enc(id)}/messages/${enc(message)}`),
  verify: (id: string) => call<VerifyView>('POST', `/v1/conversations/${enc(id)}/verify`),
  claimHandle: (name: string) => call<TxView>('POST', '/v1/handle', { name }),
  devices: () => call<DeviceView[]>('GET', '/v1/devices'),
  addDevice: (home: string, passphrase: string) => call<DeviceView>('POST', '/v1/devices', { home, passphrase }),
  revokeDevice: (device: string) => call<TxView>('DELETE', `/v1/devices/${enc(device)}`),
  requests: () => call<RequestView[]>('GET', '/v1/requests'),
  deliveries: (id: string) => call<DeliveryEntry[]>('GET', `/v1/conversations/${enc(id)}/deliveries`),
  policy: (id: string) => call<PolicyView>('GET', `/v1/conversations/${enc(id)}/policy`),
  setPolicy: (id: string, policy: PolicyName, words: string[] = []) =>
    call<unknown>('PUT', `/v1/conversations/${enc(id)}/policy`, policy === 'moderation' ? { policy, words } : { policy }),
  held: (id: string) => call<HeldListView>('GET', `/v1/conversations/${enc(id)}/held`),
  release: (id: string, message: string) =>
    call<MessageView>('POST', `/v1/conversations/${enc(id)}/held/${enc(message)}/release`),
  balance: () => call<BalanceView>('GET', '/v1/balance'),
  pay: (to: string, amount: number) => call<PaymentView>('POST', '/v1/payments', { to, amount }),
  setup: (code: string, passphrase: string, handle: string) =>
    call<SetupDone>('POST', '/v1/setup', { code, passphrase, handle: handle.trim() || null }),
  accept: (id: string) => call<ConversationView>('POST', `/v1/requests/${enc(id)}/accept`),
  decline: (id: string) => call<void>('POST', `/v1/requests/${enc(id)}/decline`),
};

/** Live events over /v1/stream; reconnects with backoff. Returns a stop function. */
export function openStream(onEvent: (e: StreamEvent) => void, onState: (live: boolean) => void): () => void {
  let ws: WebSocket | null = null;
  let stopped = false;
  let delay = 500;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const connect = () => {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/stream`;
    ws = new WebSocket(url);
    ws.onopen = () => {
      delay = 500;
      onState(true);
    };
    ws.onmessage = (m) => {
      try {
        onEvent(JSON.parse(String(m.data)) as StreamEvent);
      } catch {
        /* ignore a malformed frame */
      }
    };
    ws.onclose = () => {
      onState(false);
      if (stopped) return;
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 8000);
    };
  };
  connect();
  return () => {
    stopped = true;
    clearTimeout(timer);
    ws?.close();
  };
}

// Handles the node's conversation views do not know yet, read from the ledger (proof-checked by
// the node) once per account.
const handles = new Map<string, string | null>();
let onHandles: () => void = () => {};

/** Looks up the handles of `accounts` not known yet; calls `changed` when some arrive. */
export function resolveHandles(accounts: string[], changed: () => void) {
  onHandles = changed;
  for (const a of accounts) {
    if (handles.has(a)) continue;
    handles.set(a, null);
    call<{ handle: string | null }>('GET', `/v1/ledger/accounts/${enc(a)}`)
      .then((v) => {
        if (v.handle) {
          handles.set(a, v.handle);
          onHandles();
        } else handles.delete(a); // retry on the next look-up
      })
      .catch(() => handles.delete(a));
  }
}

/** "@alice" if the handle is known, else a shortened account id. */
export function who(account: string, handle: string | null | undefined): string {
  handle = handle || handles.get(account);
  if (handle) return `@${handle}`;
  return account.length > 16 ? `${account.slice(0, 12)}…${account.slice(-4)}` : account;
}

/** Splits "alice, @bob cairn1…" into ["@alice", "@bob", "cairn1…"]. */
export function parseMembers(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => (s.startsWith('cairn1') || s.startsWith('@') ? s : `@${s}`));
}

export function deliveryLabel(d: DeliveryView): string {
  switch (d.state) {
    case 'sent':
      return 'sent';
    case 'stored':
      return `stored on ${d.stored_on}`;
    case 'delivered':
      return `delivered to ${d.delivered_to} of ${d.members}`;
  }
}
