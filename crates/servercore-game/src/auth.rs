//! Signed login tokens: what lets the game server trust the account a
//! client names.
//!
//! A separate login service (or `servercore token`) holds the same secret as
//! the game server and hands a client a token for its account: a JWT signed
//! with HMAC-SHA256 (HS256) whose claims are `sub` (the account name) and
//! `exp` (expiry, seconds since the Unix epoch), and optionally `nbf` (not
//! before) and `iat` (issued at). The client puts the token in
//! `C_LOGIN.account`; a server started with a secret accepts only such
//! tokens, logs the client in as `sub`, and refuses a token that is
//! malformed, signed with another key, expired (no leeway: a token replayed
//! after its expiry is refused), not valid yet (`nbf` ahead of the clock),
//! issued in the future (`iat` ahead of the clock: minted by a service
//! whose clock runs ahead, or forged to outlive a rotation), names no
//! account (an empty `sub` would be a guest login, a fresh account every
//! time) or names one longer than [`MAX_ACCOUNT_LEN`]. Like `exp`, `nbf`
//! and `iat` get no leeway.
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
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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
    /// `sub` is empty.
    NoAccount,
    /// The clock is before the token's `nbf`.
    NotYetValid,
    /// The token's `iat` is ahead of the clock.
    IssuedInTheFuture,
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
            TokenError::NoAccount => f.write_str("token names no account (empty sub)"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
            TokenError::IssuedInTheFuture => f.write_str("token issued in the future (iat)"),
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
        // Checked when present (a required one would be a claim name here).
        validation.validate_nbf = true;
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
    /// of expiry), issued now.
    pub fn mint_expiring_at(&self, account: &str, exp: SystemTime) -> anyhow::Result<String> {
        anyhow::ensure!(!account.is_empty(), "a token must name an account");
        anyhow::ensure!(
            account.len() <= MAX_ACCOUNT_LEN,
            "account name of {} bytes is longer than {MAX_ACCOUNT_LEN}",
            account.len()
        );
        let claims = Claims {
            sub: account.to_owned(),
            exp: unix_seconds(exp),
            nbf: None,
            iat: Some(unix_seconds(SystemTime::now())),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Signs any claims with this key (HS256): for tokens of other kinds
    /// than logins (the cluster's transfer tokens).
    pub fn sign<T: Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// Checks a token's signature, `exp` (no leeway) and `nbf`, with
    /// `sub` and `exp` required, and returns its claims.
    pub fn open<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<T>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(error.to_string()),
            })
    }

    /// Checks `token` and returns the account it names.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(error.to_string()),
            })?;
        let claims = data.claims;
        let now = unix_seconds(SystemTime::now());
        // jsonwebtoken checked nbf (validate_nbf); it never looks at iat.
        if claims.iat.is_some_and(|iat| iat > now) {
            return Err(TokenError::IssuedInTheFuture);
        }
        let account = claims.sub;
        if account.is_empty() {
            return Err(TokenError::NoAccount);
        }
        if account.len() > MAX_ACCOUNT_LEN {
            return Err(TokenError::AccountTooLong(account.len()));
        }
        Ok(account)
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A token with exactly `claims`, signed with `SECRET`.
    fn signed(claims: serde_json::Value) -> String {
        let secret = SECRET.trim_ascii();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn an_empty_account_is_refused() {
        let key = TokenKey::from_secret(SECRET).unwrap();
        let token = signed(serde_json::json!({"sub": "", "exp": now() + 60}));
        assert_eq!(key.verify(&token), Err(TokenError::NoAccount));
        assert!(key.mint("", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn not_before_and_issued_at_are_honoured_when_present() {
        let key = TokenKey::from_secret(SECRET).unwrap();
        let exp = now() + 3600;
        let early = signed(serde_json::json!({"sub": "alice", "exp": exp, "nbf": now() + 600}));
        assert_eq!(key.verify(&early), Err(TokenError::NotYetValid));
        let valid = signed(serde_json::json!({"sub": "alice", "exp": exp, "nbf": now() - 1}));
        assert_eq!(key.verify(&valid).unwrap(), "alice");
        let future = signed(serde_json::json!({"sub": "alice", "exp": exp, "iat": now() + 600}));
        assert_eq!(key.verify(&future), Err(TokenError::IssuedInTheFuture));
        let issued = signed(serde_json::json!({"sub": "alice", "exp": exp, "iat": now() - 5}));
        assert_eq!(key.verify(&issued).unwrap(), "alice");
        // A minted token carries iat, and verifies at once.
        let minted = key.mint("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(key.verify(&minted).unwrap(), "alice");
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
