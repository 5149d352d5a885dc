//! Credentials never reach output: the one URL redactor that logs,
//! `--print-config`, `Debug` of configurations and error messages go
//! through.
//!
//! This module owns the rules ([`redact_url`]), a message scrubber for
//! errors of libraries that saw a URL ([`scrub`]), and [`SecretUrl`], a URL
//! whose `Debug` and `Display` are redacted.
//!
//! What counts as a credential, for every URL the servers take (`--db
//! postgres://…`, `--nats nats://…`, lists of NATS servers):
//! - the password of the authority (`user:password@host`), whatever it
//!   contains: an `@`, `/`, `?` or `:` inside a password ends the userinfo
//!   at the *last* `@` (what a person typing a password means; a parser
//!   that stops at the first `@` would show the rest);
//! - the whole userinfo of a non-PostgreSQL URL: NATS takes a bare
//!   `token@host` and its user names are credentials too; a PostgreSQL
//!   user name (a role) is kept, because operators need to see it;
//! - query parameters that carry secrets (`?password=`, `sslpassword=`,
//!   `token=`, `secret=`, ...).
//!
//! Over-redaction is the safe side: a text too odd to parse loses more
//! than the password, never less.

use std::fmt;

/// What replaces each credential.
pub const MASK: &str = "***";

/// `text` (one URL, or a comma-separated list of URLs as NATS takes them)
/// with every credential replaced by [`MASK`]. Text without a URL's
/// credentials (a file path, `host:port`) comes back unchanged.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (index, piece) in split_url_list(text).into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&redact_one(piece));
    }
    out
}

/// Secrets shorter than this are not searched for inside a message (a
/// one-letter password would mask every such letter); the URL quoted whole
/// is still redacted.
pub const MIN_SCRUBBED_LEN: usize = 4;

/// `message` (an error's or a log's text) with every credential of `url`
/// (of at least [`MIN_SCRUBBED_LEN`] characters) replaced by [`MASK`], and
/// `url` itself, if quoted whole, redacted. For errors of libraries that
/// were given the URL and may repeat pieces of it.
pub fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact_url(url));
    let mut secrets: Vec<String> = Vec::new();
    for piece in split_url_list(url) {
        let parts = Parts::of(piece);
        secrets.extend(parts.secrets().into_iter().map(str::to_owned));
    }
    // Decoded forms too: a library may print what it decoded.
    let decoded: Vec<String> = secrets
        .iter()
        .map(|secret| percent_decode(secret))
        .filter(|decoded| !secrets.contains(decoded))
        .collect();
    secrets.extend(decoded);
    // Longest first, so a secret containing another is masked whole.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    for secret in secrets
        .iter()
        .filter(|secret| secret.chars().count() >= MIN_SCRUBBED_LEN)
    {
        out = out.replace(secret.as_str(), MASK);
    }
    out
}

/// A URL that may carry credentials (a NATS server, a database): `Debug`
/// and `Display` show it through [`redact_url`]; [`SecretUrl::expose`]
/// gives the real text, for the one place that connects with it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL itself, credentials included: only to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as logs may show it.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl(url.to_owned())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Takes the userinfo out of each URL of a list (`nats://u:p@a,nats://b`):
/// the list without any (for a client that takes credentials apart, so its
/// own logs of the servers it dials hold none), and each userinfo found,
/// as written (percent-encoded).
pub(crate) fn split_userinfo(text: &str) -> (String, Vec<String>) {
    let mut list = String::with_capacity(text.len());
    let mut found = Vec::new();
    for (index, piece) in split_url_list(text).into_iter().enumerate() {
        if index > 0 {
            list.push(',');
        }
        let parts = Parts::of(piece);
        if let Some(scheme) = parts.scheme {
            list.push_str(scheme);
            list.push_str("://");
        }
        list.push_str(parts.rest);
        if let Some(userinfo) = parts.userinfo {
            found.push(userinfo.to_owned());
        }
    }
    (list, found)
}

/// `%XX` decoded (invalid escapes kept as they are; not UTF-8: lossy).
pub(crate) fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Splits a list of URLs at the commas that start another URL
/// (`nats://a,nats://b`); a comma inside one URL (a PostgreSQL host list,
/// a password) stays in its piece, so its credentials are masked with it.
fn split_url_list(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(',') {
        if scheme_of(&text[at + 1..]).is_some() {
            pieces.push(&text[start..at]);
            start = at + 1;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// The scheme `text` starts with (`postgres` of `postgres://…`), if any.
fn scheme_of(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

fn is_postgres(scheme: Option<&str>) -> bool {
    scheme.is_some_and(|scheme| {
        scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
    })
}

/// One URL taken apart as far as redaction needs.
struct Parts<'a> {
    scheme: Option<&'a str>,
    /// Before the last `@` of the authority, if there is one.
    userinfo: Option<&'a str>,
    /// After it: host, port, path, query, fragment.
    rest: &'a str,
}

impl<'a> Parts<'a> {
    fn of(piece: &'a str) -> Parts<'a> {
        let scheme = scheme_of(piece);
        let after_scheme = match scheme {
            Some(scheme) => &piece[scheme.len() + 3..],
            None => piece,
        };
        let userinfo_end = after_scheme.rfind('@');
        let userinfo = userinfo_end.map(|at| &after_scheme[..at]);
        // Without a scheme, text with a `/` before its `@` is a file path
        // (`./saves/me@home.db`), not `user@host`.
        let path_like = scheme.is_none()
            && userinfo.is_some_and(|info| info.contains('/') || info.contains('\\'));
        match userinfo_end {
            Some(at) if !path_like => Parts {
                scheme,
                userinfo,
                rest: &after_scheme[at + 1..],
            },
            _ => Parts {
                scheme,
                userinfo: None,
                rest: after_scheme,
            },
        }
    }

    /// The userinfo as it may be shown.
    fn shown_userinfo(&self) -> Option<String> {
        let userinfo = self.userinfo?;
        if !is_postgres(self.scheme) {
            return Some(MASK.to_owned());
        }
        let (user, password) = match userinfo.split_once(':') {
            Some((user, _)) => (user, true),
            None => (userinfo, false),
        };
        if user.contains(['/', '?', '#']) {
            return Some(MASK.to_owned());
        }
        Some(if password {
            format!("{user}:{MASK}")
        } else {
            user.to_owned()
        })
    }

    /// The pieces of the text that are secrets.
    fn secrets(&self) -> Vec<&'a str> {
        let mut secrets = Vec::new();
        if let Some(userinfo) = self.userinfo {
            if is_postgres(self.scheme) {
                match userinfo.split_once(':') {
                    Some((_, password)) => secrets.push(password),
                    None if userinfo.contains(['/', '?', '#']) => secrets.push(userinfo),
                    None => {}
                }
            } else {
                secrets.push(userinfo);
                if let Some((user, password)) = userinfo.split_once(':') {
                    secrets.push(user);
                    secrets.push(password);
                }
            }
        }
        if let Some((_, query)) = self.rest.split_once('?') {
            let query = query.split('#').next().unwrap_or_default();
            for pair in query.split(['&', ';']) {
                if let Some((key, value)) = pair.split_once('=') {
                    if is_secret_key(key) {
                        secrets.push(value);
                    }
                }
            }
        }
        secrets
    }

    fn shown_rest(&self) -> String {
        let Some((before, query)) = self.rest.split_once('?') else {
            return self.rest.to_owned();
        };
        let (query, fragment) = match query.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (query, None),
        };
        let mut out = String::with_capacity(self.rest.len());
        out.push_str(before);
        out.push('?');
        let mut rest = query;
        // Keep the separators as they were (`&` or `;`).
        loop {
            let end = rest.find(['&', ';']).unwrap_or(rest.len());
            let pair = &rest[..end];
            match pair.split_once('=') {
                Some((key, _)) if is_secret_key(key) => {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(MASK);
                }
                _ => out.push_str(pair),
            }
            if end == rest.len() {
                break;
            }
            out.push_str(&rest[end..end + 1]);
            rest = &rest[end + 1..];
        }
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
        out
    }
}

/// Query keys whose values are secrets.
fn is_secret_key(key: &str) -> bool {
    let key = percent_decode(key).to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || matches!(key.as_str(), "pass" | "passwd" | "pwd")
}

fn redact_one(piece: &str) -> String {
    let parts = Parts::of(piece);
    let mut out = String::with_capacity(piece.len());
    if let Some(scheme) = parts.scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(userinfo) = parts.shown_userinfo() {
        out.push_str(&userinfo);
        out.push('@');
    }
    out.push_str(&parts.shown_rest());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn redacts(url: &str, expected: &str) {
        assert_eq!(redact_url(url), expected, "redacting {url}");
    }

    #[test]
    fn nats_user_password_and_token() {
        redacts(
            "nats://alice:s3cret@127.0.0.1:4222",
            "nats://***@127.0.0.1:4222",
        );
        redacts(
            "nats://t0ken@nats.example:4222",
            "nats://***@nats.example:4222",
        );
        redacts("tls://u:p@[::1]:4222", "tls://***@[::1]:4222");
        // Without a scheme, as async-nats also takes it.
        redacts("alice:s3cret@127.0.0.1:4222", "***@127.0.0.1:4222");
        // A list of servers: each one's credentials.
        redacts(
            "nats://a:pw1@n1:4222,nats://b:pw2@n2:4222,nats://n3:4222",
            "nats://***@n1:4222,nats://***@n2:4222,nats://n3:4222",
        );
    }

    #[test]
    fn postgres_password_in_the_authority() {
        redacts(
            "postgres://game:secret@db:5432/game",
            "postgres://game:***@db:5432/game",
        );
        redacts(
            "postgresql://game:secret@db/game?sslmode=require",
            "postgresql://game:***@db/game?sslmode=require",
        );
        // A user without a password is no secret.
        redacts("postgres://game@db/game", "postgres://game@db/game");
        redacts("postgres://db/game", "postgres://db/game");
        // A host list stays one URL.
        redacts(
            "postgres://game:pw@h1:5432,h2:5432/game",
            "postgres://game:***@h1:5432,h2:5432/game",
        );
    }

    #[test]
    fn postgres_password_as_a_query_parameter() {
        redacts(
            "postgres://game@db/game?password=secret",
            "postgres://game@db/game?password=***",
        );
        redacts(
            "postgres://db/game?user=game&password=secret&sslmode=disable",
            "postgres://db/game?user=game&password=***&sslmode=disable",
        );
        redacts(
            "postgres://db/game?sslpassword=k3yz;application_name=x#frag",
            "postgres://db/game?sslpassword=***;application_name=x#frag",
        );
        redacts(
            "postgres://db/game?pass%77ord=secret",
            "postgres://db/game?pass%77ord=***",
        );
    }

    #[test]
    fn an_at_sign_inside_a_password() {
        redacts(
            "postgres://game:p@ss@db:5432/game",
            "postgres://game:***@db:5432/game",
        );
        redacts(
            "postgres://game:p%40ss@db:5432/game",
            "postgres://game:***@db:5432/game",
        );
        redacts("nats://u:p@ss:w@rd@n1:4222", "nats://***@n1:4222");
        // `/`, `?` and `:` inside a password are masked with it.
        redacts(
            "postgres://game:a/b?c:d@db/game",
            "postgres://game:***@db/game",
        );
    }

    #[test]
    fn text_without_credentials_is_unchanged() {
        for text in [
            "servercore-game.db",
            ":memory:",
            "/var/lib/servercore/game@2.db",
            "./saves/me@home.db",
            "nats://127.0.0.1:4222",
            "127.0.0.1:4222",
            "",
        ] {
            redacts(text, text);
        }
    }

    #[test]
    fn odd_text_loses_more_never_less() {
        // An `@` in the query: everything before it is masked.
        let shown = redact_url("postgres://db/game?password=a@b");
        assert!(!shown.contains("password=a"), "{shown}");
        assert!(!shown.contains("=a"), "{shown}");
    }

    #[test]
    fn scrub_masks_pieces_a_library_repeats() {
        let url = "postgres://game:p%40ss@db/game?sslpassword=k3yz";
        let message = "cannot connect to postgres://game:p%40ss@db/game?sslpassword=k3yz: \
                       password p@ss rejected, key k3yz";
        let scrubbed = scrub(message, url);
        assert!(!scrubbed.contains("p@ss"), "{scrubbed}");
        assert!(!scrubbed.contains("p%40ss"), "{scrubbed}");
        assert!(!scrubbed.contains("k3yz"), "{scrubbed}");
        assert!(
            scrubbed.contains("postgres://game:***@db/game?sslpassword=***"),
            "{scrubbed}"
        );
        let nats = "nats://alice:s3cret@n1:4222";
        assert_eq!(
            scrub("auth failed for alice with s3cret", nats),
            "auth failed for *** with ***"
        );
        // A user without a password is no secret in PostgreSQL.
        assert_eq!(
            scrub("role game missing", "postgres://game@db/x"),
            "role game missing"
        );
    }

    #[test]
    fn configs_debug_shows_no_credentials() {
        let mut config = crate::GameConfig {
            db_path: "postgres://game:pgS3cret@db/game?password=qS3cret".into(),
            cluster: Some(crate::cluster::ClusterConfig::new(
                "nats://n4tsUser:n4tsPw@n1:4222",
                "a",
            )),
            ..crate::GameConfig::default()
        };
        let shown = format!("{config:?}");
        for secret in ["pgS3cret", "qS3cret", "n4tsUser", "n4tsPw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://game:***@db/game?password=***"),
            "{shown}"
        );
        config.db_path = "saves/game.db".into();
        assert!(format!("{config:?}").contains("\"saves/game.db\""));
        let target = crate::storage::DbTarget::parse("postgres://game:p@ss@db/game");
        assert_eq!(
            format!("{target:?}"),
            "Postgres(\"postgres://game:***@db/game\")"
        );
    }

    #[test]
    fn secret_url_debug_and_display_are_redacted() {
        let url = SecretUrl::new("nats://alice:s3cret@n1:4222");
        assert_eq!(format!("{url}"), "nats://***@n1:4222");
        assert_eq!(format!("{url:?}"), "SecretUrl(\"nats://***@n1:4222\")");
        assert_eq!(url.expose(), "nats://alice:s3cret@n1:4222");
    }
}
