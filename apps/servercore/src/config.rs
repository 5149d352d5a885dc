//! Where a command's options come from: its flags, then `SERVERCORE_*`
//! environment variables, then a TOML file (`--config FILE`), then the
//! defaults. One mechanism for every command, with no code per option:
//!
//! - every flag of every public command gets an environment variable:
//!   `SERVERCORE_` and its long name in upper case, `-` as `_`
//!   (`--max-sessions` → `SERVERCORE_MAX_SESSIONS`);
//! - the file's top-level keys are the running command's long flag names
//!   (`max-sessions = 5000`; `max_sessions` works too) plus the global
//!   ones (`log`, `log-format`); a key that is no option of the command is
//!   an error naming it;
//! - a value from the file counts only where the flag was given neither on
//!   the command line nor in the environment; it goes through the flag's
//!   own parser, so a bad value is an error naming its key;
//! - `--print-config` prints the effective options as a TOML file that
//!   `--config` reads back, and exits; URLs are printed without their
//!   credentials (`servercore_game::redact`), and the file says so.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory as _, FromArgMatches as _};

use servercore_game::redact::{redact_url, scrub, MASK};

use crate::cli::Cli;

/// Arguments that are no configuration: clap's own and the config flags.
const NOT_CONFIG: &[&str] = &["help", "version", "config", "print_config"];

/// The environment variable of a long flag name.
pub fn env_name(long: &str) -> String {
    format!("SERVERCORE_{}", long.to_uppercase().replace('-', "_"))
}

/// The CLI's `clap::Command`, with an environment variable on every flag
/// of the public commands (hidden ones, started by other commands with
/// explicit flags, take none).
pub fn command() -> clap::Command {
    fn with_env(arg: clap::Arg) -> clap::Arg {
        if NOT_CONFIG.contains(&arg.get_id().as_str()) || arg.get_env().is_some() {
            return arg;
        }
        match arg.get_long() {
            // clap keeps `&'static str`s; a few short strings, once per run.
            Some(long) => {
                let name: &'static str = Box::leak(env_name(long).into_boxed_str());
                arg.env(name)
            }
            None => arg,
        }
    }
    let mut cmd = Cli::command();
    let globals: Vec<String> = cmd
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    for id in globals {
        cmd = cmd.mut_arg(id, with_env);
    }
    let subcommands: Vec<(String, Vec<String>)> = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| {
            (
                sub.get_name().to_owned(),
                sub.get_arguments()
                    .map(|arg| arg.get_id().to_string())
                    .collect(),
            )
        })
        .collect();
    for (name, ids) in subcommands {
        cmd = cmd.mut_subcommand(name, |mut sub| {
            for id in ids {
                sub = sub.mut_arg(id, with_env);
            }
            sub
        });
    }
    cmd
}

/// Parses the process's arguments, environment and config file into a
/// [`Cli`]; prints the effective configuration and exits for
/// `--print-config`; exits with a message (code 2) on any error.
pub fn parse() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match parse_from(argv) {
        Ok(Parsed::Run(cli)) => *cli,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(Failure::Clap(error)) => error.exit(),
        Err(Failure::Config(message)) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    }
}

/// What [`parse_from`] found.
pub enum Parsed {
    /// Run this command.
    Run(Box<Cli>),
    /// `--print-config`: print this and stop.
    Print(String),
}

/// Why [`parse_from`] failed.
pub enum Failure {
    /// A command-line error (clap prints it itself, with usage).
    Clap(clap::Error),
    /// A config-file error: the message names the file and the key.
    Config(String),
}

impl From<clap::Error> for Failure {
    fn from(error: clap::Error) -> Failure {
        Failure::Clap(error)
    }
}

/// [`parse`] on given arguments (the first is the program name).
pub fn parse_from(argv: Vec<OsString>) -> Result<Parsed, Failure> {
    let cmd = command();
    let mut matches = cmd.clone().try_get_matches_from(&argv)?;
    if let Some(path) = matches.get_one::<PathBuf>("config").cloned() {
        let (name, sub_matches) = matches
            .subcommand()
            .ok_or_else(|| Failure::Config("--config needs a command".into()))?;
        let extra = file_args(&cmd, name, sub_matches, &matches, &path).map_err(Failure::Config)?;
        let mut argv = argv;
        let (options, positionals) = extra;
        argv.extend(options);
        if !positionals.is_empty() {
            argv.push("--".into());
            argv.extend(positionals);
        }
        matches = cmd.clone().try_get_matches_from(&argv)?;
    }
    if matches.get_flag("print_config") {
        let (name, sub_matches) = matches
            .subcommand()
            .ok_or_else(|| Failure::Config("--print-config needs a command".into()))?;
        return Ok(Parsed::Print(effective(&cmd, name, sub_matches)));
    }
    Ok(Parsed::Run(Box::new(Cli::from_arg_matches(&matches)?)))
}

/// The arguments a config file may set for command `name`: the globals,
/// then the command's own.
fn config_args<'a>(cmd: &'a clap::Command, name: &str) -> Vec<&'a clap::Arg> {
    let sub = cmd
        .find_subcommand(name)
        .expect("the matched subcommand exists");
    cmd.get_arguments()
        .chain(sub.get_arguments())
        .filter(|arg| !NOT_CONFIG.contains(&arg.get_id().as_str()))
        .collect()
}

/// The key of an argument in a config file: its long name, or its id for
/// a positional one.
fn key_of(arg: &clap::Arg) -> String {
    match arg.get_long() {
        Some(long) => long.to_owned(),
        None => arg.get_id().as_str().replace('_', "-"),
    }
}

/// True if the argument takes several values (a list in TOML).
fn is_list(arg: &clap::Arg) -> bool {
    arg.get_value_delimiter().is_some()
        || matches!(arg.get_action(), ArgAction::Append)
        || arg
            .get_num_args()
            .is_some_and(|range| range.max_values() > 1)
}

/// Reads the file and turns its keys into extra command-line arguments
/// (options, positionals) for the options not given by flag or env.
fn file_args(
    cmd: &clap::Command,
    name: &str,
    sub_matches: &ArgMatches,
    root_matches: &ArgMatches,
    path: &Path,
) -> Result<(Vec<OsString>, Vec<OsString>), String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("config file {shown}: {error}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|error| format!("config file {shown}: not valid TOML: {error}"))?;
    let args = config_args(cmd, name);
    let mut options = Vec::new();
    let mut positionals = Vec::new();
    for (key, value) in &table {
        let wanted = key.replace('_', "-");
        let Some(arg) = args.iter().find(|arg| key_of(arg) == wanted) else {
            let known: Vec<String> = args.iter().map(|arg| key_of(arg)).collect();
            return Err(format!(
                "config file {shown}: unknown key `{key}`: `servercore {name}` has no such option \
                 (its keys: {})",
                known.join(", ")
            ));
        };
        let id = arg.get_id().as_str();
        let source = source_of(sub_matches, id).or_else(|| source_of(root_matches, id));
        if matches!(
            source,
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |why: String| format!("config file {shown}: key `{key}`: {why}");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => options.push(format!("--{}", key_of(arg)).into()),
                toml::Value::Boolean(false) => {}
                other => return Err(bad(format!("expected true or false, found {other}"))),
            }
            continue;
        }
        let values: Vec<String> = match value {
            toml::Value::Array(items) if is_list(arg) => items
                .iter()
                .map(scalar)
                .collect::<Option<_>>()
                .ok_or_else(|| bad("a list of plain values expected".into()))?,
            toml::Value::Array(_) => return Err(bad("expected one value, found a list".into())),
            other => vec![scalar(other).ok_or_else(|| bad(format!("unsupported value {other}")))?],
        };
        for value in &values {
            check_value(arg, value).map_err(|reason| {
                let shown = shown_value(arg, value);
                bad(format!(
                    "invalid value {shown:?}: {}",
                    scrub(&reason, value)
                ))
            })?;
        }
        if arg.get_long().is_some() {
            let delimiter = arg.get_value_delimiter().unwrap_or(',');
            if arg.get_value_delimiter().is_some() {
                let joined = values.join(&delimiter.to_string());
                options.push(format!("--{}={joined}", key_of(arg)).into());
            } else {
                for value in values {
                    options.push(format!("--{}={value}", key_of(arg)).into());
                }
            }
        } else {
            positionals.extend(values.into_iter().map(OsString::from));
        }
    }
    Ok((options, positionals))
}

/// Where the value of argument `id` came from, if `matches` knows it
/// (asking about an id it does not define would panic).
fn source_of(matches: &ArgMatches, id: &str) -> Option<ValueSource> {
    matches.try_get_raw(id).ok()?;
    matches.value_source(id)
}

/// A TOML scalar as the command-line text of a value.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Runs `value` through the argument's own parser (a one-argument
/// command: clap keeps its parsers to itself); the reason if it fails.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    use std::error::Error as _;
    let arg = arg.clone().required(false).global(false);
    let probe = clap::Command::new("config")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(arg.clone());
    let flag = match arg.get_long() {
        Some(long) => format!("--{long}={value}"),
        None => value.to_owned(),
    };
    let Err(error) = probe.try_get_matches_from([flag]) else {
        return Ok(());
    };
    if let Some(source) = error.source() {
        return Err(source.to_string());
    }
    // No inner error (e.g. not one of the possible values): clap's text,
    // without its `error:` prefix and usage lines.
    let text = error.to_string();
    let reason: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty() && !line.starts_with("Usage:") && !line.starts_with("For more")
        })
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect();
    Err(reason.join(" "))
}

/// A value as it may be shown: a URL without its credentials (any value of
/// an argument whose value name is `URL`, and any value with a
/// `scheme://`); anything else (a file path) as is.
fn shown_value(arg: &clap::Arg, value: &str) -> String {
    let url_only = arg
        .get_value_names()
        .is_some_and(|names| names.iter().all(|name| name.as_str() == "URL"));
    if url_only || value.contains("://") {
        redact_url(value)
    } else {
        value.to_owned()
    }
}

/// The effective options of command `name` as a TOML file; URLs are shown
/// without their credentials.
fn effective(cmd: &clap::Command, name: &str, matches: &ArgMatches) -> String {
    let mut out = format!(
        "# The effective configuration of `servercore {name}`\n\
         # (defaults < --config file < SERVERCORE_* environment < flags).\n"
    );
    let mut redacted = false;
    let mut show = |arg: &clap::Arg, value: &str| {
        let shown = shown_value(arg, value);
        redacted |= shown != value;
        typed(&shown)
    };
    let mut lines = String::new();
    for arg in config_args(cmd, name) {
        let id = arg.get_id().as_str();
        let key = key_of(arg);
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            lines.push_str(&format!("{key} = {}\n", matches.get_flag(id)));
            continue;
        }
        let raw: Option<Vec<String>> = matches.get_raw(id).map(|values| {
            values
                .map(|value| value.to_string_lossy().into_owned())
                .collect()
        });
        match raw {
            None => lines.push_str(&format!("# {key} = (not set)\n")),
            Some(values) if is_list(arg) => {
                let items: Vec<String> = values.iter().map(|value| show(arg, value)).collect();
                lines.push_str(&format!("{key} = [{}]\n", items.join(", ")));
            }
            Some(values) => {
                let value = values.first().map(String::as_str).unwrap_or_default();
                lines.push_str(&format!("{key} = {}\n", show(arg, value)));
            }
        }
    }
    if redacted {
        out.push_str(&format!(
            "# Credentials in URLs are shown as {MASK}: fill them in (or give them through\n\
             # the SERVERCORE_* variables) before reading this file back.\n"
        ));
    }
    out.push_str(&lines);
    out
}

/// A command-line value as a TOML value: integers, decimals and booleans
/// bare, everything else quoted.
fn typed(value: &str) -> String {
    let plain_number = !value.is_empty()
        && value
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
        && value
            .trim_start_matches('-')
            .starts_with(|c: char| c.is_ascii_digit())
        && value.matches('.').count() <= 1
        && !value.ends_with('.');
    if plain_number && value.parse::<f64>().is_ok() {
        return value.to_owned();
    }
    if value == "true" || value == "false" {
        return value.to_owned();
    }
    toml::Value::String(value.to_owned()).to_string()
}
