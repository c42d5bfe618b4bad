//! One-time enrollment tokens.
//!
//! `cpushare-broker account add` prints a token; `cpushare login` or
//! `cpushare-seller enroll` takes it. It carries where the broker is, the
//! SHA-256 of the broker's CA (so the enrollee trusts exactly that broker
//! from the first packet), and a secret the broker stores only hashed.

use crate::msg::Role;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "cpst1-";
/// Longest token text accepted.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The decoded contents of an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Control endpoint `host:port`.
    pub broker: String,
    /// Enrollment endpoint `host:port`.
    pub enroll: String,
    /// SHA-256 of the broker's CA certificate.
    pub ca_sha256: [u8; 32],
    /// Account the token enrolls.
    pub name: String,
    /// Role of that account.
    pub role: Role,
    /// The one-time secret.
    pub secret: String,
}

/// Why a token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// token is {len} characters, longer than {max}; copy it again, whole
    #[error("token is {len} characters, longer than {max}; copy it again, whole")]
    TooLong {
        /// Length seen.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// this is not a cpushare enrollment token (it should start with `cpst1-`)
    #[error("this is not a cpushare enrollment token (it should start with `cpst1-`)")]
    BadPrefix,
    /// token is damaged ({0}); copy it again, whole
    #[error("token is damaged ({0}); copy it again, whole")]
    Damaged(String),
}

impl Token {
    /// The token as text.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).expect("a token always serializes");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// Parses token text.
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: text.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::BadPrefix)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Damaged(e.to_string()))?;
        postcard::from_bytes(&bytes).map_err(|e| TokenError::Damaged(e.to_string()))
    }
}

/// What the broker stores instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Token {
        Token {
            broker: "127.0.0.1:7400".into(),
            enroll: "127.0.0.1:7401".into(),
            ca_sha256: [7; 32],
            name: "alice".into(),
            role: Role::Buyer,
            secret: "s3cret".into(),
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        assert_eq!(Token::decode(&format!("  {}\n", t.encode())).unwrap(), t);
    }

    #[test]
    fn damaged_tokens_are_named() {
        assert_eq!(Token::decode("hello"), Err(TokenError::BadPrefix));
        let mut text = sample().encode();
        text.truncate(text.len() - 10);
        assert!(matches!(Token::decode(&text), Err(TokenError::Damaged(_))));
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            Token::decode(&long),
            Err(TokenError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,200}") {
            let _ = Token::decode(&s);
            let _ = Token::decode(&format!("cpst1-{s}"));
        }
    }
}
