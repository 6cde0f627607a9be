// One conversation: history (virtualized, older pages loaded on scroll up), the composer with
// live delivery states, members with fingerprints and verification, verify, leave.
import { useEffect, useRef, useState } from 'preact/hooks';
import {
  api,
  ApiFailure,
  deliveryLabel,
  parseMembers,
  who,
  type ConversationView,
  type DeliveryView,
  type MessageView,
  type VerifyView,
} from './api';
import { markRead, markVerified, verifiedFingerprint } from './local';
import { Held } from './Held';
import { Policy } from './Policy';
import { VirtualList } from './VirtualList';

const PAGE = 100;

export interface ChatProps {
  me: string;
  conv: ConversationView;
  /** Messages that arrived over the stream for this conversation (appended in order). */
  live: MessageView[];
  deliveries: Map<string, DeliveryView>;
  /** Messages erased by their author (dropped from the view). */
  erased: Set<string>;
  /** Changes when live events may have been missed: catch up from the node. */
  resync: number;
  /** Changes when the policy kept a message of this conversation out of the history. */
  heldChanged: number;
  onErased: (id: string) => void;
  /** New delivery states (`[message id, state]`); older states than shown are ignored. */
  onDelivery: (list: [string, DeliveryView][]) => void;
  onChanged: (c: ConversationView | null) => void;
  onBack: () => void;
  report: (e: unknown) => void;
}

function time(ms: number) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function Chat({
  me,
  conv,
  live,
  deliveries,
  erased,
  resync,
  heldChanged,
  onErased,
  onDelivery,
  onChanged,
  onBack,
  report,
}: ChatProps) {
  const [msgs, setMsgs] = useState<MessageView[]>([]);
  const [loading, setLoading] = useState(true);
  const [text, setText] = useState('');
  const [showMembers, setShowMembers] = useState(false);
  const [showHeld, setShowHeld] = useState(false);
  const [verify, setVerify] = useState<VerifyView | null>(null);
  const [busy, setBusy] = useState('');
  const older = useRef({ loading: false, done: false });
  const input = useRef<HTMLTextAreaElement>(null);

  // Delivery states of own messages, from the node (the stream only carries changes).
  const loadDeliveries = () =>
    void api
      .deliveries(conv.id)
      .then((list) => onDelivery(list.map((d) => [d.id, d.delivery])))
      .catch(() => {});

  // Initial page: the newest PAGE messages.
  useEffect(() => {
    let gone = false;
    setMsgs([]);
    setLoading(true);
    setVerify(null);
    older.current = { loading: false, done: false };
    const after = Math.max(0, conv.messages - PAGE);
    api
      .messages(conv.id, after, PAGE + 1000)
      .then((m) => {
        if (gone) return;
        setMsgs(m);
        older.current.done = after === 0;
        setLoading(false);
        loadDeliveries();
      })
      .catch((e) => {
        if (!gone) {
          setLoading(false);
          report(e);
        }
      });
    input.current?.focus();
    return () => {
      gone = true;
    };
  }, [conv.id]);

  // Stream arrivals: append the ones newer than what is shown.
  useEffect(() => {
    if (!live.length) return;
    setMsgs((cur) => {
      const last = cur.length ? cur[cur.length - 1].seq : 0;
      const seen = new Set(cur.map((m) => m.id));
      const add = live.filter((m) => m.seq > last && !seen.has(m.id));
      return add.length ? [...cur, ...add] : cur;
    });
  }, [live]);

  useEffect(() => {
    if (msgs.length) markRead(me, conv.id, msgs[msgs.length - 1].seq);
  }, [msgs, me, conv.id]);

  // After a reconnect or a lagged stream: read what arrived after the newest shown message.
  const newest = useRef(0);
  newest.current = msgs.length ? msgs[msgs.length - 1].seq : 0;
  useEffect(() => {
    if (!resync || loading) return;
    let gone = false;
    loadDeliveries();
    api
      .messages(conv.id, newest.current, 1000)
      .then((m) => {
        if (gone || !m.length) return;
        setMsgs((cur) => {
          const last = cur.length ? cur[cur.length - 1].seq : 0;
          const seen = new Set(cur.map((x) => x.id));
          const add = m.filter((x) => x.seq > last && !seen.has(x.id));
          return add.length ? [...cur, ...add] : cur;
        });
      })
      .catch(() => {});
    return () => {
      gone = true;
    };
  }, [resync]);

  const loadOlder = () => {
    const o = older.current;
    if (o.loading || o.done || !msgs.length) return;
    const first = msgs[0].seq;
    if (first <= 1) {
      o.done = true;
      return;
    }
    o.loading = true;
    const after = Math.max(0, first - 1 - PAGE);
    api
      .messages(conv.id, after, first - 1 - after)
      .then((m) => {
        setMsgs((cur) => [...m.filter((x) => x.seq < (cur[0]?.seq ?? Infinity)), ...cur]);
        o.done = after === 0;
      })
      .catch(report)
      .finally(() => {
        o.loading = false;
      });
  };

  // One send at a time, in the order typed: concurrent requests could reach the node in
  // another order, and the conversation's order is the one the node sends in.
  const sending = useRef<Promise<void>>(Promise.resolve());
  const send = (e?: Event) => {
    e?.preventDefault();
    const body = text.trim();
    if (!body) return;
    setText('');
    sending.current = sending.current.then(async () => {
      try {
        const r = await api.send(conv.id, body);
        onDelivery([[r.id, r.delivery]]);
      } catch (err) {
        setText(body); // nothing typed is lost
        report(err);
      }
    });
  };

  const act = async (what: string, f: () => Promise<void>) => {
    setBusy(what);
    try {
      await f();
    } catch (e) {
      report(e);
    } finally {
      setBusy('');
    }
  };

  const title = conv.members.filter((m) => m.account !== me).map((m) => who(m.account, m.handle)).join(', ') || 'Only you';

  return (
    <section class="chat" aria-label={`Conversation with ${title}`} data-conv={conv.id}>
      <header class="chat-head">
        <button class="back" onClick={onBack} aria-label="Back to conversations">
          ‹
        </button>
        <div class="chat-title">
          <h2>{title}</h2>
          <span class="muted">
            {conv.members.length} member{conv.members.length === 1 ? '' : 's'} · epoch {conv.epoch}
            {conv.active ? '' : ' · you left'}
          </span>
        </div>
        <button onClick={() => setShowMembers((s) => !s)} aria-expanded={showMembers}>
          Members
        </button>
        <button onClick={() => setShowHeld((s) => !s)} aria-expanded={showHeld}>
          Held
        </button>
        <button
          disabled={busy === 'verify'}
          onClick={() => act('verify', async () => setVerify(await api.verify(conv.id)))}
        >
          {busy === 'verify' ? 'Verifying…' : 'Verify'}
        </button>
      </header>
      {verify && (
        <div class={`verify ${verify.intact ? 'ok' : 'bad'}`} role="status" data-testid="verify-result">
          {verify.intact
            ? `History intact: ${verify.envelopes} envelopes, ${verify.signatures_verified} signatures, ${verify.anchors} ledger anchors checked.`
            : `${verify.problems} problem(s): ${verify.first_problem ?? 'unknown'}. Do not trust this history; ask the members over another channel.`}
          <button class="link" onClick={() => setVerify(null)} aria-label="Dismiss">
            ×
          </button>
        </div>
      )}
      {showMembers && (
        <Members
          me={me}
          conv={conv}
          busy={busy}
          act={act}
          onChanged={onChanged}
        />
      )}
      {showHeld && (
        <Held
          id={conv.id}
          version={heldChanged + resync}
          handleOf={(a) => conv.members.find((m) => m.account === a)?.handle ?? null}
          report={report}
          onReleased={(m) =>
            // A released message takes its place at the end of the history.
            setMsgs((cur) => (cur.some((x) => x.id === m.id) ? cur : [...cur, m]))
          }
        />
      )}
      {loading ? (
        <p class="empty grow">Loading history…</p>
      ) : msgs.length === 0 ? (
        <p class="empty grow">No messages yet. Say hello below.</p>
      ) : (
        <VirtualList
          label="Messages"
          items={erased.size ? msgs.filter((m) => !erased.has(m.id)) : msgs}
          keyOf={(m) => m.id}
          onNearTop={loadOlder}
          render={(m) => {
            const mine = m.sender === me;
            const d = deliveries.get(m.id);
            return (
              <div class={`msg ${mine ? 'mine' : ''}`} data-seq={m.seq}>
                <div class="bubble">
                  {!mine && <div class="sender">{who(m.sender, m.handle)}</div>}
                  <div class="text">{m.text}</div>
                  <div class="meta">
                    {time(m.timestamp_ms)}
                    {m.after_gap && ' · some earlier messages are missing'}
                    {m.verdict === 'released' && ' · released from hold'}
                    {m.labels?.length ? ` · ${m.labels.join(', ')}` : ''}
                    {mine && (
                      // Always there, with room for the longest state: a state change never
                      // resizes the bubble (no layout shift).
                      <span class={`state ${d?.state ?? ''}`} data-testid={d ? 'delivery' : undefined}>
                        {d ? `· ${deliveryLabel(d)}` : ''}
                      </span>
                    )}
                    {mine && conv.active && (
                      <button
                        class="link small erase"
                        aria-label={`Erase message “${m.text.slice(0, 40)}”`}
                        onClick={() => {
                          if (!confirm('Erase this message for everyone? Members' + "'" + ' devices delete its text; this cannot be undone.')) return;
                          api
                            .erase(conv.id, m.id)
                            .then(() => onErased(m.id))
                            .catch(report);
                        }}
                      >
                        Erase
                      </button>
                    )}
                  </div>
                </div>
              </div>
            );
          }}
        />
      )}
      {conv.active ? (
        <form class="composer" onSubmit={send}>
          <label class="sr" for="composer">
            Message
          </label>
          <textarea
            id="composer"
            ref={input}
            rows={1}
            value={text}
            placeholder="Write a message"
            title="Enter sends, Shift+Enter starts a new line"
            onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
            onKeyDown={(e) => {
              if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
                e.preventDefault();
                void send();
              }
            }}
          />
          <button type="submit" disabled={!text.trim()}>
            Send
          </button>
        </form>
      ) : (
        <p class="empty">You are no longer a member of this conversation.</p>
      )}
    </section>
  );
}

function Members({
  me,
  conv,
  busy,
  act,
  onChanged,
}: {
  me: string;
  conv: ConversationView;
  busy: string;
  act: (what: string, f: () => Promise<void>) => Promise<void>;
  onChanged: (c: ConversationView | null) => void;
}) {
  const [add, setAdd] = useState('');
  const [, setTick] = useState(0);
  return (
    <div class="members" aria-label="Members">
      <ul>
        {conv.members.map((m) => {
          const v = verifiedFingerprint(me, m.account);
          const isVerified = v === m.fingerprint;
          return (
            <li key={m.account} data-testid="member">
              <div>
                <strong>{who(m.account, m.handle)}</strong>
                {m.account === me && ' (you)'}
                {isVerified && <span class="badge ok"> verified</span>}
                {v && !isVerified && <span class="badge bad"> fingerprint changed!</span>}
              </div>
              <div class="mono small">{m.account}</div>
              <div class="small">
                Fingerprint: <span class="mono">{m.fingerprint}</span>
              </div>
              <div class="small muted">
                {m.devices.length} device{m.devices.length === 1 ? '' : 's'}: {m.devices.map((d) => d.slice(0, 14) + '…').join(', ')}
              </div>
              {m.account !== me && (
                <div class="row">
                  {!isVerified && (
                    <button
                      onClick={() => {
                        if (
                          confirm(
                            `Compare this fingerprint with ${who(m.account, m.handle)} in person or on a call:\n\n${m.fingerprint}\n\nMark verified only if it matches exactly.`,
                          )
                        ) {
                          markVerified(me, m.account, m.fingerprint);
                          setTick((t) => t + 1);
                        }
                      }}
                    >
                      Mark verified
                    </button>
                  )}
                  {conv.active && (
                    <button
                      class="danger"
                      disabled={!!busy}
                      onClick={() =>
                        act('remove', async () => onChanged(await api.removeMember(conv.id, m.account)))
                      }
                    >
                      Remove
                    </button>
                  )}
                </div>
              )}
            </li>
          );
        })}
      </ul>
      {conv.active && (
        <>
          <Policy id={conv.id} busy={busy} act={act} />
          <form
            class="row"
            onSubmit={(e) => {
              e.preventDefault();
              const list = parseMembers(add);
              if (!list.length) return;
              void act('add', async () => {
                onChanged(await api.addMembers(conv.id, list));
                setAdd('');
              });
            }}
          >
            <label class="sr" for="add-members">
              Add members
            </label>
            <input id="add-members" value={add} placeholder="@handle or cairn1…" onInput={(e) => setAdd((e.target as HTMLInputElement).value)} />
            <button type="submit" disabled={busy === 'add'}>
              {busy === 'add' ? 'Adding…' : 'Add'}
            </button>
          </form>
          <button
            class="danger"
            onClick={() => {
              if (confirm('Leave this conversation? You will stop receiving its messages.'))
                void act('leave', async () => {
                  await api.leave(conv.id);
                  onChanged(null);
                });
            }}
          >
            Leave conversation
          </button>
        </>
      )}
    </div>
  );
}

export function describe(e: unknown): string {
  if (e instanceof ApiFailure) return e.message;
  return e instanceof Error ? e.message : String(e);
}
