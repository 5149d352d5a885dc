//! `servercore token`: mints a signed login token, what a separate login
//! service would hand a client after checking its password. The game server
//! started with the same `--auth-secret` accepts it in `C_LOGIN.account`.

use std::path::PathBuf;
use std::time::Duration;

use servercore_game::auth::TokenKey;
use servercore_load::client::parse_duration;

/// `servercore token` options.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The shared secret file (its bytes, trimmed, are the HMAC key; at
    /// least 32).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,

    /// The account the token logs in as (at most 64 bytes).
    #[arg(long, value_name = "NAME")]
    pub account: String,

    /// How long the token is valid: a number with a unit, `90s`, `30m`,
    /// `1h`, `2d` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// Parses a lifetime in the duration syntax of every command (`90s`,
/// `30m`, `1h`, `2d`, a bare number of seconds); it must be above zero.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.is_zero() {
        return Err("the lifetime must be above zero".into());
    }
    Ok(ttl)
}

/// Prints one token on standard output.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let key = TokenKey::from_file(&args.secret_file)?;
    println!("{}", key.mint(&args.account, args.ttl)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").is_err());
    }
}
