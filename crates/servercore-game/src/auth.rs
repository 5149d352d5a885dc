//! Signed login tokens: what lets the game server trust the account a
//! client names.
//!
//! A separate login service (or `servercore token`) holds the same secret as
//! the game server and hands a client a token for its account: a JWT signed
//! with HMAC-SHA256 (HS256) whose claims are `sub` (the account name) and
//! `exp` (expiry, seconds since the Unix epoch). The client puts the token
//! in `C_LOGIN.account`; a server started with a secret accepts only such
//! tokens, logs the client in as `sub`, and refuses a token that is
//! malformed, signed with another key, expired (no leeway: a token replayed
//! after its expiry is refused) or names an account longer than
//! [`MAX_ACCOUNT_LEN`].
//!
//! This module owns the key ([`TokenKey`], read from a secret file), minting
//! ([`TokenKey::mint`]) and checking ([`TokenKey::verify`]).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::storage::MAX_ACCOUNT_LEN;

/// The shortest secret accepted, in bytes (HS256's key should be at least
/// as long as its 32-byte output).
pub const MIN_SECRET_LEN: usize = 32;

/// The longest `C_LOGIN.account` a server with a secret looks at; a longer
/// one is refused before it is queued.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The claims of a login token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account name.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token is past its `exp`.
    Expired,
    /// The signature does not match this server's key.
    BadSignature,
    /// Not a JWT, another algorithm, or claims missing or of the wrong type.
    Malformed(String),
    /// `sub` is longer than [`MAX_ACCOUNT_LEN`].
    AccountTooLong(usize),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Expired => f.write_str("token expired"),
            TokenError::BadSignature => f.write_str("token signature does not match"),
            TokenError::Malformed(detail) => write!(f, "malformed token: {detail}"),
            TokenError::AccountTooLong(len) => write!(
                f,
                "token account of {len} bytes is longer than {MAX_ACCOUNT_LEN}"
            ),
        }
    }
}

impl std::error::Error for TokenError {}

/// The HMAC key shared by the login service and the game server.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    /// A key from the secret's bytes (surrounding whitespace trimmed, so a
    /// file written with `echo` works); at least [`MIN_SECRET_LEN`] bytes.
    pub fn from_secret(secret: &[u8]) -> anyhow::Result<TokenKey> {
        let secret = secret.trim_ascii();
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_LEN,
            "the auth secret is {} bytes; at least {MIN_SECRET_LEN} are needed",
            secret.len()
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(TokenKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Reads the key from a secret file (see [`TokenKey::from_secret`]).
    pub fn from_file(path: &Path) -> anyhow::Result<TokenKey> {
        let secret = std::fs::read(path)
            .with_context(|| format!("reading the auth secret {}", path.display()))?;
        TokenKey::from_secret(&secret)
            .with_context(|| format!("the auth secret file {}", path.display()))
    }

    /// A token for `account` valid for `ttl` from now.
    pub fn mint(&self, account: &str, ttl: Duration) -> anyhow::Result<String> {
        let exp = SystemTime::now()
            .checked_add(ttl)
            .context("token lifetime too long")?;
        self.mint_expiring_at(account, exp)
    }

    /// A token for `account` that expires at `exp` (in the past for tests
    /// of expiry).
    pub fn mint_expiring_at(&self, account: &str, exp: SystemTime) -> anyhow::Result<String> {
        anyhow::ensure!(
            account.len() <= MAX_ACCOUNT_LEN,
            "account name of {} bytes is longer than {MAX_ACCOUNT_LEN}",
            account.len()
        );
        let claims = Claims {
            sub: account.to_owned(),
            exp: exp.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks `token` and returns the account it names.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(error.to_string()),
            })?;
        let account = data.claims.sub;
        if account.len() > MAX_ACCOUNT_LEN {
            return Err(TokenError::AccountTooLong(account.len()));
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef\n";

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let key = TokenKey::from_secret(SECRET).unwrap();
        let token = key.mint("alice", Duration::from_secs(3600)).unwrap();
        assert_eq!(key.verify(&token).unwrap(), "alice");

        let other = TokenKey::from_secret(b"another secret, 32 bytes or more!!").unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));

        let expired = key
            .mint_expiring_at("alice", SystemTime::now() - Duration::from_secs(1))
            .unwrap();
        assert_eq!(key.verify(&expired), Err(TokenError::Expired));

        assert!(matches!(key.verify("alice"), Err(TokenError::Malformed(_))));
        assert!(key.mint(&"x".repeat(65), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let error = TokenKey::from_secret(b"  short  \n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "the auth secret is 5 bytes; at least 32 are needed"
        );
    }
}
