// Balance and a payment to a handle or account (a ledger transfer the node signs and waits
// for). Refusals (insufficient funds, unknown recipient) are shown beside the form.
import { useEffect, useState } from 'preact/hooks';
import { api, ApiFailure, type BalanceView } from './api';
import { describe } from './Chat';

export function Wallet({ onBack }: { onBack: () => void }) {
  const [bal, setBal] = useState<BalanceView | null>(null);
  const [to, setTo] = useState('');
  const [amount, setAmount] = useState('');
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState('');
  const [err, setErr] = useState('');
  const load = () =>
    api
      .balance()
      .then(setBal)
      .catch((e) => setErr(describe(e)));
  useEffect(() => void load(), []);
  const n = Number(amount);
  const valid = to.trim() !== '' && Number.isSafeInteger(n) && n > 0;
  return (
    <section class="panel" aria-labelledby="wallet-title">
      <header class="chat-head">
        <button class="back" onClick={onBack} aria-label="Back to conversations">
          ‹
        </button>
        <h2 id="wallet-title">Wallet</h2>
      </header>
      <dl>
        <dt>Balance</dt>
        <dd data-testid="balance">{bal ? bal.balance.toLocaleString('en') : '…'}</dd>
        {bal && !bal.registered && <dd class="muted small">Your account is not on the ledger yet: it registers when the node first reaches it.</dd>}
        {bal && <dd class="muted small">at ledger height {bal.height}</dd>}
      </dl>
      <h3>Pay</h3>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          if (!valid) return;
          setBusy(true);
          setDone('');
          setErr('');
          try {
            const p = await api.pay(to.trim().startsWith('cairn1') || to.trim().startsWith('@') ? to.trim() : `@${to.trim()}`, n);
            setDone(`Paid ${p.amount.toLocaleString('en')} at ledger height ${p.height}.`);
            setBal((b) => (b ? { ...b, balance: p.balance, height: p.height } : b));
            setAmount('');
          } catch (x) {
            setErr(x instanceof ApiFailure && x.code === 'insufficient_funds' ? `Not enough funds. ${x.message}` : describe(x));
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="pay-to">To: a handle or account id</label>
        <input id="pay-to" value={to} placeholder="@bob" onInput={(e) => setTo((e.target as HTMLInputElement).value)} />
        <label for="pay-amount">Amount</label>
        <input id="pay-amount" inputMode="numeric" value={amount} placeholder="100" onInput={(e) => setAmount((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy || !valid}>
          {busy ? 'Paying… (waiting for the ledger)' : 'Pay'}
        </button>
      </form>
      {done && <p role="status">{done}</p>}
      {err && (
        <p class="error" role="alert">
          {err}
        </p>
      )}
    </section>
  );
}
