// A conversation's policy contract (issue 13): the one pinned in its MLS group context, and
// pinning another (a commit sequenced on the ledger; the current policy must allow it).
import { useEffect, useState } from 'preact/hooks';
import { api, type PolicyName } from './api';

const LABELS: Record<string, string> = {
  none: 'none',
  moderation: 'moderation (roles, rate limit, word filter)',
  echo_bot: 'echo bot',
  unknown: 'a policy this version does not ship',
};

export function Policy({ id, act, busy }: { id: string; busy: string; act: (what: string, f: () => Promise<void>) => Promise<void> }) {
  const [current, setCurrent] = useState<string | null>(null);
  const [want, setWant] = useState<PolicyName>('moderation');
  const [words, setWords] = useState('');
  useEffect(() => {
    api
      .policy(id)
      .then((p) => setCurrent(p.policy))
      .catch(() => setCurrent(null));
  }, [id]);
  return (
    <div class="row policy">
      <span data-testid="policy">Policy: {current === null ? '…' : (LABELS[current] ?? current)}</span>
      <label class="sr" for="policy-choice">
        Policy to pin
      </label>
      <select id="policy-choice" value={want} onChange={(e) => setWant((e.target as HTMLSelectElement).value as PolicyName)}>
        <option value="moderation">moderation</option>
        <option value="echo_bot">echo bot</option>
        <option value="none">none</option>
      </select>
      {want === 'moderation' && (
        <>
          <label class="sr" for="policy-words">
            Filtered words
          </label>
          <input
            id="policy-words"
            value={words}
            placeholder="filtered words (held), comma-separated"
            onInput={(e) => setWords((e.target as HTMLInputElement).value)}
          />
        </>
      )}
      <button
        disabled={busy === 'policy'}
        onClick={() =>
          void act('policy', async () => {
            const list = words
              .split(/[\s,]+/)
              .map((w) => w.trim())
              .filter(Boolean);
            await api.setPolicy(id, want, list);
            setCurrent((await api.policy(id)).policy);
          })
        }
      >
        {busy === 'policy' ? 'Pinning… (waiting for the ledger)' : 'Set policy'}
      </button>
    </div>
  );
}
