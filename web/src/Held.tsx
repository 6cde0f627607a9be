// What the conversation's policy kept out of the history on this device (issue 13): held
// messages with the reason, which the user may release into the history; denied messages
// (reason only: their text is not kept); removals the policy proposed.
import { useEffect, useState } from 'preact/hooks';
import { api, who, type HeldListView, type MessageView } from './api';

export function Held({
  id,
  version,
  handleOf,
  onReleased,
  report,
}: {
  id: string;
  /** Changes when the held list may have changed (a live `held` event): read it again. */
  version: number;
  /** A member's handle, if the conversation knows it. */
  handleOf: (account: string) => string | null;
  onReleased: (m: MessageView) => void;
  report: (e: unknown) => void;
}) {
  const [list, setList] = useState<HeldListView | null>(null);
  const [busy, setBusy] = useState('');
  const load = () =>
    void api
      .held(id)
      .then(setList)
      .catch((e) => {
        setList({ held: [], denied: [], proposed_removals: [] });
        report(e);
      });
  useEffect(load, [id, version]);
  if (!list) return <div class="held">Loading held messages…</div>;
  const empty = !list.held.length && !list.denied.length && !list.proposed_removals.length;
  return (
    <div class="held" aria-label="Held messages" role="region">
      <div class="row">
        <strong>Held by the policy</strong>
        <button class="link small" onClick={load}>
          Refresh
        </button>
      </div>
      {empty && <p class="muted small">Nothing held: the policy let every message through.</p>}
      <ul>
        {list.held.map((h) => (
          <li key={h.id} data-testid="held">
            <div>
              <strong>{who(h.sender, handleOf(h.sender))}</strong>: <span class="held-text">{h.text}</span>
            </div>
            <div class="small muted" data-testid="held-reason">
              {h.reason}
            </div>
            {!h.waiting && (
              <button
                disabled={busy === h.id}
                aria-label={`Release held message “${h.text.slice(0, 40)}”`}
                onClick={() => {
                  setBusy(h.id);
                  api
                    .release(id, h.id)
                    .then((m) => {
                      onReleased(m);
                      load();
                    })
                    .catch(report)
                    .finally(() => setBusy(''));
                }}
              >
                Release
              </button>
            )}
          </li>
        ))}
        {list.denied.map((d) => (
          <li key={d.id} data-testid="denied">
            <strong>{who(d.sender, handleOf(d.sender))}</strong>: denied, its text is not kept.{' '}
            <span class="small muted">{d.reason}</span>
          </li>
        ))}
        {list.proposed_removals.map((r) => (
          <li key={r.id} data-testid="proposed-removal">
            The policy proposes removing <strong>{who(r.account, handleOf(r.account))}</strong> (after a message of {who(r.sender, handleOf(r.sender))}).
          </li>
        ))}
      </ul>
    </div>
  );
}
