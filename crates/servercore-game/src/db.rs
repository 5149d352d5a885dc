//! The game database: accounts and their players in an embedded SQLite file,
//! and the thread that owns the connection.
//!
//! This module owns:
//! - the schema and its migrations ([`MIGRATIONS`], applied on open and
//!   tracked in SQLite's `PRAGMA user_version`);
//! - [`Database`]: the synchronous queries (find-or-create an account and its
//!   three players, save a player's position);
//! - [`DbThread`] / [`DbHandle`]: the database thread. I/O workers never touch
//!   SQLite: a session sends a request through a [`DbHandle`] (a channel) and
//!   gives a reply closure; the database thread runs the request, commits, and
//!   calls the closure on its own thread. The game's closures only push a job
//!   onto the session's actor, so the result comes back as a job.
//!
//! Requests that queue up while a transaction runs are grouped into the next
//! one (up to [`MAX_BATCH`] per commit), each inside its own savepoint, so a
//! burst of logins costs one disk sync rather than one each, and one failing
//! request does not undo the others.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::latency::{LatencyHistogram, LatencySnapshot};

/// The path that opens a private in-memory database instead of a file
/// (nothing survives the process; for demos and benchmarks).
#[cfg_attr(not(test), allow(dead_code))] // for programs embedding the server
pub const IN_MEMORY: &str = ":memory:";

/// Most requests committed together in one transaction.
pub const MAX_BATCH: usize = 64;

/// Longest account name accepted, in bytes.
pub const MAX_ACCOUNT_LEN: usize = 64;

/// The schema, one step per version: step `i` takes the database from
/// `user_version == i` to `i + 1`. Never edit a released step; add one.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts and their players. A guest account has no name (NULL is
    // never equal to another NULL, so guests do not collide).
    "CREATE TABLE accounts (
         id            INTEGER PRIMARY KEY AUTOINCREMENT,
         name          TEXT UNIQUE,
         created_at_us INTEGER NOT NULL
     );
     CREATE TABLE players (
         id          INTEGER PRIMARY KEY AUTOINCREMENT,
         account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
         slot        INTEGER NOT NULL,
         name        TEXT NOT NULL,
         player_type INTEGER NOT NULL,
         UNIQUE (account_id, slot)
     );",
    // 2: login bookkeeping.
    "ALTER TABLE accounts ADD COLUMN last_login_at_us INTEGER;
     ALTER TABLE accounts ADD COLUMN login_count INTEGER NOT NULL DEFAULT 0;",
    // 3: where each player stands in the world (NULL: never placed).
    "ALTER TABLE players ADD COLUMN x REAL;
     ALTER TABLE players ADD COLUMN y REAL;
     ALTER TABLE players ADD COLUMN z REAL;
     ALTER TABLE players ADD COLUMN yaw REAL;",
];

/// The schema version this build writes and reads.
pub fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// The kinds of player a new account gets, in slot order, with the name
/// suffix and the protocol's `PlayerType` number.
pub const STARTER_PLAYERS: [(&str, i32); 3] = [("knight", 1), ("mage", 2), ("archer", 3)];

/// Why a database request failed.
#[derive(Debug, Clone)]
pub enum DbError {
    /// SQLite reported an error (shared: one failed commit fails every
    /// request of its batch).
    Sqlite(Arc<rusqlite::Error>),
    /// The database thread could not be started.
    Thread(Arc<std::io::Error>),
    /// The file holds a schema newer than this build knows.
    TooNew {
        /// The file's `user_version`.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The account name is longer than [`MAX_ACCOUNT_LEN`].
    AccountTooLong(usize),
    /// A login that may not create its account found none (the address
    /// is past its account-creation limit).
    NoSuchAccount,
    /// The database thread has stopped.
    Closed,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sqlite(_) => f.write_str("sqlite failed"),
            DbError::Thread(_) => f.write_str("cannot start the database thread"),
            DbError::TooNew { found, supported } => write!(
                f,
                "the database schema is version {found}, newer than this build's {supported}"
            ),
            DbError::AccountTooLong(len) => write!(
                f,
                "account name of {len} bytes is longer than {MAX_ACCOUNT_LEN}"
            ),
            DbError::Closed => f.write_str("the database thread has stopped"),
            DbError::NoSuchAccount => f.write_str("no such account, and none may be created"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sqlite(error) => Some(&**error),
            DbError::Thread(error) => Some(&**error),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> DbError {
        DbError::Sqlite(Arc::new(error))
    }
}

/// Where a player stood when it last left the world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SavedPosition {
    /// Map x.
    pub x: f32,
    /// Map y.
    pub y: f32,
    /// Height.
    pub z: f32,
    /// Facing, in degrees.
    pub yaw: f32,
}

/// One player row.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayerRecord {
    /// The player's id (database-assigned, never reused).
    pub id: u64,
    /// Display name.
    pub name: String,
    /// The protocol's `PlayerType` number.
    pub player_type: i32,
    /// Its saved position (`None`: never placed in the world).
    pub position: Option<SavedPosition>,
}

/// What a login found or created.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRecord {
    /// The account's id.
    pub account_id: u64,
    /// True if this login created the account.
    pub created: bool,
    /// How many times the account logged in, this login included.
    pub login_count: u64,
    /// The account's players in slot order.
    pub players: Vec<PlayerRecord>,
}

/// An open, migrated database. Not thread-safe: the [`DbThread`] owns one.
pub struct Database {
    conn: Connection,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl Database {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// [`schema_version`]. [`IN_MEMORY`] opens a private in-memory one.
    pub fn open(path: &Path) -> Result<Database, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: commits append to a log (one sync), readers never block.
        // In-memory databases answer "memory"; both are fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        let mut db = Database { conn };
        db.migrate()?;
        Ok(db)
    }

    /// The schema version stored in the file (`PRAGMA user_version`).
    pub fn version(&self) -> Result<u32, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }

    /// Applies every migration step above the stored version, each in its
    /// own transaction together with its version bump.
    fn migrate(&mut self) -> Result<(), DbError> {
        let supported = schema_version();
        let found = self.version()?;
        if found > supported {
            return Err(DbError::TooNew { found, supported });
        }
        for (index, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = index as u32 + 1;
            let tx = self.conn.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            tracing::info!(version, "database schema migrated");
        }
        Ok(())
    }

    /// Finds the account named `account`, or creates it with its three
    /// players; an empty name creates a new guest account every time. (The
    /// server goes through [`Database::login_batch`].)
    #[cfg(test)]
    pub fn login(&mut self, account: &str) -> Result<AccountRecord, DbError> {
        check_account(account)?;
        let tx = self.conn.transaction()?;
        let record = login_in(&tx, account, true)?;
        tx.commit()?;
        Ok(record)
    }

    /// Saves the positions of players (by id), in one transaction; an
    /// unknown id changes nothing.
    pub fn save_positions(&mut self, positions: &[(u64, SavedPosition)]) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE players SET x = ?2, y = ?3, z = ?4, yaw = ?5 WHERE id = ?1",
            )?;
            for (id, pos) in positions {
                update.execute(params![*id as i64, pos.x, pos.y, pos.z, pos.yaw])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs a batch of logins in one transaction, each in its own
    /// savepoint: a failing one is rolled back alone and reported. Each
    /// may create its account.
    pub fn login_batch(&mut self, accounts: &[&str]) -> Vec<Result<AccountRecord, DbError>> {
        let requests: Vec<(&str, bool)> = accounts.iter().map(|name| (*name, true)).collect();
        self.login_batch_with(&requests)
    }

    /// [`Database::login_batch`] where each `(account, may_create)` says
    /// whether the login may create its account ([`DbError::NoSuchAccount`]
    /// if not and it does not exist).
    pub fn login_batch_with(
        &mut self,
        accounts: &[(&str, bool)],
    ) -> Vec<Result<AccountRecord, DbError>> {
        let mut tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(error) => {
                let error = DbError::from(error);
                return accounts.iter().map(|_| Err(error.clone())).collect();
            }
        };
        let mut results = Vec::with_capacity(accounts.len());
        for (account, may_create) in accounts {
            results.push(login_savepoint(&mut tx, account, *may_create));
        }
        if let Err(error) = tx.commit() {
            let error = DbError::from(error);
            for result in &mut results {
                if result.is_ok() {
                    *result = Err(error.clone());
                }
            }
        }
        results
    }
}

fn check_account(account: &str) -> Result<(), DbError> {
    if account.len() > MAX_ACCOUNT_LEN {
        return Err(DbError::AccountTooLong(account.len()));
    }
    Ok(())
}

fn login_savepoint(
    tx: &mut Transaction<'_>,
    account: &str,
    may_create: bool,
) -> Result<AccountRecord, DbError> {
    check_account(account)?;
    let sp = tx.savepoint()?;
    let record = login_in(&sp, account, may_create)?;
    sp.commit()?;
    Ok(record)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The login itself, inside a transaction or savepoint.
fn login_in(conn: &Connection, account: &str, may_create: bool) -> Result<AccountRecord, DbError> {
    let now = now_us();
    let existing: Option<i64> = if account.is_empty() {
        None
    } else {
        conn.prepare_cached("SELECT id FROM accounts WHERE name = ?1")?
            .query_row([account], |row| row.get(0))
            .optional()?
    };
    let (account_id, created) = match existing {
        Some(id) => (id, false),
        None if !may_create => return Err(DbError::NoSuchAccount),
        None => {
            let name = (!account.is_empty()).then_some(account);
            conn.prepare_cached("INSERT INTO accounts (name, created_at_us) VALUES (?1, ?2)")?
                .execute(params![name, now])?;
            let id = conn.last_insert_rowid();
            let prefix = if account.is_empty() {
                format!("guest{id}")
            } else {
                account.to_owned()
            };
            let mut insert = conn.prepare_cached(
                "INSERT INTO players (account_id, slot, name, player_type) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (slot, (kind, player_type)) in STARTER_PLAYERS.iter().enumerate() {
                insert.execute(params![
                    id,
                    slot as i64,
                    format!("{prefix}_{kind}"),
                    player_type
                ])?;
            }
            (id, true)
        }
    };
    let login_count: i64 = conn
        .prepare_cached(
            "UPDATE accounts SET last_login_at_us = ?2, login_count = login_count + 1
             WHERE id = ?1 RETURNING login_count",
        )?
        .query_row(params![account_id, now], |row| row.get(0))?;
    let players = conn
        .prepare_cached(
            "SELECT id, name, player_type, x, y, z, yaw FROM players
             WHERE account_id = ?1 ORDER BY slot",
        )?
        .query_map([account_id], |row| {
            let coordinates: [Option<f64>; 4] =
                [row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?];
            let position = match coordinates {
                [Some(x), Some(y), z, yaw] => Some(SavedPosition {
                    x: x as f32,
                    y: y as f32,
                    z: z.unwrap_or(0.0) as f32,
                    yaw: yaw.unwrap_or(0.0) as f32,
                }),
                _ => None,
            };
            Ok(PlayerRecord {
                id: row.get::<_, i64>(0)? as u64,
                name: row.get(1)?,
                player_type: row.get(2)?,
                position,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AccountRecord {
        account_id: account_id as u64,
        created,
        login_count: login_count as u64,
        players,
    })
}

/// Called on the database thread with a login's result.
pub type LoginReply = Box<dyn FnOnce(Result<AccountRecord, DbError>) + Send>;

enum Request {
    Login {
        account: String,
        may_create: bool,
        reply: LoginReply,
    },
    SavePosition {
        player_id: u64,
        position: SavedPosition,
    },
    /// Tests: the thread waits until the sender is dropped, so every login
    /// asked for meanwhile stays pending for as long as a test needs.
    #[cfg(test)]
    Pause(Receiver<()>),
    Stop,
}

/// Sends requests to the database thread. Cheap to clone, usable from any
/// thread; a request sent after the thread stopped is answered at once with
/// [`DbError::Closed`] on the caller's thread.
#[derive(Clone)]
pub struct DbHandle {
    tx: Sender<Request>,
    /// From a login's request to its committed answer.
    latency: Arc<LatencyHistogram>,
}

impl fmt::Debug for DbHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbHandle")
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl DbHandle {
    /// Requests waiting for the database thread now (a snapshot).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Login latency so far: from the request to its committed answer.
    pub fn latency(&self) -> LatencySnapshot {
        self.latency.snapshot()
    }

    /// Asks for a login of `account` (creating it only if `may_create`);
    /// `reply` runs on the database thread once the result is committed (so
    /// keep it short: push a job).
    pub fn login(&self, account: String, may_create: bool, reply: LoginReply) {
        let asked = Instant::now();
        let latency = Arc::clone(&self.latency);
        let reply: LoginReply = Box::new(move |result| {
            latency.record(asked.elapsed());
            reply(result)
        });
        let request = Request::Login {
            account,
            may_create,
            reply,
        };
        if let Err(error) = self.tx.send(request) {
            if let Request::Login { reply, .. } = error.into_inner() {
                reply(Err(DbError::Closed));
            }
        }
    }

    /// Holds the database thread (once it has served what is queued before)
    /// until the returned sender is dropped.
    #[cfg(test)]
    pub(crate) fn pause(&self) -> Sender<()> {
        let (resume, paused) = crossbeam_channel::bounded(0);
        let _ = self.tx.send(Request::Pause(paused));
        resume
    }

    /// Saves where player `player_id` stands (no answer; a failure is
    /// logged). Saved before any login asked for after it.
    pub fn save_position(&self, player_id: u64, position: SavedPosition) {
        if self
            .tx
            .send(Request::SavePosition {
                player_id,
                position,
            })
            .is_err()
        {
            tracing::warn!(
                player_id,
                "position not saved: the database thread has stopped"
            );
        }
    }
}

/// The database thread: owns the [`Database`] and serves [`DbHandle`]
/// requests until [`DbThread::stop_and_join`].
pub struct DbThread {
    handle: DbHandle,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl fmt::Debug for DbThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbThread")
            .field("path", &self.path)
            .finish()
    }
}

impl DbThread {
    /// Opens and migrates the database at `path` (errors are reported here,
    /// before any session exists), then starts its thread.
    pub fn start(path: &Path) -> Result<DbThread, DbError> {
        let db = Database::open(path)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("game-db".into())
            .spawn(move || serve(db, rx))
            .map_err(|error| DbError::Thread(Arc::new(error)))?;
        Ok(DbThread {
            handle: DbHandle {
                tx,
                latency: Arc::default(),
            },
            thread: Some(thread),
            path: path.to_owned(),
        })
    }

    /// A handle for sending requests.
    pub fn handle(&self) -> DbHandle {
        self.handle.clone()
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves what is already queued, then stops the thread and waits for
    /// it. Requests sent afterwards get [`DbError::Closed`].
    pub fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.tx.send(Request::Stop);
            if thread.join().is_err() {
                tracing::error!("the database thread panicked");
            }
        }
    }
}

impl Drop for DbThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The thread's loop: take one request, add whatever else is queued (up to
/// [`MAX_BATCH`]), run them in one transaction, then answer.
fn serve(mut db: Database, rx: Receiver<Request>) {
    let mut accounts: Vec<(String, bool)> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<LoginReply> = Vec::with_capacity(MAX_BATCH);
    let mut positions: Vec<(u64, SavedPosition)> = Vec::new();
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Login {
                    account,
                    may_create,
                    reply,
                } => {
                    accounts.push((account, may_create));
                    replies.push(reply);
                }
                Request::SavePosition {
                    player_id,
                    position,
                } => positions.push((player_id, position)),
                #[cfg(test)]
                Request::Pause(resume) => {
                    let _ = resume.recv();
                }
                Request::Stop => {
                    stop = true;
                    break;
                }
            }
            if accounts.len() + positions.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Positions first: a login queued after a save sees it (and one
        // queued before it sees it too, which is as good).
        if !positions.is_empty() {
            if let Err(error) = db.save_positions(&positions) {
                tracing::warn!(%error, count = positions.len(), "positions not saved");
            }
            positions.clear();
        }
        if accounts.is_empty() {
            continue;
        }
        let names: Vec<(&str, bool)> = accounts
            .iter()
            .map(|(name, may_create)| (name.as_str(), *may_create))
            .collect();
        let results = db.login_batch_with(&names);
        for (reply, result) in replies.drain(..).zip(results) {
            if let Err(error) = &result {
                // A refused creation is the limit working, counted and
                // logged by the player.
                if !matches!(error, DbError::NoSuchAccount) {
                    tracing::warn!(%error, "login failed");
                }
            }
            reply(result);
        }
        accounts.clear();
    }
    // Anything still queued after Stop is answered, never dropped unanswered.
    drop(db);
    while let Ok(request) = rx.try_recv() {
        if let Request::Login { reply, .. } = request {
            reply(Err(DbError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_login_that_may_not_create_only_finds() {
        let mut db = Database::open(Path::new(IN_MEMORY)).unwrap();
        db.login("existing").unwrap();
        let results = db.login_batch_with(&[("existing", false), ("absent", false), ("", false)]);
        assert!(!results[0].as_ref().unwrap().created);
        assert!(matches!(results[1], Err(DbError::NoSuchAccount)));
        assert!(matches!(results[2], Err(DbError::NoSuchAccount)));
        let count: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM accounts", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 1, "nothing was created");
    }

    #[test]
    fn login_creates_then_finds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("game.db");
        let mut db = Database::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), schema_version());
        let first = db.login("alice").unwrap();
        assert!(first.created);
        assert_eq!(first.login_count, 1);
        let names: Vec<_> = first.players.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alice_knight", "alice_mage", "alice_archer"]);
        let types: Vec<_> = first.players.iter().map(|p| p.player_type).collect();
        assert_eq!(types, [1, 2, 3]);
        let again = db.login("alice").unwrap();
        assert!(!again.created);
        assert_eq!(again.login_count, 2);
        assert_eq!(again.players, first.players);
        let bob = db.login("bob").unwrap();
        assert_ne!(bob.account_id, first.account_id);
        assert!(bob.players.iter().all(|p| !first.players.contains(p)));
        drop(db);
        // Survives reopening.
        let mut db = Database::open(&path).unwrap();
        let reopened = db.login("alice").unwrap();
        assert_eq!(reopened.players, first.players);
        assert_eq!(reopened.login_count, 3);
    }

    #[test]
    fn guests_are_fresh_every_time() {
        let mut db = Database::open(Path::new(IN_MEMORY)).unwrap();
        let a = db.login("").unwrap();
        let b = db.login("").unwrap();
        assert!(a.created && b.created);
        assert_ne!(a.account_id, b.account_id);
        assert_eq!(a.players.len(), 3);
        assert_eq!(a.players[0].name, format!("guest{}_knight", a.account_id));
        assert!(a.players.iter().all(|p| !b.players.contains(p)));
    }

    #[test]
    fn long_account_is_refused() {
        let mut db = Database::open(Path::new(IN_MEMORY)).unwrap();
        let long = "x".repeat(MAX_ACCOUNT_LEN + 1);
        assert!(matches!(db.login(&long), Err(DbError::AccountTooLong(65))));
        let ok = "y".repeat(MAX_ACCOUNT_LEN);
        let results = db.login_batch(&[&long, &ok, ""]);
        assert!(results[0].is_err());
        assert!(results[1].as_ref().unwrap().created);
        assert!(results[2].as_ref().unwrap().created);
    }

    #[test]
    fn migrates_a_version_1_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO accounts (name, created_at_us) VALUES ('old', 0)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO players (account_id, slot, name, player_type) VALUES (1, 0, 'old_knight', 1)",
                [],
            )
            .unwrap();
        }
        let mut db = Database::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), schema_version());
        let old = db.login("old").unwrap();
        assert!(!old.created);
        assert_eq!(old.login_count, 1);
        assert_eq!(old.players.len(), 1);
        assert_eq!(old.players[0].name, "old_knight");
    }

    #[test]
    fn positions_are_saved_and_found_at_login() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pos.db");
        let mut db = Database::open(&path).unwrap();
        let first = db.login("walker").unwrap();
        assert!(first.players.iter().all(|p| p.position.is_none()));
        let saved = SavedPosition {
            x: 150.5,
            y: 42.25,
            z: 1.0,
            yaw: 90.0,
        };
        db.save_positions(&[(first.players[1].id, saved), (999_999, saved)])
            .unwrap();
        drop(db);
        let mut db = Database::open(&path).unwrap();
        let again = db.login("walker").unwrap();
        assert_eq!(again.players[0].position, None);
        assert_eq!(again.players[1].position, Some(saved));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = Database::open(&path).unwrap_err();
        assert!(
            matches!(error, DbError::TooNew { found: 99, .. }),
            "{error}"
        );
    }

    #[test]
    fn thread_answers_in_order_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let mut thread = DbThread::start(&dir.path().join("t.db")).unwrap();
        let handle = thread.handle();
        let (tx, rx) = mpsc::channel();
        for i in 0..200 {
            let tx = tx.clone();
            let name = format!("user{}", i % 50);
            handle.login(
                name,
                true,
                Box::new(move |result| {
                    tx.send((i, result.map(|r| r.players[0].id))).unwrap();
                }),
            );
        }
        let mut ids = std::collections::HashMap::new();
        for expected in 0..200 {
            let (i, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(i, expected, "answers come in request order");
            let id = result.unwrap();
            assert_eq!(*ids.entry(i % 50).or_insert(id), id);
        }
        thread.stop_and_join();
        let tx2 = tx.clone();
        handle.login(
            "late".into(),
            true,
            Box::new(move |result| tx2.send((0, result.map(|_| 0))).unwrap()),
        );
        let (_, late) = rx.recv_timeout(Duration::from_secs(1)).unwrap();
        assert!(matches!(late, Err(DbError::Closed)));
    }
}
