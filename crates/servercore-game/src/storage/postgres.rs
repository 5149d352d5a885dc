//! The PostgreSQL backend: a database server shared by every node of a
//! cluster, its schema and migrations (tracked in a `schema_version` table,
//! applied under an advisory lock so nodes starting together migrate once),
//! and reconnection after an outage.
//!
//! A connection that fails (the server stopped, the network cut, a
//! statement timed out) is dropped; requests then fail at once with
//! [`DbError::Unavailable`] while a new connection is tried at most every
//! [`RECONNECT_INTERVAL`]. The outage is logged once, and its end once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement, Transaction};

use crate::redact::{redact_url, scrub};

use super::{
    check_account, now_us, AccountRecord, DbError, Fence, LoginRequest, PlayerRecord, Position,
    Storage, StorageKind, StorageOptions, STARTER_PLAYERS,
};

/// Shortest time between two connection attempts while the server is down.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// The advisory lock key held while migrating.
const MIGRATION_LOCK: i64 = 0x5345_5256_4552_4331; // "SERVERC1"

/// The schema, one step per version, the same steps as
/// [`super::sqlite::MIGRATIONS`] in PostgreSQL's dialect.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts and their players (a guest account has no name).
    "CREATE TABLE accounts (
         id            BIGSERIAL PRIMARY KEY,
         name          TEXT UNIQUE,
         created_at_us BIGINT NOT NULL
     );
     CREATE TABLE players (
         id          BIGSERIAL PRIMARY KEY,
         account_id  BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
         slot        INTEGER NOT NULL,
         name        TEXT NOT NULL,
         player_type INTEGER NOT NULL,
         UNIQUE (account_id, slot)
     );",
    // 2: login bookkeeping.
    "ALTER TABLE accounts ADD COLUMN last_login_at_us BIGINT;
     ALTER TABLE accounts ADD COLUMN login_count BIGINT NOT NULL DEFAULT 0;",
    // 3: where each player left the world (NULL: never entered).
    "ALTER TABLE players ADD COLUMN x REAL;
     ALTER TABLE players ADD COLUMN y REAL;
     ALTER TABLE players ADD COLUMN z REAL;
     ALTER TABLE players ADD COLUMN yaw REAL;",
    // 4: the account's lease (see the SQLite step).
    "ALTER TABLE accounts ADD COLUMN lease_node TEXT;
     ALTER TABLE accounts ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE accounts ADD COLUMN lease_expires_us BIGINT;
     CREATE INDEX accounts_by_lease_node ON accounts (lease_node)
         WHERE lease_node IS NOT NULL;",
];

/// The server's clock in microseconds since the Unix epoch, at the start
/// of the statement: every node judges expiry by the database's clock.
const DB_NOW_US: &str = "(extract(epoch FROM statement_timestamp()) * 1000000)::bigint";

/// The statements one connection prepared.
struct Statements {
    insert_named: Statement,
    insert_guest: Statement,
    find_account: Statement,
    insert_player: Statement,
    count_login: Statement,
    players: Statement,
    save_position: Statement,
    take_lease: Statement,
    lease_holder: Statement,
    save_position_fenced: Statement,
    renew_leases: Statement,
    release_lease: Statement,
    release_node_leases: Statement,
}

struct Connection {
    client: Client,
    statements: Statements,
}

/// A PostgreSQL connection that reconnects after an outage. Not
/// thread-safe: a database thread owns one.
pub struct PostgresStorage {
    config: postgres::Config,
    url: String,
    connection: Option<Connection>,
    /// When the last connection attempt failed (None: not down).
    down_since: Option<Instant>,
    last_attempt: Option<Instant>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("url", &self.url)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

fn is_unavailable(error: &postgres::Error) -> bool {
    // No SQLSTATE: the connection itself failed (refused, closed, timed
    // out), not the statement. Admin shutdown and "cannot connect now" come
    // with one but mean the same.
    error.is_closed()
        || match error.code() {
            None => true,
            Some(code) => {
                *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::QUERY_CANCELED
            }
        }
}

fn pg_error(error: postgres::Error) -> DbError {
    if is_unavailable(&error) {
        DbError::Unavailable(with_causes(&error))
    } else {
        DbError::Postgres(Arc::new(error))
    }
}

/// An error's text followed by its causes' (the client's "error
/// connecting to server" keeps the operating system's "Connection refused"
/// in its source, which the string would otherwise lose).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl PostgresStorage {
    /// Connects to `url` and migrates the schema. A server that cannot be
    /// reached is an error here (a node does not start without its
    /// database); later outages are survived.
    pub fn open(url: &str, options: &StorageOptions) -> Result<PostgresStorage, DbError> {
        let mut config: postgres::Config = url.parse().map_err(|error: postgres::Error| {
            DbError::Unavailable(format!("bad URL: {}", scrub(&error.to_string(), url)))
        })?;
        config
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .options(&format!(
                "-c statement_timeout={}",
                options.statement_timeout.as_millis().max(1)
            ));
        if config.get_application_name().is_none() {
            config.application_name("servercore");
        }
        let mut storage = PostgresStorage {
            config,
            url: redact_url(url),
            connection: None,
            down_since: None,
            last_attempt: None,
        };
        storage.connect()?;
        Ok(storage)
    }

    fn connect(&mut self) -> Result<(), DbError> {
        self.last_attempt = Some(Instant::now());
        let mut client = self.config.connect(NoTls).map_err(pg_error)?;
        migrate(&mut client)?;
        let statements = prepare(&mut client).map_err(pg_error)?;
        self.connection = Some(Connection { client, statements });
        Ok(())
    }

    /// The live connection, reconnecting if the last one failed and the
    /// retry interval has passed.
    fn connection(&mut self) -> Result<&mut Connection, DbError> {
        if self
            .connection
            .as_ref()
            .is_some_and(|connection| connection.client.is_closed())
        {
            self.lost("connection closed".into());
        }
        if self.connection.is_none() {
            let recently = self
                .last_attempt
                .is_some_and(|at| at.elapsed() < RECONNECT_INTERVAL);
            if recently {
                return Err(DbError::Unavailable(format!("{} is down", self.url)));
            }
            if let Err(error) = self.connect() {
                self.lost(error.to_string());
                return Err(error);
            }
            if let Some(since) = self.down_since.take() {
                tracing::warn!(
                    url = %self.url,
                    down_ms = since.elapsed().as_millis() as u64,
                    "postgres is back"
                );
            }
        }
        self.connection
            .as_mut()
            .ok_or_else(|| DbError::Unavailable(format!("{} is down", self.url)))
    }

    /// Drops the connection; logs the outage when it starts.
    fn lost(&mut self, why: String) {
        self.connection = None;
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(url = %self.url, %why, "postgres unavailable; requests fail until it answers");
        }
    }

    /// Runs `f` on the connection; a connection-level failure drops it.
    fn with_connection<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let connection = self.connection()?;
        let result = f(connection);
        if let Err(DbError::Unavailable(why)) = &result {
            let why = why.clone();
            self.lost(why);
        }
        result
    }
}

fn migrate(client: &mut Client) -> Result<(), DbError> {
    let supported = super::schema_version();
    let mut tx = client.transaction().map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(pg_error)?;
    let row = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .map_err(pg_error)?;
    let found = match row {
        Some(row) => row.get::<_, i32>(0) as u32,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])
                .map_err(pg_error)?;
            0
        }
    };
    if found > supported {
        return Err(DbError::TooNew { found, supported });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i32 + 1;
        tx.batch_execute(step).map_err(pg_error)?;
        tx.execute("UPDATE schema_version SET version = $1", &[&version])
            .map_err(pg_error)?;
        tracing::info!(version, "postgres schema migrated");
    }
    tx.commit().map_err(pg_error)
}

fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
    Ok(Statements {
        insert_named: client.prepare(
            "INSERT INTO accounts (name, created_at_us) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )?,
        insert_guest: client
            .prepare("INSERT INTO accounts (name, created_at_us) VALUES (NULL, $1) RETURNING id")?,
        find_account: client.prepare("SELECT id FROM accounts WHERE name = $1")?,
        insert_player: client.prepare(
            "INSERT INTO players (account_id, slot, name, player_type) VALUES ($1, $2, $3, $4)",
        )?,
        count_login: client.prepare(
            "UPDATE accounts SET last_login_at_us = $2, login_count = login_count + 1
             WHERE id = $1 RETURNING login_count",
        )?,
        players: client.prepare(
            "SELECT id, name, player_type, x, y, z, yaw
             FROM players WHERE account_id = $1 ORDER BY slot",
        )?,
        save_position: client
            .prepare("UPDATE players SET x = $2, y = $3, z = $4, yaw = $5 WHERE id = $1")?,
        take_lease: client.prepare(&format!(
            "UPDATE accounts SET last_login_at_us = $2, login_count = login_count + 1,
                 lease_node = $3, lease_epoch = lease_epoch + 1,
                 lease_expires_us = {DB_NOW_US} + $4
             WHERE id = $1
               AND (lease_node IS NULL OR lease_node = $3 OR lease_expires_us < {DB_NOW_US})
             RETURNING login_count, lease_epoch"
        ))?,
        lease_holder: client.prepare(&format!(
            "SELECT lease_node, lease_epoch, lease_expires_us - {DB_NOW_US}
             FROM accounts WHERE id = $1"
        ))?,
        save_position_fenced: client.prepare(
            "UPDATE players SET x = $2, y = $3, z = $4, yaw = $5
             WHERE id = $1 AND account_id = (
                 SELECT id FROM accounts
                 WHERE name = $6 AND lease_node = $7 AND lease_epoch = $8)",
        )?,
        renew_leases: client.prepare(&format!(
            "UPDATE accounts SET lease_expires_us = {DB_NOW_US} + $2
             WHERE lease_node = $1 RETURNING name, lease_epoch"
        ))?,
        release_lease: client.prepare(
            "UPDATE accounts SET lease_node = NULL, lease_expires_us = NULL
             WHERE name = $1 AND lease_node = $2 AND lease_epoch <= $3",
        )?,
        release_node_leases: client.prepare(
            "UPDATE accounts SET lease_node = NULL, lease_expires_us = NULL
             WHERE lease_node = $1",
        )?,
    })
}

/// How a login inside [`login_in`] ended, short of an error.
enum LoginOutcome {
    Done(AccountRecord),
    NoSuchAccount,
    LeaseHeld {
        node: String,
        epoch: u64,
        expires_in: Duration,
    },
}

/// The login itself, inside a savepoint of the batch's transaction.
fn login_in(
    tx: &mut Transaction<'_>,
    st: &Statements,
    login: &LoginRequest<'_>,
) -> Result<LoginOutcome, postgres::Error> {
    let LoginRequest {
        account,
        may_create,
        lease,
    } = *login;
    let lease = lease.filter(|_| !account.is_empty());
    let now = now_us();
    let (account_id, created): (i64, bool) = if !may_create {
        match tx.query_opt(&st.find_account, &[&account])? {
            Some(row) if !account.is_empty() => (row.get(0), false),
            _ => return Ok(LoginOutcome::NoSuchAccount),
        }
    } else if account.is_empty() {
        (tx.query_one(&st.insert_guest, &[&now])?.get(0), true)
    } else {
        // A concurrent login of the same new account (another node) waits
        // on the unique index, then finds the row the other committed.
        match tx.query_opt(&st.insert_named, &[&account, &now])? {
            Some(row) => (row.get(0), true),
            None => (tx.query_one(&st.find_account, &[&account])?.get(0), false),
        }
    };
    if created {
        let prefix = if account.is_empty() {
            format!("guest{account_id}")
        } else {
            account.to_owned()
        };
        for (slot, (kind, player_type)) in STARTER_PLAYERS.iter().enumerate() {
            let name = format!("{prefix}_{kind}");
            tx.execute(
                &st.insert_player,
                &[&account_id, &(slot as i32), &name, player_type],
            )?;
        }
    }
    let (login_count, lease_epoch): (i64, Option<u64>) = match lease {
        None => (
            tx.query_one(&st.count_login, &[&account_id, &now])?.get(0),
            None,
        ),
        Some(lease) => {
            let ttl = lease.ttl.as_micros() as i64;
            match tx.query_opt(&st.take_lease, &[&account_id, &now, &lease.node, &ttl])? {
                Some(row) => (row.get(0), Some(row.get::<_, i64>(1) as u64)),
                None => {
                    let row = tx.query_one(&st.lease_holder, &[&account_id])?;
                    let left: Option<i64> = row.get(2);
                    return Ok(LoginOutcome::LeaseHeld {
                        node: row.get::<_, Option<String>>(0).unwrap_or_default(),
                        epoch: row.get::<_, i64>(1) as u64,
                        expires_in: Duration::from_micros(left.unwrap_or(0).max(0) as u64),
                    });
                }
            }
        }
    };
    let players = tx
        .query(&st.players, &[&account_id])?
        .iter()
        .map(|row| {
            let coords: (Option<f32>, Option<f32>, Option<f32>, Option<f32>) =
                (row.get(3), row.get(4), row.get(5), row.get(6));
            PlayerRecord {
                id: row.get::<_, i64>(0) as u64,
                name: row.get(1),
                player_type: row.get(2),
                position: match coords {
                    (Some(x), Some(y), z, yaw) => Some(Position {
                        x,
                        y,
                        z: z.unwrap_or(0.0),
                        yaw: yaw.unwrap_or(0.0),
                    }),
                    _ => None,
                },
            }
        })
        .collect();
    Ok(LoginOutcome::Done(AccountRecord {
        account_id: account_id as u64,
        created,
        login_count: login_count as u64,
        players,
        lease_epoch,
    }))
}

/// One login in its own savepoint; a deadlock or serialization failure
/// (two nodes logging in crossing accounts) is retried once.
fn login_savepoint(
    tx: &mut Transaction<'_>,
    st: &Statements,
    login: &LoginRequest<'_>,
) -> Result<AccountRecord, DbError> {
    check_account(login.account)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut sp = tx.transaction().map_err(pg_error)?;
        // Dropping `sp` without a commit rolls this login back alone.
        match login_in(&mut sp, st, login) {
            Ok(LoginOutcome::Done(record)) => {
                sp.commit().map_err(pg_error)?;
                return Ok(record);
            }
            Ok(LoginOutcome::NoSuchAccount) => return Err(DbError::NoSuchAccount),
            Ok(LoginOutcome::LeaseHeld {
                node,
                epoch,
                expires_in,
            }) => {
                return Err(DbError::LeaseHeld {
                    node,
                    epoch,
                    expires_in,
                })
            }
            Err(error) => {
                let retry = attempt == 1
                    && matches!(
                        error.code(),
                        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
                            || *code == SqlState::T_R_SERIALIZATION_FAILURE
                    );
                drop(sp); // rolls back to the savepoint
                if !retry {
                    return Err(pg_error(error));
                }
            }
        }
    }
}

impl Storage for PostgresStorage {
    fn kind(&self) -> StorageKind {
        StorageKind::Postgres
    }

    fn version(&mut self) -> Result<u32, DbError> {
        self.with_connection(|connection| {
            let row = connection
                .client
                .query_one("SELECT version FROM schema_version", &[])
                .map_err(pg_error)?;
            Ok(row.get::<_, i32>(0) as u32)
        })
    }

    fn login_many(&mut self, logins: &[LoginRequest<'_>]) -> Vec<Result<AccountRecord, DbError>> {
        let result = self.with_connection(|connection| {
            let Connection { client, statements } = connection;
            let mut tx = client.transaction().map_err(pg_error)?;
            let mut results = Vec::with_capacity(logins.len());
            for login in logins {
                let result = login_savepoint(&mut tx, statements, login);
                if let Err(DbError::Unavailable(why)) = &result {
                    // The connection is gone: the rest cannot run either.
                    return Err(DbError::Unavailable(why.clone()));
                }
                results.push(result);
            }
            tx.commit().map_err(pg_error)?;
            Ok(results)
        });
        match result {
            Ok(results) => results,
            Err(error) => logins.iter().map(|_| Err(error.clone())).collect(),
        }
    }

    fn save_positions(&mut self, saves: &[(u64, Position)]) -> Result<(), DbError> {
        self.with_connection(|connection| {
            let Connection { client, statements } = connection;
            let mut tx = client.transaction().map_err(pg_error)?;
            for (player_id, pos) in saves {
                tx.execute(
                    &statements.save_position,
                    &[&(*player_id as i64), &pos.x, &pos.y, &pos.z, &pos.yaw],
                )
                .map_err(pg_error)?;
            }
            tx.commit().map_err(pg_error)
        })
    }

    fn save_position_fenced(
        &mut self,
        player_id: u64,
        pos: Position,
        fence: &Fence,
    ) -> Result<bool, DbError> {
        self.with_connection(|connection| {
            let Connection { client, statements } = connection;
            let written = client
                .execute(
                    &statements.save_position_fenced,
                    &[
                        &(player_id as i64),
                        &pos.x,
                        &pos.y,
                        &pos.z,
                        &pos.yaw,
                        &fence.account,
                        &fence.node,
                        &(fence.epoch as i64),
                    ],
                )
                .map_err(pg_error)?;
            Ok(written > 0)
        })
    }

    fn renew_leases(&mut self, node: &str, ttl: Duration) -> Result<Vec<(String, u64)>, DbError> {
        self.with_connection(|connection| {
            let Connection { client, statements } = connection;
            let ttl = ttl.as_micros() as i64;
            let rows = client
                .query(&statements.renew_leases, &[&node, &ttl])
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    fn release_lease(
        &mut self,
        account: &str,
        node: &str,
        up_to_epoch: u64,
    ) -> Result<bool, DbError> {
        self.with_connection(|connection| {
            let Connection { client, statements } = connection;
            let released = client
                .execute(
                    &statements.release_lease,
                    &[&account, &node, &(up_to_epoch as i64)],
                )
                .map_err(pg_error)?;
            Ok(released > 0)
        })
    }

    fn release_node_leases(&mut self, node: &str) -> Result<u64, DbError> {
        self.with_connection(|connection| {
            let Connection { client, statements } = connection;
            client
                .execute(&statements.release_node_leases, &[&node])
                .map_err(pg_error)
        })
    }
}
