//! A conversation's policy through the API: what a request names (a shipped policy and its
//! settings) becomes the pin committed to the group, and a pin read from the group becomes a
//! view. Pure: resolving handles and committing are the service's.

use cairn_mls::policy_ext::{PolicyPin, shipped_policy};
use cairn_proto::AccountId;

use crate::backend::ApiError;
use crate::model::{PolicySetRequest, PolicyView};

/// Policies `PUT …/policy` can pin, by name.
pub const POLICY_NAMES: [&str; 3] = ["moderation", "echo_bot", "none"];

/// The pin a request asks for (`None`: unpin), with the admins already resolved to accounts.
pub fn pin_of(req: &PolicySetRequest, admins: Vec<AccountId>) -> Result<Option<PolicyPin>, ApiError> {
    match req.policy.as_str() {
        "none" => Ok(None),
        "echo_bot" => Ok(Some(shipped_policy::echo_bot::pin())),
        "moderation" => {
            if req.max_messages > 0 && req.window_ms == 0 {
                return Err(ApiError::BadRequest(
                    "a rate limit needs its window: give window_ms as well as max_messages".into(),
                ));
            }
            let cfg = shipped_policy::moderation::Config {
                admins: admins.into_iter().map(|a| a.0).collect(),
                max_messages: req.max_messages,
                window_ms: req.window_ms,
                words: req.words.clone(),
                deny_filtered: req.deny_filtered,
            };
            if cfg.words.iter().any(|w| w.is_empty() || !w.is_ascii()) {
                return Err(ApiError::BadRequest("filtered words are non-empty ASCII".into()));
            }
            cfg.pin().map(Some).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "at most 255 admins and 255 words of at most {} bytes each",
                    shipped_policy::moderation::WORD_MAX
                ))
            })
        }
        other => Err(ApiError::BadRequest(format!(
            "unknown policy '{other}': choose one of {}",
            POLICY_NAMES.join(", ")
        ))),
    }
}

/// The view of a pin read from a group.
pub fn view_of(pin: Option<&PolicyPin>) -> PolicyView {
    let Some(pin) = pin else { return PolicyView { policy: "none".into(), code_hash: None, config: None } };
    let moderation = shipped_policy::moderation::Config::default().pin().map(|p| p.code_hash);
    let name = if Some(pin.code_hash) == moderation {
        "moderation"
    } else if pin.code_hash == shipped_policy::echo_bot::pin().code_hash {
        "echo_bot"
    } else {
        "unknown"
    };
    PolicyView {
        policy: name.into(),
        code_hash: Some(hex::encode(pin.code_hash)),
        config: Some(hex::encode(&pin.config)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(policy: &str) -> PolicySetRequest {
        PolicySetRequest { policy: policy.into(), ..PolicySetRequest::default() }
    }

    #[test]
    fn requests_become_pins_and_pins_views() {
        assert_eq!(pin_of(&req("none"), vec![]).unwrap(), None);
        let m = pin_of(&req("moderation"), vec![AccountId([1; 32])]).unwrap().unwrap();
        let v = view_of(Some(&m));
        assert_eq!(v.policy, "moderation");
        assert_eq!(v.config, Some(hex::encode(&m.config)));
        assert_eq!(view_of(pin_of(&req("echo_bot"), vec![]).unwrap().as_ref()).policy, "echo_bot");
        assert_eq!(view_of(None).policy, "none");
        let other = PolicyPin { code_hash: [9; 32], config: vec![] };
        assert_eq!(view_of(Some(&other)).policy, "unknown");
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        assert!(
            matches!(pin_of(&req("chaos"), vec![]), Err(ApiError::BadRequest(m)) if m.contains("moderation"))
        );
        let mut r = req("moderation");
        r.max_messages = 5;
        assert!(matches!(pin_of(&r, vec![]), Err(ApiError::BadRequest(m)) if m.contains("window_ms")));
        let mut r = req("moderation");
        r.words = vec!["x".repeat(shipped_policy::moderation::WORD_MAX + 1)];
        assert!(pin_of(&r, vec![]).is_err());
        let mut r = req("moderation");
        r.words = vec![String::new()];
        assert!(pin_of(&r, vec![]).is_err());
    }
}
