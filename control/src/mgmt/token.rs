//! Join tokens as the joining host reads them:
//! `SWMTKN-1-<CA digest>-<secret>`, the digest being the lowercase hex
//! SHA-256 of the swarm CA certificate ([`super::ca::ca_digest`]) and the
//! secret 25 lowercase letters and digits.
//!
//! Tokens are made and checked on the manager by [`crate::cluster`]
//! (`make_token`, `rotate_join_token`, `token_role`); this module adds the
//! strict parse a joiner needs, with an error that says what is wrong with
//! a pasted token, since a joiner must know the digest before it connects.

use std::fmt;

use crate::cluster::{TOKEN_PREFIX, parse_token};
use crate::model::{ID_LEN, is_id};

/// Hex characters in a SHA-256 digest.
pub const DIGEST_HEX_LEN: usize = 64;

/// Why a token was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this is not a swarm join token: it must start with {TOKEN_PREFIX}")]
    Prefix,
    #[error(
        "the join token's CA digest is malformed: expected {DIGEST_HEX_LEN} lowercase hex characters"
    )]
    Digest,
    #[error(
        "the join token's secret is malformed: expected {ID_LEN} lowercase letters and digits after the last '-'"
    )]
    Secret,
}

/// A parsed join token. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    digest: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    /// The whole token, secret included: it is what the manager compares.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.digest, self.secret)
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == DIGEST_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl JoinToken {
    /// Parses a token as pasted by a user (surrounding whitespace ignored).
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(TokenError::Prefix);
        }
        let Some((digest, secret)) = parse_token(token) else {
            // Say which half is wrong: the secret is what follows the last '-'.
            let rest = token.get(TOKEN_PREFIX.len()..).unwrap_or_default();
            return Err(match rest.rsplit_once('-') {
                Some((d, s)) if is_digest(d) && !is_id(s) => TokenError::Secret,
                None if is_digest(rest) => TokenError::Secret,
                _ => TokenError::Digest,
            });
        };
        if !is_digest(digest) {
            return Err(TokenError::Digest);
        }
        Ok(Self {
            digest: digest.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The CA digest the manager's certificate chain must match.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::make_token;
    use crate::model::test_rng::TestRng;

    fn digest() -> String {
        "0123456789abcdef".repeat(4)
    }

    #[test]
    fn round_trips_tokens_made_by_cluster() {
        let t = make_token(&digest(), &mut TestRng(3));
        let p = JoinToken::parse(&format!("  {t}\n")).unwrap();
        assert_eq!(p.digest(), digest());
        assert_eq!(p.secret().len(), ID_LEN);
        assert_eq!(p.to_string(), t);
        assert!(!format!("{p:?}").contains(p.secret()));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let d = digest();
        let s = "a".repeat(ID_LEN);
        let cases = [
            ("", TokenError::Prefix),
            ("SWMTKN-2-x-y", TokenError::Prefix),
            (&format!("swmtkn-1-{d}-{s}"), TokenError::Prefix),
            (&format!("{TOKEN_PREFIX}{d}"), TokenError::Secret),
            (&format!("{TOKEN_PREFIX}{d}-"), TokenError::Secret),
            (
                &format!("{TOKEN_PREFIX}{d}-{}", "A".repeat(ID_LEN)),
                TokenError::Secret,
            ),
            (&format!("{TOKEN_PREFIX}{d}-{s}x"), TokenError::Secret),
            (&format!("{TOKEN_PREFIX}-{s}"), TokenError::Digest),
            (
                &format!("{TOKEN_PREFIX}{}-{s}", &d[1..]),
                TokenError::Digest,
            ),
            (
                &format!("{TOKEN_PREFIX}{}-{s}", d.to_uppercase()),
                TokenError::Digest,
            ),
            (&format!("{TOKEN_PREFIX}cadigest-{s}"), TokenError::Digest),
            (&format!("{TOKEN_PREFIX}{d}-x-{s}"), TokenError::Digest),
            (
                &format!("{TOKEN_PREFIX}é{}-{s}", &d[2..]),
                TokenError::Digest,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(JoinToken::parse(t), Err(want.clone()), "{t:?}");
        }
        assert!(TokenError::Prefix.to_string().contains("SWMTKN-1-"));
    }
}
