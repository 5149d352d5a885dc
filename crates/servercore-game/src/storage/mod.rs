//! The game's storage: accounts, their players and the players' positions,
//! behind one trait ([`Storage`]) with two implementations, and the pool of
//! database threads that serves the game.
//!
//! This module owns:
//! - the records ([`AccountRecord`], [`PlayerRecord`], [`Position`]) and the
//!   errors ([`DbError`]) every backend shares;
//! - [`Storage`]: the synchronous queries one connection answers;
//! - [`DbTarget`]: which backend `--db` names (a file: SQLite, the
//!   default; `postgres://…`: PostgreSQL);
//! - [`StoragePool`] / [`StorageHandle`]: N database threads, each with its
//!   own connection. I/O workers never touch the database: a session sends a
//!   request through a [`StorageHandle`] (a channel) with a reply closure;
//!   a database thread runs it, commits, and calls the closure on its own
//!   thread. The game's closures only push a job onto an actor, so results
//!   come back as jobs.
//!
//! Account leases: in a cluster, the database is the authority on which
//! node holds a named account. A login taken with a lease
//! ([`LeaseTerms`]) sets the account's `lease_node`, bumps its
//! `lease_epoch` and sets `lease_expires_us` (the database's clock plus the
//! lease's time to live), as one compare-and-set inside the login's
//! transaction: it succeeds only if no other node holds an unexpired
//! lease, and fails with [`DbError::LeaseHeld`] (naming the holder)
//! otherwise, rolling the login back. The holder renews all its leases
//! with one statement ([`Storage::renew_leases`]), which also tells it
//! which ones it still has; it releases one on leave
//! ([`Storage::release_lease`]). A save of a leased account's player is
//! fenced: it is written only while the saving node still holds the
//! account under the epoch it logged in with (so a node that lost an
//! account while paused cannot overwrite the new holder's saves); the
//! database thread of the account remembers that epoch.
//!
//! Requests about one account always go to the same thread (the shard is
//! a hash of the account name), so they run in the order they were sent: a
//! save sent before a login of the same account is committed before that
//! login reads. Requests that queue up on a thread while it works are
//! grouped into the next transaction (up to [`MAX_BATCH`]), each in its own
//! savepoint, so a burst of logins costs one commit rather than one each.
//!
//! The backends: `sqlite` (an embedded file, migrations tracked in
//! `PRAGMA user_version`) and `postgres` (a server, migrations tracked in a
//! `schema_version` table under an advisory lock, so nodes starting together
//! migrate once). A database that goes away fails requests with
//! [`DbError::Unavailable`] (logged once per outage); the next request after
//! it returns reconnects, so service resumes without a restart.

pub mod postgres;
pub mod sqlite;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::latency::{LatencyHistogram, LatencySnapshot};

pub use self::postgres::PostgresStorage;
pub use self::sqlite::SqliteStorage;

/// The path that opens a private in-memory SQLite database instead of a
/// file (nothing survives the process; for demos and benchmarks).
pub const IN_MEMORY: &str = ":memory:";

/// Most requests committed together in one transaction.
pub const MAX_BATCH: usize = 64;

/// Longest account name accepted, in bytes.
pub const MAX_ACCOUNT_LEN: usize = 64;

/// The kinds of player a new account gets, in slot order, with the name
/// suffix and the protocol's `PlayerType` number.
pub const STARTER_PLAYERS: [(&str, i32); 3] = [("knight", 1), ("mage", 2), ("archer", 3)];

/// Why a database request failed.
#[derive(Debug, Clone)]
pub enum DbError {
    /// SQLite reported an error (shared: one failed commit fails every
    /// request of its batch).
    Sqlite(Arc<rusqlite::Error>),
    /// PostgreSQL reported an error.
    Postgres(Arc<::postgres::Error>),
    /// The database server cannot be reached (down, refusing, timed out);
    /// the request was not run. Service resumes once it answers again.
    Unavailable(String),
    /// A database thread could not be started.
    Thread(Arc<std::io::Error>),
    /// The database holds a schema newer than this build knows.
    TooNew {
        /// The stored version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The account name is longer than [`MAX_ACCOUNT_LEN`].
    AccountTooLong(usize),
    /// A login that may not create its account found none (the address
    /// is past its account-creation limit).
    NoSuchAccount,
    /// Another node holds the account's lease: the login was rolled back.
    LeaseHeld {
        /// The node holding it.
        node: String,
        /// The epoch it holds it under.
        epoch: u64,
        /// How long until the lease expires unless renewed (zero if it
        /// just did).
        expires_in: Duration,
    },
    /// A fenced save was not written: this node no longer holds the
    /// account under the epoch it logged in with.
    LeaseLost,
    /// The database threads have stopped.
    Closed,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sqlite(_) => f.write_str("sqlite failed"),
            DbError::Postgres(error) => write!(f, "postgres failed: {error}"),
            DbError::Unavailable(why) => write!(f, "the database is unavailable: {why}"),
            DbError::Thread(_) => f.write_str("cannot start a database thread"),
            DbError::TooNew { found, supported } => write!(
                f,
                "the database schema is version {found}, newer than this build's {supported}"
            ),
            DbError::AccountTooLong(len) => write!(
                f,
                "account name of {len} bytes is longer than {MAX_ACCOUNT_LEN}"
            ),
            DbError::NoSuchAccount => f.write_str("no such account, and none may be created"),
            DbError::LeaseHeld {
                node,
                epoch,
                expires_in,
            } => write!(
                f,
                "the account is held by node {node} (lease epoch {epoch}, expiring in {:.1} s \
                 unless renewed)",
                expires_in.as_secs_f64()
            ),
            DbError::LeaseLost => {
                f.write_str("not saved: this node no longer holds the account's lease")
            }
            DbError::Closed => f.write_str("the database threads have stopped"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sqlite(error) => Some(&**error),
            DbError::Postgres(error) => Some(&**error),
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

/// A saved position in the world: x and y on the map, z height, yaw in
/// degrees.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Position {
    /// East-west.
    pub x: f32,
    /// North-south.
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
    /// Where the player last left the world (None: never entered).
    pub position: Option<Position>,
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
    /// The lease's epoch, if the login took the account's lease.
    pub lease_epoch: Option<u64>,
}

/// A lease to take with a login: node `node` holds the account for `ttl`
/// unless it renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms<'a> {
    /// The node taking the lease.
    pub node: &'a str,
    /// How long the lease lasts without a renewal.
    pub ttl: Duration,
}

/// One login of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequest<'a> {
    /// The account (empty: a new guest account).
    pub account: &'a str,
    /// Whether the login may create the account.
    pub may_create: bool,
    /// The lease to take with it (named accounts in a cluster).
    pub lease: Option<LeaseTerms<'a>>,
}

/// The lease a fenced save must still be held under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The account.
    pub account: String,
    /// The node that took the lease.
    pub node: String,
    /// The epoch it took it under.
    pub epoch: u64,
}

/// Which backend a [`Storage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageKind::Sqlite => "sqlite",
            StorageKind::Postgres => "postgres",
        })
    }
}

/// One connection's queries; every backend answers the same way (the
/// storage test suite runs against each).
///
/// Not shared between threads: each thread of a [`StoragePool`] owns one.
pub trait Storage: Send {
    /// Which backend this is.
    fn kind(&self) -> StorageKind;

    /// The schema version stored in the database.
    fn version(&mut self) -> Result<u32, DbError>;

    /// Finds or creates each account (an empty name creates a new guest
    /// account every time; a new account gets [`STARTER_PLAYERS`]) and
    /// counts the login, all in one transaction, each account in its own
    /// savepoint: a failing one is rolled back alone and reported.
    fn login_batch(&mut self, accounts: &[&str]) -> Vec<Result<AccountRecord, DbError>> {
        let logins: Vec<(&str, bool)> = accounts.iter().map(|name| (*name, true)).collect();
        self.login_batch_with(&logins)
    }

    /// [`Storage::login_batch`] where each `(account, may_create)` says
    /// whether the login may create its account: one that may not and finds
    /// none fails with [`DbError::NoSuchAccount`] (a guest login that may
    /// not create always does).
    fn login_batch_with(
        &mut self,
        accounts: &[(&str, bool)],
    ) -> Vec<Result<AccountRecord, DbError>> {
        let logins: Vec<LoginRequest<'_>> = accounts
            .iter()
            .map(|(account, may_create)| LoginRequest {
                account,
                may_create: *may_create,
                lease: None,
            })
            .collect();
        self.login_many(&logins)
    }

    /// The logins of a batch, in one transaction, each in its own
    /// savepoint; one with a lease takes it by compare-and-set or fails
    /// with [`DbError::LeaseHeld`] (rolled back alone). A guest login
    /// takes no lease.
    fn login_many(&mut self, logins: &[LoginRequest<'_>]) -> Vec<Result<AccountRecord, DbError>>;

    /// Stores the players' positions (player id, position), in one
    /// transaction.
    fn save_positions(&mut self, saves: &[(u64, Position)]) -> Result<(), DbError>;

    /// Stores one player's position only while `fence` still holds (its
    /// node has the account's lease under its epoch); false (nothing
    /// written) otherwise.
    fn save_position_fenced(
        &mut self,
        player_id: u64,
        position: Position,
        fence: &Fence,
    ) -> Result<bool, DbError>;

    /// Extends every lease `node` holds to `ttl` from now; returns the
    /// accounts it still holds, with their epochs.
    fn renew_leases(&mut self, node: &str, ttl: Duration) -> Result<Vec<(String, u64)>, DbError>;

    /// Lets go of `account` if `node` holds it under an epoch up to
    /// `up_to_epoch` (a later lease of the same node, a newer session's, is
    /// kept); true if it did.
    fn release_lease(
        &mut self,
        account: &str,
        node: &str,
        up_to_epoch: u64,
    ) -> Result<bool, DbError>;

    /// Lets go of every lease of `node` (a node starting again under its
    /// name: its sessions are gone); returns how many.
    fn release_node_leases(&mut self, node: &str) -> Result<u64, DbError>;

    /// Finds or creates one account (see [`Storage::login_batch`]).
    fn login(&mut self, account: &str) -> Result<AccountRecord, DbError> {
        self.login_batch(&[account])
            .pop()
            .unwrap_or(Err(DbError::Closed))
    }
}

/// The schema version the backends write and read (both keep the same
/// number of steps).
pub fn schema_version() -> u32 {
    sqlite::MIGRATIONS.len() as u32
}

/// Which database `--db` names. Its `Debug` and
/// [`display_name`](DbTarget::display_name) never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DbTarget {
    /// An SQLite file ([`IN_MEMORY`]: a private in-memory database).
    Sqlite(PathBuf),
    /// A PostgreSQL URL, `postgres://user[:password]@host[:port]/db`.
    Postgres(String),
}

impl DbTarget {
    /// `postgres://…` or `postgresql://…` is PostgreSQL; anything else is an
    /// SQLite file.
    pub fn parse(value: &str) -> DbTarget {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            DbTarget::Postgres(value.to_owned())
        } else {
            DbTarget::Sqlite(PathBuf::from(value))
        }
    }

    /// Reads a configured path: a path whose text is a PostgreSQL URL names
    /// PostgreSQL.
    pub fn from_path(path: &Path) -> DbTarget {
        match path.to_str() {
            Some(text) => DbTarget::parse(text),
            None => DbTarget::Sqlite(path.to_owned()),
        }
    }

    /// A name for logs and errors, without any password.
    pub fn display_name(&self) -> String {
        match self {
            DbTarget::Sqlite(path) => path.display().to_string(),
            DbTarget::Postgres(url) => crate::redact::redact_url(url),
        }
    }

    /// The path or URL as configured (with its password: only to open
    /// the database with).
    pub fn to_path(&self) -> PathBuf {
        match self {
            DbTarget::Sqlite(path) => path.clone(),
            DbTarget::Postgres(url) => PathBuf::from(url),
        }
    }
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbTarget::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DbTarget::Postgres(_) => f
                .debug_tuple("Postgres")
                .field(&self.display_name())
                .finish(),
        }
    }
}

impl From<std::ffi::OsString> for DbTarget {
    /// What `--db` gave: see [`DbTarget::from_path`].
    fn from(value: std::ffi::OsString) -> DbTarget {
        DbTarget::from_path(Path::new(&value))
    }
}

/// How the pool opens and uses its connections.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Database threads, each with its own connection (SQLite serializes
    /// writers, so more than one mostly waits; PostgreSQL runs them in
    /// parallel).
    pub pool_size: usize,
    /// Longest wait to connect (PostgreSQL) or for a lock (SQLite's busy
    /// timeout).
    pub connect_timeout: Duration,
    /// Longest a statement may run before the server cancels it
    /// (PostgreSQL's `statement_timeout`).
    pub statement_timeout: Duration,
}

impl Default for StorageOptions {
    /// One thread, 2 s to connect, 5 s per statement.
    fn default() -> Self {
        StorageOptions {
            pool_size: 1,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens one connection to `target` and migrates the schema.
pub fn open(target: &DbTarget, options: &StorageOptions) -> Result<Box<dyn Storage>, DbError> {
    Ok(match target {
        DbTarget::Sqlite(path) => Box::new(SqliteStorage::open(path, options)?),
        DbTarget::Postgres(url) => Box::new(PostgresStorage::open(url, options)?),
    })
}

/// Called on a database thread with a login's result.
pub type LoginReply = Box<dyn FnOnce(Result<AccountRecord, DbError>) + Send>;

/// Called on a database thread once a save is committed (or failed).
pub type SaveReply = Box<dyn FnOnce(Result<(), DbError>) + Send>;

/// Called on a database thread once every earlier request of its shard has
/// been answered.
pub type BarrierReply = Box<dyn FnOnce() + Send>;

/// Called on a database thread with a renewal's result: the accounts the
/// node still holds, with their epochs.
pub type RenewReply = Box<dyn FnOnce(Result<Vec<(String, u64)>, DbError>) + Send>;

/// Called on a database thread once a release is committed: whether the
/// lease was let go.
pub type ReleaseReply = Box<dyn FnOnce(Result<bool, DbError>) + Send>;

/// A lease to take with a login, as a request carries it.
#[derive(Debug, Clone)]
pub struct OwnedLease {
    /// The node taking it.
    pub node: String,
    /// How long it lasts without a renewal.
    pub ttl: Duration,
}

enum Request {
    Login {
        account: String,
        may_create: bool,
        lease: Option<OwnedLease>,
        reply: LoginReply,
    },
    SavePosition {
        account: String,
        player_id: u64,
        position: Position,
        reply: Option<SaveReply>,
    },
    /// Many saves of this thread's accounts, in one go (the world's
    /// periodic saves).
    SavePositions(Vec<(String, u64, Position)>),
    Barrier(BarrierReply),
    RenewLeases {
        node: String,
        ttl: Duration,
        reply: RenewReply,
    },
    ReleaseLease {
        account: String,
        node: String,
        /// `None`: every lease of the node.
        up_to_epoch: Option<u64>,
        reply: Option<ReleaseReply>,
    },
    /// Tests: the thread waits until the sender is dropped, so every login
    /// asked for meanwhile stays pending for as long as a test needs.
    #[cfg(test)]
    Pause(Receiver<()>),
    Stop,
}

impl Request {
    /// Answers without running (the threads have stopped).
    fn refuse(self) {
        match self {
            Request::Login { reply, .. } => reply(Err(DbError::Closed)),
            Request::SavePosition {
                reply: Some(reply), ..
            } => reply(Err(DbError::Closed)),
            Request::Barrier(reply) => reply(),
            Request::RenewLeases { reply, .. } => reply(Err(DbError::Closed)),
            Request::ReleaseLease {
                reply: Some(reply), ..
            } => reply(Err(DbError::Closed)),
            Request::SavePosition { reply: None, .. }
            | Request::SavePositions(_)
            | Request::ReleaseLease { reply: None, .. }
            | Request::Stop => {}
            #[cfg(test)]
            Request::Pause(_) => {}
        }
    }
}

/// Sends requests to the database threads. Cheap to clone, usable from any
/// thread; a request sent after the threads stopped is answered at once with
/// [`DbError::Closed`] on the caller's thread.
#[derive(Clone)]
pub struct StorageHandle {
    shards: Arc<[Sender<Request>]>,
    next_guest: Arc<AtomicUsize>,
    /// From a login's request to its committed answer.
    latency: Arc<LatencyHistogram>,
}

impl fmt::Debug for StorageHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageHandle")
            .field("threads", &self.shards.len())
            .field("queued", &self.queued())
            .finish()
    }
}

/// The shard (database thread) of an account name.
fn shard_of(account: &str, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    account.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

impl StorageHandle {
    fn send(&self, shard: usize, request: Request) {
        if let Err(error) = self.shards[shard].send(request) {
            error.into_inner().refuse();
        }
    }

    /// The shard of `account`; guests (empty names) are spread round-robin.
    fn account_shard(&self, account: &str) -> usize {
        if account.is_empty() {
            self.next_guest.fetch_add(1, Ordering::Relaxed) % self.shards.len()
        } else {
            shard_of(account, self.shards.len())
        }
    }

    /// Requests waiting for the database threads now (a snapshot).
    pub fn queued(&self) -> usize {
        self.shards.iter().map(Sender::len).sum()
    }

    /// Login latency so far: from the request to its committed answer.
    pub fn latency(&self) -> LatencySnapshot {
        self.latency.snapshot()
    }

    /// Asks for a login of `account` (creating it only if `may_create`);
    /// `reply` runs on a database thread once the result is committed (so
    /// keep it short: push a job).
    pub fn login(&self, account: String, may_create: bool, reply: LoginReply) {
        self.login_leased(account, may_create, None, reply);
    }

    /// [`StorageHandle::login`] taking the account's lease for `lease.node`
    /// (see the module docs); a guest login takes none.
    pub fn login_leased(
        &self,
        account: String,
        may_create: bool,
        lease: Option<OwnedLease>,
        reply: LoginReply,
    ) {
        let asked = Instant::now();
        let latency = Arc::clone(&self.latency);
        let reply: LoginReply = Box::new(move |result| {
            latency.record(asked.elapsed());
            reply(result)
        });
        let shard = self.account_shard(&account);
        self.send(
            shard,
            Request::Login {
                account,
                may_create,
                lease,
                reply,
            },
        );
    }

    /// Saves the position of player `player_id` of `account`, ordered after
    /// every earlier request about that account; `reply` (if any) runs once
    /// it is committed.
    pub fn save_position(
        &self,
        account: &str,
        player_id: u64,
        position: Position,
        reply: Option<SaveReply>,
    ) {
        let shard = if account.is_empty() {
            (player_id % self.shards.len() as u64) as usize
        } else {
            shard_of(account, self.shards.len())
        };
        self.send(
            shard,
            Request::SavePosition {
                account: account.to_owned(),
                player_id,
                position,
                reply,
            },
        );
    }

    /// Saves many positions (account, player, where it stands), each
    /// through its account's thread (so ordered with that account's logins
    /// and other saves), one request per thread; fenced like
    /// [`save_position`](Self::save_position). Failures are logged by the
    /// threads, not answered.
    pub fn save_positions(&self, saves: Vec<(String, u64, Position)>) {
        let mut by_shard: Vec<Vec<(String, u64, Position)>> = vec![Vec::new(); self.shards.len()];
        for save in saves {
            let shard = if save.0.is_empty() {
                (save.1 % self.shards.len() as u64) as usize
            } else {
                shard_of(&save.0, self.shards.len())
            };
            by_shard[shard].push(save);
        }
        for (shard, saves) in by_shard.into_iter().enumerate() {
            if !saves.is_empty() {
                self.send(shard, Request::SavePositions(saves));
            }
        }
    }

    /// Renews every lease of `node` for `ttl` (on the first database
    /// thread); `reply` gets the accounts the node still holds.
    pub fn renew_leases(&self, node: String, ttl: Duration, reply: RenewReply) {
        self.send(0, Request::RenewLeases { node, ttl, reply });
    }

    /// Lets go of `node`'s lease of `account` if its epoch is at most
    /// `up_to_epoch`, ordered after every earlier request about the account
    /// (its last save first).
    pub fn release_lease(
        &self,
        account: &str,
        node: String,
        up_to_epoch: u64,
        reply: Option<ReleaseReply>,
    ) {
        let shard = shard_of(account, self.shards.len());
        self.send(
            shard,
            Request::ReleaseLease {
                account: account.to_owned(),
                node,
                up_to_epoch: Some(up_to_epoch),
                reply,
            },
        );
    }

    /// Lets go of every lease of `node` (at its start: the sessions of an
    /// earlier run under its name are gone).
    pub fn release_node_leases(&self, node: String, reply: ReleaseReply) {
        self.send(
            0,
            Request::ReleaseLease {
                account: String::new(),
                node,
                up_to_epoch: None,
                reply: Some(reply),
            },
        );
    }

    /// Holds every database thread (once it has served what was queued
    /// before) until the returned sender is dropped.
    #[cfg(test)]
    pub(crate) fn pause(&self) -> Sender<()> {
        let (resume, paused) = crossbeam_channel::bounded(0);
        for shard in 0..self.shards.len() {
            self.send(shard, Request::Pause(paused.clone()));
        }
        resume
    }

    /// Calls `reply` once every request about `account` sent before this
    /// one has been committed (or failed): the "its save is in" signal a
    /// handover to another node waits for.
    pub fn barrier(&self, account: &str, reply: BarrierReply) {
        let shard = shard_of(account, self.shards.len());
        self.send(shard, Request::Barrier(reply));
    }
}

/// The database threads: each owns one [`Storage`] and serves its shard of
/// the [`StorageHandle`] requests until [`StoragePool::stop_and_join`].
pub struct StoragePool {
    handle: StorageHandle,
    threads: Vec<JoinHandle<()>>,
    target: DbTarget,
    kind: StorageKind,
}

impl fmt::Debug for StoragePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoragePool")
            .field("target", &self.target.display_name())
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl StoragePool {
    /// Opens and migrates the database (errors are reported here, before
    /// any session exists), opens one connection per thread, then starts
    /// the threads.
    pub fn start(target: &DbTarget, options: &StorageOptions) -> Result<StoragePool, DbError> {
        let size = match target {
            // One connection is the whole of a private in-memory database.
            DbTarget::Sqlite(path) if path.as_os_str() == IN_MEMORY => 1,
            _ => options.pool_size.max(1),
        };
        let mut storages = Vec::with_capacity(size);
        for _ in 0..size {
            storages.push(open(target, options)?);
        }
        let kind = storages[0].kind();
        let mut senders = Vec::with_capacity(size);
        let mut threads = Vec::with_capacity(size);
        for (index, storage) in storages.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let thread = std::thread::Builder::new()
                .name(format!("game-db-{index}"))
                .spawn(move || serve(storage, rx))
                .map_err(|error| DbError::Thread(Arc::new(error)))?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(StoragePool {
            handle: StorageHandle {
                shards: senders.into(),
                next_guest: Arc::new(AtomicUsize::new(0)),
                latency: Arc::default(),
            },
            threads,
            target: target.clone(),
            kind,
        })
    }

    /// A handle for sending requests.
    pub fn handle(&self) -> StorageHandle {
        self.handle.clone()
    }

    /// The database it serves.
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    /// Which backend it runs on.
    pub fn kind(&self) -> StorageKind {
        self.kind
    }

    /// How many database threads (connections) it runs.
    pub fn threads(&self) -> usize {
        self.handle.shards.len()
    }

    /// Serves what is already queued, then stops the threads and waits for
    /// them. Requests sent afterwards get [`DbError::Closed`].
    pub fn stop_and_join(&mut self) {
        for shard in self.handle.shards.iter() {
            let _ = shard.send(Request::Stop);
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a database thread panicked");
            }
        }
    }
}

impl Drop for StoragePool {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub(crate) fn check_account(account: &str) -> Result<(), DbError> {
    if account.len() > MAX_ACCOUNT_LEN {
        return Err(DbError::AccountTooLong(account.len()));
    }
    Ok(())
}

/// Logs a save that failed, at most once a second per thread (with the
/// count of the others).
struct SaveFailures {
    last: Option<Instant>,
    suppressed: u64,
}

impl SaveFailures {
    fn note(&mut self, player_id: u64, error: &DbError) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        let others = std::mem::take(&mut self.suppressed);
        tracing::warn!(player_id, %error, others, "position not saved");
    }
}

/// A thread's loop: take one request, add whatever else is queued (up to
/// [`MAX_BATCH`]), run runs of logins as one batch and the rest in order,
/// then answer. The thread remembers the lease epoch each of its accounts
/// was logged in with, and fences their saves with it.
fn serve(mut storage: Box<dyn Storage>, rx: Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut fences: HashMap<String, Fence> = HashMap::new();
    let mut failures = SaveFailures {
        last: None,
        suppressed: 0,
    };
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut requests = batch.drain(..).peekable();
        while let Some(request) = requests.next() {
            match request {
                Request::Login {
                    account,
                    may_create,
                    lease,
                    reply,
                } => {
                    let mut logins = vec![(account, may_create, lease)];
                    let mut replies = vec![reply];
                    while let Some(Request::Login { .. }) = requests.peek() {
                        if let Some(Request::Login {
                            account,
                            may_create,
                            lease,
                            reply,
                        }) = requests.next()
                        {
                            logins.push((account, may_create, lease));
                            replies.push(reply);
                        }
                    }
                    let asked: Vec<LoginRequest<'_>> = logins
                        .iter()
                        .map(|(account, may_create, lease)| LoginRequest {
                            account,
                            may_create: *may_create,
                            lease: lease.as_ref().map(|lease| LeaseTerms {
                                node: &lease.node,
                                ttl: lease.ttl,
                            }),
                        })
                        .collect();
                    let results = storage.login_many(&asked);
                    for ((reply, result), (account, _, lease)) in
                        replies.into_iter().zip(results).zip(&logins)
                    {
                        match &result {
                            Ok(record) => {
                                if let (Some(lease), Some(epoch)) = (lease, record.lease_epoch) {
                                    fences.insert(
                                        account.clone(),
                                        Fence {
                                            account: account.clone(),
                                            node: lease.node.clone(),
                                            epoch,
                                        },
                                    );
                                }
                            }
                            Err(error) => tracing::debug!(%error, "login failed"),
                        }
                        reply(result);
                    }
                }
                Request::SavePosition {
                    account,
                    player_id,
                    position,
                    reply,
                } => {
                    let result = match fences.get(&account) {
                        Some(fence) => storage
                            .save_position_fenced(player_id, position, fence)
                            .and_then(|saved| {
                                if saved {
                                    Ok(())
                                } else {
                                    Err(DbError::LeaseLost)
                                }
                            }),
                        None => storage.save_positions(&[(player_id, position)]),
                    };
                    if let Err(error) = &result {
                        failures.note(player_id, error);
                    }
                    if let Some(reply) = reply {
                        reply(result);
                    }
                }
                Request::SavePositions(saves) => {
                    // Accounts this thread holds a lease for are fenced one
                    // by one; the rest go in one transaction.
                    let mut plain = Vec::new();
                    for (account, player_id, position) in saves {
                        match fences.get(&account) {
                            Some(fence) => {
                                let result = storage
                                    .save_position_fenced(player_id, position, fence)
                                    .and_then(|saved| {
                                        if saved {
                                            Ok(())
                                        } else {
                                            Err(DbError::LeaseLost)
                                        }
                                    });
                                if let Err(error) = &result {
                                    failures.note(player_id, error);
                                }
                            }
                            None => plain.push((player_id, position)),
                        }
                    }
                    if !plain.is_empty() {
                        if let Err(error) = storage.save_positions(&plain) {
                            failures.note(plain[0].0, &error);
                        }
                    }
                }
                Request::Barrier(reply) => reply(),
                Request::RenewLeases { node, ttl, reply } => {
                    reply(storage.renew_leases(&node, ttl));
                }
                Request::ReleaseLease {
                    account,
                    node,
                    up_to_epoch,
                    reply,
                } => {
                    let result = match up_to_epoch {
                        Some(epoch) => {
                            if fences
                                .get(&account)
                                .is_some_and(|fence| fence.epoch <= epoch)
                            {
                                fences.remove(&account);
                            }
                            storage.release_lease(&account, &node, epoch)
                        }
                        None => storage.release_node_leases(&node).map(|count| count > 0),
                    };
                    if let Err(error) = &result {
                        tracing::debug!(%account, %error, "lease not released");
                    }
                    if let Some(reply) = reply {
                        reply(result);
                    }
                }
                #[cfg(test)]
                Request::Pause(resume) => {
                    let _ = resume.recv();
                }
                Request::Stop => stop = true,
            }
        }
    }
    // Anything still queued after Stop is answered, never dropped unanswered.
    drop(storage);
    while let Ok(request) = rx.try_recv() {
        request.refuse();
    }
}
