//! How the bridge reacts to a homeserver answer (sans-IO): success, rate limit (429 with
//! `retry_after_ms` or `Retry-After`), a transient failure to retry with backoff, or a final
//! refusal. Also the backoff schedule.

use std::time::Duration;

/// Shortest and longest wait honoured from a rate-limit answer.
pub const RATE_LIMIT_MIN: Duration = Duration::from_millis(50);
/// Longest wait honoured from a rate-limit answer (a hostile server cannot park the bridge).
pub const RATE_LIMIT_MAX: Duration = Duration::from_secs(60);
/// Longest backoff after transient failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The class of a homeserver answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 429: wait this long, then send the same request again.
    RateLimited(Duration),
    /// 5xx or a transport failure: retry with backoff.
    Transient(String),
    /// Any other 4xx: retrying will not help.
    Fatal {
        /// Matrix `errcode` (`M_FORBIDDEN`, …), or `HTTP_<status>`.
        errcode: String,
        /// The server's message, bounded.
        error: String,
    },
}

/// Classifies an answer from its status, `Retry-After` header and body (a Matrix error JSON).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Ok;
    }
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    if status == 429 {
        let from_body =
            json.get("retry_after_ms").and_then(serde_json::Value::as_u64).map(Duration::from_millis);
        let from_header = retry_after.and_then(|h| h.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let wait = from_body.or(from_header).unwrap_or(Duration::from_secs(1));
        return Outcome::RateLimited(wait.clamp(RATE_LIMIT_MIN, RATE_LIMIT_MAX));
    }
    let errcode = json
        .get("errcode")
        .and_then(serde_json::Value::as_str)
        .map(|s| s.chars().take(64).collect())
        .unwrap_or_else(|| format!("HTTP_{status}"));
    let error: String =
        json.get("error").and_then(serde_json::Value::as_str).unwrap_or_default().chars().take(300).collect();
    if status >= 500 || status == 408 {
        return Outcome::Transient(format!("{errcode}: {error}"));
    }
    Outcome::Fatal { errcode, error }
}

/// Exponential backoff: 100 ms doubling to [`BACKOFF_MAX`], reset on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    /// The wait before the next attempt; doubles the one after.
    pub fn next_wait(&mut self) -> Duration {
        let w = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        w
    }

    /// After a success.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_honoured_and_bounded() {
        let b = br#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many","retry_after_ms":1500}"#;
        assert_eq!(classify(429, None, b), Outcome::RateLimited(Duration::from_millis(1500)));
        assert_eq!(classify(429, Some("3"), b"{}"), Outcome::RateLimited(Duration::from_secs(3)));
        assert_eq!(classify(429, None, b"junk"), Outcome::RateLimited(Duration::from_secs(1)));
        let huge = br#"{"retry_after_ms":99999999999}"#;
        assert_eq!(classify(429, None, huge), Outcome::RateLimited(RATE_LIMIT_MAX));
        assert_eq!(classify(429, None, br#"{"retry_after_ms":0}"#), Outcome::RateLimited(RATE_LIMIT_MIN));
    }

    #[test]
    fn server_errors_are_transient_client_errors_final() {
        assert_eq!(classify(200, None, b""), Outcome::Ok);
        assert!(matches!(classify(502, None, b""), Outcome::Transient(_)));
        let f = classify(403, None, br#"{"errcode":"M_FORBIDDEN","error":"no"}"#);
        assert_eq!(f, Outcome::Fatal { errcode: "M_FORBIDDEN".into(), error: "no".into() });
        assert!(
            matches!(classify(404, None, b"<html>"), Outcome::Fatal { errcode, .. } if errcode == "HTTP_404")
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..10).map(|_| b.next_wait()).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert_eq!(waits[1], Duration::from_millis(200));
        assert_eq!(*waits.last().unwrap_or(&Duration::ZERO), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }
}
