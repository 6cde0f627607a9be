// Sign-up: a node started without an account (`cairn up` on an empty data directory) serves
// this page with a one-time setup link (#setup=CODE). The passphrase protects the new keystore;
// the handle, if given, is claimed by the node once its account is registered.
import { useState } from 'preact/hooks';
import { api } from './api';
import { describe } from './Chat';

export function SignUp({ code, onCreated }: { code: string; onCreated: (handle: string | null) => void }) {
  const [pass, setPass] = useState('');
  const [again, setAgain] = useState('');
  const [handle, setHandle] = useState('');
  const [err, setErr] = useState('');
  const [busy, setBusy] = useState(false);
  const mismatch = again.length > 0 && pass !== again;
  return (
    <main class="login">
      <h1>Cairn</h1>
      <h2>Create your account</h2>
      {!code && (
        <p class="error" role="alert">
          This page needs the setup link that <code>cairn up</code> printed (it ends with <code>#setup=…</code>): open that exact link.
        </p>
      )}
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          if (pass !== again) return;
          setBusy(true);
          setErr('');
          try {
            const done = await api.setup(code, pass, handle.replace(/^@/, ''));
            setPass('');
            setAgain('');
            onCreated(done.handle);
          } catch (x) {
            setErr(describe(x));
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for="new-pass">Passphrase (at least 8 characters; it protects your identity key and unlocks this page)</label>
        <input id="new-pass" type="password" autocomplete="new-password" value={pass} onInput={(e) => setPass((e.target as HTMLInputElement).value)} autofocus />
        <label for="new-pass-2">Repeat the passphrase</label>
        <input
          id="new-pass-2"
          type="password"
          autocomplete="new-password"
          value={again}
          aria-invalid={mismatch}
          onInput={(e) => setAgain((e.target as HTMLInputElement).value)}
        />
        {mismatch && <p class="muted small">The two passphrases differ.</p>}
        <label for="new-handle">Handle (optional: how others find you, e.g. alice)</label>
        <input id="new-handle" value={handle} placeholder="alice" onInput={(e) => setHandle((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy || !code || pass.length < 8 || pass !== again}>
          {busy ? 'Creating… (deriving the keystore key)' : 'Create account'}
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
