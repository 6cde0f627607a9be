// What the browser keeps for itself (never a credential): read positions, verified members and
// the theme. Keys carry this node's account so two accounts on one machine stay apart.
function get(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}
function set(key: string, value: string) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* storage full or disabled: the feature just forgets */
  }
}

export function lastRead(account: string, conv: string): number {
  return Number(get(`cairn.read.${account}.${conv}`) ?? 0) || 0;
}
export function markRead(account: string, conv: string, seq: number) {
  if (seq > lastRead(account, conv)) set(`cairn.read.${account}.${conv}`, String(seq));
}
/** The fingerprint the user confirmed for `member`, if any. */
export function verifiedFingerprint(account: string, member: string): string | null {
  return get(`cairn.verified.${account}.${member}`);
}
export function markVerified(account: string, member: string, fingerprint: string) {
  set(`cairn.verified.${account}.${member}`, fingerprint);
}
export type Theme = 'light' | 'dark';
export function savedTheme(): Theme | null {
  const t = get('cairn.theme');
  return t === 'light' || t === 'dark' ? t : null;
}
export function saveTheme(t: Theme) {
  set('cairn.theme', t);
}
