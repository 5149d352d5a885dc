//! The SQLite backend: an embedded file (the default), its schema and
//! migrations, tracked in `PRAGMA user_version`.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    check_account, now_us, AccountRecord, DbError, Fence, LeaseTerms, LoginRequest, PlayerRecord,
    Position, Storage, StorageKind, StorageOptions, STARTER_PLAYERS,
};

/// The schema, one step per version: step `i` takes the database from
/// `user_version == i` to `i + 1`. Never edit a released step; add one (and
/// the same step to the PostgreSQL backend).
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
    // 3: where each player left the world (NULL: never entered).
    "ALTER TABLE players ADD COLUMN x REAL;
     ALTER TABLE players ADD COLUMN y REAL;
     ALTER TABLE players ADD COLUMN z REAL;
     ALTER TABLE players ADD COLUMN yaw REAL;",
    // 4: the account's lease: which node holds it (NULL: none), the epoch
    // every take bumps, and when it expires unless renewed (the database's
    // clock, microseconds since the Unix epoch).
    "ALTER TABLE accounts ADD COLUMN lease_node TEXT;
     ALTER TABLE accounts ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE accounts ADD COLUMN lease_expires_us INTEGER;
     CREATE INDEX accounts_by_lease_node ON accounts (lease_node)
         WHERE lease_node IS NOT NULL;",
];

/// The database's clock in microseconds since the Unix epoch (one value
/// per statement), so every node sharing a file judges expiry by one clock.
const DB_NOW_US: &str = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";

/// An open, migrated SQLite database. Not thread-safe: a database thread
/// owns one.
pub struct SqliteStorage {
    conn: Connection,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").finish_non_exhaustive()
    }
}

/// SQLite says only "unable to open database file": name the cause when it
/// is one a person can fix (a directory given as the file, a missing
/// directory), else keep SQLite's own error.
fn open_failure(path: &Path, error: rusqlite::Error) -> DbError {
    let cause = if path.is_dir() {
        format!(
            "{} is a directory, not a database file (give a file path, e.g. {})",
            path.display(),
            path.join("game.db").display()
        )
    } else {
        match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => format!(
                "cannot create {}: the directory {} does not exist",
                path.display(),
                dir.display()
            ),
            _ => return error.into(),
        }
    };
    let code = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => *failure,
        _ => rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
    };
    rusqlite::Error::SqliteFailure(code, Some(cause)).into()
}

impl SqliteStorage {
    /// Opens (creating if needed) and migrates the database at `path`
    /// ([`super::IN_MEMORY`] for a private in-memory one).
    pub fn open(path: &Path, options: &StorageOptions) -> Result<SqliteStorage, DbError> {
        let conn = Connection::open(path).map_err(|error| open_failure(path, error))?;
        conn.busy_timeout(options.connect_timeout)?;
        // WAL: readers never wait for the writer, and a commit is one
        // append. Ignored (left as "memory") for an in-memory database.
        // Switching needs the file to itself, and SQLite does not wait for
        // that: several nodes opening one file together retry here.
        let deadline = Instant::now() + options.connect_timeout;
        loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            }) {
                Ok(_) => break,
                Err(error) if is_busy(&error) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error.into()),
            }
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        let mut db = SqliteStorage { conn };
        db.migrate()?;
        Ok(db)
    }

    /// The underlying connection (tests build old schemas with it).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Applies every migration step above the stored version, each in its
    /// own transaction together with its version bump. The first step takes
    /// the write lock at once (`BEGIN IMMEDIATE`), so two connections
    /// opening one file together migrate it once.
    fn migrate(&mut self) -> Result<(), DbError> {
        let supported = super::schema_version();
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if found > supported {
                return Err(DbError::TooNew { found, supported });
            }
            let Some(step) = MIGRATIONS.get(found as usize) else {
                return Ok(());
            };
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", found + 1)?;
            tx.commit()?;
            tracing::info!(version = found + 1, "sqlite schema migrated");
        }
    }
}

impl Storage for SqliteStorage {
    fn kind(&self) -> StorageKind {
        StorageKind::Sqlite
    }

    fn version(&mut self) -> Result<u32, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }

    fn login_many(&mut self, logins: &[LoginRequest<'_>]) -> Vec<Result<AccountRecord, DbError>> {
        let mut tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(error) => {
                let error = DbError::from(error);
                return logins.iter().map(|_| Err(error.clone())).collect();
            }
        };
        let mut results = Vec::with_capacity(logins.len());
        for login in logins {
            results.push(login_savepoint(&mut tx, login));
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

    fn save_positions(&mut self, saves: &[(u64, Position)]) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE players SET x = ?2, y = ?3, z = ?4, yaw = ?5 WHERE id = ?1",
            )?;
            for (player_id, pos) in saves {
                update.execute(params![*player_id as i64, pos.x, pos.y, pos.z, pos.yaw])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn save_position_fenced(
        &mut self,
        player_id: u64,
        pos: Position,
        fence: &Fence,
    ) -> Result<bool, DbError> {
        let written = self
            .conn
            .prepare_cached(
                "UPDATE players SET x = ?2, y = ?3, z = ?4, yaw = ?5
                 WHERE id = ?1 AND account_id = (
                     SELECT id FROM accounts
                     WHERE name = ?6 AND lease_node = ?7 AND lease_epoch = ?8)",
            )?
            .execute(params![
                player_id as i64,
                pos.x,
                pos.y,
                pos.z,
                pos.yaw,
                fence.account,
                fence.node,
                fence.epoch as i64
            ])?;
        Ok(written > 0)
    }

    fn renew_leases(&mut self, node: &str, ttl: Duration) -> Result<Vec<(String, u64)>, DbError> {
        let sql = format!(
            "UPDATE accounts SET lease_expires_us = {DB_NOW_US} + ?2
             WHERE lease_node = ?1 RETURNING name, lease_epoch"
        );
        let held = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![node, ttl.as_micros() as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(held)
    }

    fn release_lease(
        &mut self,
        account: &str,
        node: &str,
        up_to_epoch: u64,
    ) -> Result<bool, DbError> {
        let released = self
            .conn
            .prepare_cached(
                "UPDATE accounts SET lease_node = NULL, lease_expires_us = NULL
                 WHERE name = ?1 AND lease_node = ?2 AND lease_epoch <= ?3",
            )?
            .execute(params![account, node, up_to_epoch as i64])?;
        Ok(released > 0)
    }

    fn release_node_leases(&mut self, node: &str) -> Result<u64, DbError> {
        let released = self
            .conn
            .prepare_cached(
                "UPDATE accounts SET lease_node = NULL, lease_expires_us = NULL
                 WHERE lease_node = ?1",
            )?
            .execute([node])?;
        Ok(released as u64)
    }
}

/// True for SQLite's "database is locked / busy" errors.
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn login_savepoint(
    tx: &mut Transaction<'_>,
    login: &LoginRequest<'_>,
) -> Result<AccountRecord, DbError> {
    check_account(login.account)?;
    let sp = tx.savepoint()?;
    // An error (a lease held elsewhere among them) drops the savepoint,
    // which rolls this login back alone.
    let record = login_in(&sp, login)?;
    sp.commit()?;
    Ok(record)
}

/// The login itself, inside a transaction or savepoint.
fn login_in(conn: &Connection, login: &LoginRequest<'_>) -> Result<AccountRecord, DbError> {
    let LoginRequest {
        account,
        may_create,
        lease,
    } = *login;
    let lease = lease.filter(|_| !account.is_empty());
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
    let (login_count, lease_epoch) = match lease {
        None => {
            let count: i64 = conn
                .prepare_cached(
                    "UPDATE accounts SET last_login_at_us = ?2, login_count = login_count + 1
                     WHERE id = ?1 RETURNING login_count",
                )?
                .query_row(params![account_id, now], |row| row.get(0))?;
            (count, None)
        }
        Some(lease) => {
            let (count, epoch) = take_lease(conn, account_id, now, lease)?;
            (count, Some(epoch))
        }
    };
    let players = conn
        .prepare_cached(
            "SELECT id, name, player_type, x, y, z, yaw
             FROM players WHERE account_id = ?1 ORDER BY slot",
        )?
        .query_map([account_id], |row| {
            let coords: (Option<f32>, Option<f32>, Option<f32>, Option<f32>) =
                (row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?);
            Ok(PlayerRecord {
                id: row.get::<_, i64>(0)? as u64,
                name: row.get(1)?,
                player_type: row.get(2)?,
                position: match coords {
                    (Some(x), Some(y), z, yaw) => Some(Position {
                        x,
                        y,
                        z: z.unwrap_or(0.0),
                        yaw: yaw.unwrap_or(0.0),
                    }),
                    _ => None,
                },
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AccountRecord {
        account_id: account_id as u64,
        created,
        login_count: login_count as u64,
        players,
        lease_epoch,
    })
}

/// Counts the login and takes the lease by compare-and-set: only if no
/// other node holds it unexpired. Returns the login count and the new
/// epoch, or who holds it.
fn take_lease(
    conn: &Connection,
    account_id: i64,
    now: i64,
    lease: LeaseTerms<'_>,
) -> Result<(i64, u64), DbError> {
    let sql = format!(
        "UPDATE accounts SET last_login_at_us = ?2, login_count = login_count + 1,
             lease_node = ?3, lease_epoch = lease_epoch + 1,
             lease_expires_us = {DB_NOW_US} + ?4
         WHERE id = ?1
           AND (lease_node IS NULL OR lease_node = ?3 OR lease_expires_us < {DB_NOW_US})
         RETURNING login_count, lease_epoch"
    );
    let taken = conn
        .prepare_cached(&sql)?
        .query_row(
            params![account_id, now, lease.node, lease.ttl.as_micros() as i64],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)? as u64)),
        )
        .optional()?;
    if let Some(taken) = taken {
        return Ok(taken);
    }
    let sql = format!(
        "SELECT lease_node, lease_epoch, lease_expires_us - {DB_NOW_US}
         FROM accounts WHERE id = ?1"
    );
    let (node, epoch, left_us): (String, i64, i64) =
        conn.prepare_cached(&sql)?.query_row([account_id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get::<_, Option<i64>>(2)?.unwrap_or(0),
            ))
        })?;
    Err(DbError::LeaseHeld {
        node,
        epoch: epoch as u64,
        expires_in: Duration::from_micros(left_us.max(0) as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{schema_version, IN_MEMORY, MAX_ACCOUNT_LEN};
    use super::*;

    fn open(path: &Path) -> Result<SqliteStorage, DbError> {
        SqliteStorage::open(path, &StorageOptions::default())
    }

    #[test]
    fn guests_are_fresh_every_time() {
        let mut db = open(Path::new(IN_MEMORY)).unwrap();
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
        let mut db = open(Path::new(IN_MEMORY)).unwrap();
        let long = "x".repeat(MAX_ACCOUNT_LEN + 1);
        assert!(matches!(db.login(&long), Err(DbError::AccountTooLong(65))));
        let ok = "y".repeat(MAX_ACCOUNT_LEN);
        let results = db.login_batch(&[&long, &ok, ""]);
        assert!(results[0].is_err());
        assert!(results[1].as_ref().unwrap().created);
        assert!(results[2].as_ref().unwrap().created);
    }

    #[test]
    fn many_open_one_new_file_at_once() {
        // Nodes on one machine sharing a file start together.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        for round in 0..5 {
            let path = path.with_extension(format!("{round}.db"));
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (path, start) = (path.clone(), std::sync::Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        open(&path).map(|mut db| db.version().unwrap())
                    })
                })
                .collect();
            for thread in threads {
                let version = thread.join().unwrap();
                assert!(
                    matches!(version, Ok(v) if v == schema_version()),
                    "round {round}: {version:?}"
                );
            }
        }
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
        let mut db = open(&path).unwrap();
        assert_eq!(db.version().unwrap(), schema_version());
        let old = db.login("old").unwrap();
        assert!(!old.created);
        assert_eq!(old.login_count, 1);
        assert_eq!(old.players.len(), 1);
        assert_eq!(old.players[0].name, "old_knight");
        assert_eq!(old.players[0].position, None);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = open(&path).unwrap_err();
        assert!(
            matches!(error, DbError::TooNew { found: 99, .. }),
            "{error}"
        );
    }
}
