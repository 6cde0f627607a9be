// The Cairn web client: served by the node on its API address, logged in with a one-time
// `cairn web` link or the keystore passphrase (HttpOnly session cookie), live over /v1/stream.
import { render } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import {
  api,
  ApiFailure,
  openStream,
  resolveHandles,
  who,
  type ConversationView,
  type DeliveryView,
  type MessageView,
  type StatusView,
  type StreamEvent,
} from './api';
import { Chat, describe } from './Chat';
import { lastRead, markRead, savedTheme, saveTheme, type Theme } from './local';
import { Account, Devices, NewConversation, Requests } from './Panels';
import { SignUp } from './Setup';
import { Wallet } from './Wallet';
import './style.css';

type Phase = 'loading' | 'login' | 'setup' | 'starting' | 'ready';
type Pane = { kind: 'chat'; id: string } | { kind: 'new' } | { kind: 'devices' } | { kind: 'account' } | { kind: 'wallet' } | { kind: 'none' };

const rank = { sent: 0, stored: 1, delivered: 2 } as const;

function applyTheme(t: Theme | null) {
  const dark = t ? t === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}

function Login({ onDone, note }: { onDone: () => void; note: string }) {
  const [pass, setPass] = useState('');
  const [err, setErr] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <main class="login">
      <h1>Cairn</h1>
      <p>Unlock this node's web client with its keystore passphrase, or open the link that <code>cairn web</code> prints.</p>
      {note && <p class="notice" role="status">{note}</p>}
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setErr('');
          try {
            await api.login({ passphrase: pass });
            setPass('');
            onDone();
          } catch (x) {
            setErr(describe(x));
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="passphrase">Passphrase</label>
        <input id="passphrase" type="password" autocomplete="current-password" value={pass} onInput={(e) => setPass((e.target as HTMLInputElement).value)} autofocus />
        <button type="submit" disabled={busy || !pass}>
          {busy ? 'Unlocking…' : 'Unlock'}
        </button>
      </form>
      {err && (
        <p class="error" role="alert">
          {err}
        </p>
      )}
    </main>
  );
}

function App() {
  const [phase, setPhase] = useState<Phase>('loading');
  const [note, setNote] = useState('');
  const [status, setStatus] = useState<StatusView | null>(null);
  const [convs, setConvs] = useState<ConversationView[]>([]);
  const [pane, setPane] = useState<Pane>({ kind: 'none' });
  const [live, setLive] = useState<Map<string, MessageView[]>>(new Map());
  const [deliveries, setDeliveries] = useState<Map<string, DeliveryView>>(new Map());
  const [erased, setErased] = useState<Set<string>>(new Set());
  // Per conversation, bumped when its policy kept a message out of the history (or let one in):
  // an open held list re-reads itself.
  const [heldChanged, setHeldChanged] = useState<Map<string, number>>(new Map());
  // Bumped when live events may have been missed (stream reconnected or lagged): open views
  // re-read what they show from the node.
  const [resync, setResync] = useState(0);
  const [online, setOnline] = useState(false);
  const [error, setError] = useState('');
  const [theme, setTheme] = useState<Theme | null>(savedTheme());
  const [setupCode, setSetupCode] = useState('');
  const [, setReadTick] = useState(0);
  const paneRef = useRef(pane);
  paneRef.current = pane;

  useEffect(() => applyTheme(theme), [theme]);
  // Escape leaves a conversation or panel and puts the focus back on the list.
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key !== 'Escape' || paneRef.current.kind === 'none') return;
      setPane({ kind: 'none' });
      setTimeout(() => document.querySelector<HTMLElement>('.conv-list button')?.focus(), 0);
    };
    addEventListener('keydown', onKey);
    return () => removeEventListener('keydown', onKey);
  }, []);
  const [, setNames] = useState(0);
  useEffect(() => {
    const unknown = convs.flatMap((c) => c.members.filter((m) => !m.handle).map((m) => m.account));
    if (unknown.length) resolveHandles(unknown, () => setNames((n) => n + 1));
  }, [convs]);

  const report = useCallback((e: unknown) => {
    if (e instanceof ApiFailure && e.status === 401) {
      setPhase('login');
      setNote(e.message);
      return;
    }
    setError(describe(e));
  }, []);

  const refresh = useCallback(async () => {
    const [s, c] = await Promise.all([api.status(), api.conversations()]);
    setStatus(s);
    setConvs(c);
  }, []);

  // Start: a login code in the fragment is exchanged first, then the session is used.
  useEffect(() => {
    (async () => {
      const s = /^#setup=([0-9a-f]{64})$/.exec(location.hash);
      if (s) {
        setSetupCode(s[1]);
        history.replaceState(null, '', location.pathname);
      }
      const m = /^#login=([0-9a-f]{64})$/.exec(location.hash);
      if (m) {
        history.replaceState(null, '', location.pathname); // the code is single-use anyway
        try {
          await api.login({ code: m[1] });
        } catch (e) {
          setNote(describe(e));
        }
      }
      // A node that is still starting (its API up, the mesh not yet) answers 503, and one
      // restarting does not answer at all: wait for it (bounded) rather than show an error.
      const end = Date.now() + 60_000;
      for (;;) {
        try {
          await refresh();
          setPhase('ready');
        } catch (e) {
          const starting = e instanceof ApiFailure && (e.status === 0 || (e.status === 503 && e.code !== 'setup_required'));
          if (starting && Date.now() < end) {
            await new Promise((r) => setTimeout(r, 500));
            continue;
          }
          if (e instanceof ApiFailure && e.status === 401) setPhase('login');
          else if (e instanceof ApiFailure && e.code === 'setup_required') setPhase('setup');
          else {
            setPhase('login');
            setNote(describe(e));
          }
        }
        return;
      }
    })();
  }, []);

  // Live events while logged in.
  useEffect(() => {
    if (phase !== 'ready') return;
    const onEvent = (e: StreamEvent) => {
      if (e.type === 'message') {
        const { type: _t, ...m } = e;
        void _t;
        setLive((cur) => {
          const next = new Map(cur);
          const list = next.get(m.conversation) ?? [];
          next.set(m.conversation, [...list.slice(-500), m]);
          return next;
        });
        setConvs((cur) => cur.map((c) => (c.id === m.conversation ? { ...c, messages: Math.max(c.messages, m.seq) } : c)));
        const p = paneRef.current;
        if (p.kind === 'chat' && p.id === m.conversation && document.visibilityState === 'visible' && status) {
          markRead(status.account, m.conversation, m.seq);
        }
      } else if (e.type === 'delivery') {
        setDeliveries((cur) => new Map(cur).set(e.id, e.delivery));
      } else if (e.type === 'erased') {
        setErased((cur) => new Set(cur).add(e.id));
      } else if (e.type === 'held') {
        setHeldChanged((cur) => new Map(cur).set(e.conversation, (cur.get(e.conversation) ?? 0) + 1));
      } else if (e.type === 'joined') {
        setConvs((cur) => [e.conversation, ...cur.filter((c) => c.id !== e.conversation.id)]);
      } else if (e.type === 'lagged') {
        setResync((n) => n + 1);
        void refresh().catch(report);
      }
    };
    const stop = openStream(onEvent, (up) => {
      setOnline(up);
      if (up) {
        setResync((n) => n + 1);
        void refresh().catch(report);
      }
    });
    const poll = setInterval(() => void api.status().then(setStatus).catch(() => {}), 10_000);
    return () => {
      stop();
      clearInterval(poll);
    };
  }, [phase, status?.account]);

  if (phase === 'loading') return <p class="empty">Connecting to your node…</p>;
  if (phase === 'setup')
    return (
      <SignUp
        code={setupCode}
        onCreated={() => {
          setPhase('starting');
          // The node restarts with the new account on the same address: wait for it (bounded).
          const end = Date.now() + 180_000;
          const poll = () =>
            void refresh()
              .then(() => setPhase('ready'))
              .catch((e) => {
                if (Date.now() < end) setTimeout(poll, 500);
                else {
                  setPhase('login');
                  setNote(`Your account was created, but the node did not come up: ${describe(e)} Check that \`cairn up\` is still running, then reload.`);
                }
              });
          poll();
        }}
      />
    );
  if (phase === 'starting')
    return (
      <p class="empty" role="status">
        Account created. Starting your node…
      </p>
    );
  if (phase === 'login')
    return (
      <Login
        note={note}
        onDone={() => {
          setNote('');
          void refresh()
            .then(() => setPhase('ready'))
            .catch(report);
        }}
      />
    );
  if (!status) return null;
  const me = status.account;
  const current = pane.kind === 'chat' ? convs.find((c) => c.id === pane.id) : undefined;
  const open = (id: string) => setPane({ kind: 'chat', id });
  const showMain = pane.kind !== 'none';

  const onConvKey = (e: KeyboardEvent, i: number) => {
    const items = Array.from(document.querySelectorAll<HTMLElement>('.conv-list button'));
    if (e.key === 'ArrowDown') items[Math.min(items.length - 1, i + 1)]?.focus();
    else if (e.key === 'ArrowUp') items[Math.max(0, i - 1)]?.focus();
    else return;
    e.preventDefault();
  };

  return (
    <div class={`app ${showMain ? 'has-main' : ''}`}>
      <nav class="side" aria-label="Conversations and settings">
        <header class="side-head">
          <h1>Cairn</h1>
          <span class={`dot ${online ? 'on' : 'off'}`} role="status" aria-label={online ? 'Live' : 'Reconnecting'} title={online ? 'Live' : 'Reconnecting…'} />
          <button
            class="icon"
            aria-label={`Switch to ${document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark'} theme`}
            onClick={() => {
              const t: Theme = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
              saveTheme(t);
              setTheme(t);
            }}
          >
            ◐
          </button>
        </header>
        <div class="me">
          <strong data-testid="me">{status.handle ? `@${status.handle}` : 'No handle yet'}</strong>
          <span class="muted small">
            {status.peers} peer{status.peers === 1 ? '' : 's'} · ledger {status.ledger_height ?? 'unreachable'}
            {status.pending_sends ? ` · ${status.pending_sends} awaiting more store copies` : ''}
          </span>
        </div>
        <div class="side-actions">
          <button onClick={() => setPane({ kind: 'new' })}>New conversation</button>
          <button onClick={() => setPane({ kind: 'devices' })}>Devices</button>
          <button onClick={() => setPane({ kind: 'account' })}>Account</button>
          <button onClick={() => setPane({ kind: 'wallet' })}>Wallet</button>
        </div>
        <Requests report={report} onJoined={(c) => setConvs((cur) => [c, ...cur.filter((x) => x.id !== c.id)])} />
        <ul class="conv-list" aria-label="Conversations">
          {convs.length === 0 && <li class="muted small pad">No conversations yet: start one with “New conversation”.</li>}
          {convs.map((c, i) => {
            const unread = Math.max(0, c.messages - lastRead(me, c.id));
            const name = c.members.filter((m) => m.account !== me).map((m) => who(m.account, m.handle)).join(', ') || 'Only you';
            const selected = pane.kind === 'chat' && pane.id === c.id;
            return (
              <li key={c.id}>
                <button
                  class={selected ? 'selected' : ''}
                  aria-current={selected ? 'true' : undefined}
                  onClick={() => open(c.id)}
                  onKeyDown={(e) => onConvKey(e, i)}
                  data-testid="conversation"
                  data-id={c.id}
                >
                  <span class="conv-name">{name}</span>
                  <span class="muted small">
                    {c.members.length > 2 ? `group of ${c.members.length} · ` : ''}
                    {c.messages} msg
                  </span>
                  {!c.active && <span class="muted small"> (left)</span>}
                  {unread > 0 && !selected && (
                    <span class="unread" aria-label={`${unread} unread`} data-testid="unread">
                      {unread}
                    </span>
                  )}
                </button>
              </li>
            );
          })}
        </ul>
      </nav>
      <main class="main">
        <h1 class="sr main-h1">Cairn</h1>
        {error && (
          <div class="error" role="alert">
            {error}
            <button class="link" onClick={() => setError('')} aria-label="Dismiss error">
              ×
            </button>
          </div>
        )}
        {pane.kind === 'chat' && current && (
          <Chat
            key={current.id}
            me={me}
            conv={current}
            live={live.get(current.id) ?? []}
            deliveries={deliveries}
            erased={erased}
            resync={resync}
            heldChanged={heldChanged.get(current.id) ?? 0}
            onErased={(id) => setErased((cur) => new Set(cur).add(id))}
            onDelivery={(list) =>
              setDeliveries((cur) => {
                // The stream may already have a later state than the send's answer or the
                // node's list: a state never goes back.
                let next: Map<string, DeliveryView> | null = null;
                for (const [id, d] of list) {
                  const old = cur.get(id);
                  if (old && (rank[old.state] > rank[d.state] || (rank[old.state] === rank[d.state] && old.delivered_to >= d.delivered_to && old.stored_on >= d.stored_on))) continue;
                  next ??= new Map(cur);
                  next.set(id, d);
                }
                return next ?? cur;
              })
            }
            onChanged={(c) => {
              if (c) setConvs((cur) => cur.map((x) => (x.id === c.id ? c : x)));
              else void refresh().catch(report);
              setReadTick((t) => t + 1);
            }}
            onBack={() => setPane({ kind: 'none' })}
            report={report}
          />
        )}
        {pane.kind === 'new' && (
          <NewConversation
            report={report}
            onBack={() => setPane({ kind: 'none' })}
            onCreated={(c) => {
              setConvs((cur) => [c, ...cur.filter((x) => x.id !== c.id)]);
              open(c.id);
            }}
          />
        )}
        {pane.kind === 'wallet' && <Wallet onBack={() => setPane({ kind: 'none' })} />}
        {pane.kind === 'devices' && <Devices report={report} onBack={() => setPane({ kind: 'none' })} />}
        {pane.kind === 'account' && (
          <Account
            status={status}
            report={report}
            onBack={() => setPane({ kind: 'none' })}
            onChanged={() => void refresh().catch(report)}
            onLogout={() => {
              setPhase('login');
              setStatus(null);
            }}
          />
        )}
        {pane.kind === 'none' && <p class="empty wide">Choose a conversation, or start a new one.</p>}
      </main>
    </div>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
