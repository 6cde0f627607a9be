// Side panels: a new conversation, devices, the account (handle, fingerprint, log out) and
// invitations waiting for consent.
import { useEffect, useState } from 'preact/hooks';
import { api, parseMembers, who, type ConversationView, type DeviceView, type RequestView, type StatusView } from './api';

type Report = (e: unknown) => void;

function Back({ onBack }: { onBack: () => void }) {
  return (
    <button class="back" onClick={onBack} aria-label="Back to conversations">
      ‹
    </button>
  );
}

export function NewConversation({ report, onBack, onCreated }: { report: Report; onBack: () => void; onCreated: (c: ConversationView) => void }) {
  const [members, setMembers] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <section class="panel" aria-labelledby="new-title">
      <header class="chat-head">
        <Back onBack={onBack} />
        <h2 id="new-title">New conversation</h2>
      </header>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const list = parseMembers(members);
          if (!list.length) return;
          setBusy(true);
          try {
            onCreated(await api.create(list));
            setMembers('');
          } catch (x) {
            report(x);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="members">Members: handles or account ids, separated by spaces or commas</label>
        <input id="members" value={members} placeholder="@bob @carol" onInput={(e) => setMembers((e.target as HTMLInputElement).value)} autofocus />
        <button type="submit" disabled={busy || !members.trim()}>
          {busy ? 'Creating… (inviting each device)' : 'Create'}
        </button>
      </form>
    </section>
  );
}

export function Devices({ report, onBack }: { report: Report; onBack: () => void }) {
  const [list, setList] = useState<DeviceView[] | null>(null);
  const [home, setHome] = useState('');
  const [pass, setPass] = useState('');
  const [busy, setBusy] = useState('');
  const load = () => api.devices().then(setList).catch(report);
  useEffect(() => void load(), []);
  return (
    <section class="panel" aria-labelledby="dev-title">
      <header class="chat-head">
        <Back onBack={onBack} />
        <h2 id="dev-title">Devices</h2>
      </header>
      {list === null ? (
        <p class="muted">Reading the ledger…</p>
      ) : (
        <ul class="plain">
          {list.map((d) => (
            <li key={d.device} data-testid="device">
              <span class="mono small">{d.device}</span>
              {d.this_device ? (
                <span class="badge"> this device</span>
              ) : (
                <button
                  class="danger"
                  disabled={!!busy}
                  onClick={async () => {
                    if (!confirm('Revoke this device? It will be removed from every conversation and can no longer read new messages.')) return;
                    setBusy(d.device);
                    try {
                      await api.revokeDevice(d.device);
                      await load();
                    } catch (e) {
                      report(e);
                    } finally {
                      setBusy('');
                    }
                  }}
                >
                  {busy === d.device ? 'Revoking…' : 'Revoke'}
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
      <h3>Link a new device</h3>
      <p class="small muted">Creates the new device's keystore in a data directory on this machine; then run <code>cairn --home DIR up</code> there.</p>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy('add');
          try {
            await api.addDevice(home, pass);
            setHome('');
            setPass('');
            await load();
          } catch (x) {
            report(x);
          } finally {
            setBusy('');
          }
        }}
      >
        <label for="dev-home">Data directory of the new device</label>
        <input id="dev-home" value={home} placeholder="/home/me/.local/share/cairn-laptop" onInput={(e) => setHome((e.target as HTMLInputElement).value)} />
        <label for="dev-pass">Passphrase for the new device's keystore</label>
        <input id="dev-pass" type="password" autocomplete="new-password" value={pass} onInput={(e) => setPass((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={!!busy || !home || !pass}>
          {busy === 'add' ? 'Linking…' : 'Link device'}
        </button>
      </form>
    </section>
  );
}

export function Account({
  status,
  report,
  onBack,
  onChanged,
  onLogout,
}: {
  status: StatusView;
  report: Report;
  onBack: () => void;
  onChanged: () => void;
  onLogout: () => void;
}) {
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState('');
  return (
    <section class="panel" aria-labelledby="acc-title">
      <header class="chat-head">
        <Back onBack={onBack} />
        <h2 id="acc-title">Account</h2>
      </header>
      <dl>
        <dt>Handle</dt>
        <dd data-testid="handle">{status.handle ? `@${status.handle}` : 'none yet'}</dd>
        <dt>Account</dt>
        <dd class="mono small">{status.account}</dd>
        <dt>Fingerprint (compare out of band)</dt>
        <dd class="mono" data-testid="fingerprint">{status.fingerprint}</dd>
        <dt>This device</dt>
        <dd class="mono small">{status.device}</dd>
        <dt>Roles</dt>
        <dd>{status.roles.join(', ')}</dd>
      </dl>
      <h3>Claim a handle</h3>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setDone('');
          try {
            const tx = await api.claimHandle(name.trim().replace(/^@/, ''));
            setDone(`Claimed at ledger height ${tx.height}.`);
            setName('');
            onChanged();
          } catch (x) {
            report(x);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="handle">Handle</label>
        <input id="handle" value={name} placeholder="alice" onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy || !name.trim()}>
          {busy ? 'Claiming… (waiting for the ledger)' : 'Claim'}
        </button>
      </form>
      {done && <p role="status">{done}</p>}
      <h3>Session</h3>
      <button
        onClick={async () => {
          try {
            await api.logout();
          } catch (e) {
            report(e);
          }
          onLogout();
        }}
      >
        Log out of this browser
      </button>
    </section>
  );
}

export function Requests({ report, onJoined }: { report: Report; onJoined: (c: ConversationView) => void }) {
  const [list, setList] = useState<RequestView[]>([]);
  useEffect(() => {
    const load = () => api.requests().then(setList).catch(() => {});
    void load();
    const t = setInterval(load, 5000);
    return () => clearInterval(t);
  }, []);
  if (!list.length) return null;
  return (
    <section class="requests" aria-label="Invitations">
      <h3>Invitations</h3>
      <ul class="plain">
        {list.map((r) => (
          <li key={r.id}>
            <span>
              {who(r.inviter, null)} invites you ({r.members} devices)
            </span>
            <button
              onClick={async () => {
                try {
                  onJoined(await api.accept(r.id));
                  setList((l) => l.filter((x) => x.id !== r.id));
                } catch (e) {
                  report(e);
                }
              }}
            >
              Accept
            </button>
            <button
              onClick={async () => {
                try {
                  await api.decline(r.id);
                  setList((l) => l.filter((x) => x.id !== r.id));
                } catch (e) {
                  report(e);
                }
              }}
            >
              Decline
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}
