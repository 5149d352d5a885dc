//! The storage suite: the same checks against SQLite and PostgreSQL —
//! create, load, save positions, concurrent logins of one account,
//! persistence across a restart, the pool's ordering per account, and the
//! account leases (compare-and-set, expiry, renewal, release, fenced
//! saves, nodes racing for one account).
//!
//! The PostgreSQL half uses a fresh database on the server named by
//! `SERVERCORE_TEST_POSTGRES` (skipped with a message when it is unset,
//! failed under CI).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use servercore_game::storage::{
    self, schema_version, DbError, DbTarget, Fence, LeaseTerms, LoginRequest, Position, Storage,
    StorageKind, StorageOptions, StoragePool,
};

/// Where one test's database lives; kept alive for the test.
struct Db {
    target: DbTarget,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        Db {
            target: DbTarget::Sqlite(dir.path().join("game.db")),
            _dir: Some(dir),
        }
    }

    fn postgres() -> Option<Db> {
        Some(Db {
            target: DbTarget::Postgres(servercore_testkit::services::fresh_postgres()?),
            _dir: None,
        })
    }

    fn open(&self) -> Box<dyn Storage> {
        storage::open(&self.target, &StorageOptions::default()).unwrap()
    }
}

/// Generates `name::sqlite` and `name::postgres` for `fn name(&Db)`.
macro_rules! storage_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(&super::Db::sqlite());
                }

                #[test]
                #[cfg_attr(
                    servercore_missing = "postgres",
                    ignore = "needs PostgreSQL: SERVERCORE_TEST_POSTGRES is not set (scripts/test-env starts one)"
                )]
                fn postgres() {
                    if let Some(db) = super::Db::postgres() {
                        super::$name(&db);
                    }
                }
            }
        )*
    };
}

storage_tests!(
    create_then_load,
    guests_are_fresh,
    a_login_that_may_not_create_only_finds,
    save_positions,
    concurrent_logins_of_one_account,
    restart_persistence,
    pool_keeps_each_accounts_order,
    a_lease_is_taken_by_compare_and_set,
    an_expired_lease_is_taken_over,
    renewal_says_what_a_node_still_holds,
    saves_are_fenced_by_the_lease,
    nodes_racing_for_one_account_get_one_lease,
);

/// One login of `account` by `node` with a lease of `ttl`.
fn leased(
    storage: &mut dyn Storage,
    account: &str,
    node: &str,
    ttl: Duration,
) -> Result<storage::AccountRecord, DbError> {
    storage
        .login_many(&[LoginRequest {
            account,
            may_create: true,
            lease: Some(LeaseTerms { node, ttl }),
        }])
        .pop()
        .unwrap()
}

const LONG: Duration = Duration::from_secs(60);

fn a_lease_is_taken_by_compare_and_set(db: &Db) {
    let mut storage = db.open();
    let first = leased(&mut *storage, "leased", "a", LONG).unwrap();
    assert_eq!(first.lease_epoch, Some(1));
    assert_eq!(first.login_count, 1);
    // Another node: refused, naming the holder, and rolled back.
    match leased(&mut *storage, "leased", "b", LONG) {
        Err(DbError::LeaseHeld {
            node,
            epoch,
            expires_in,
        }) => {
            assert_eq!((node.as_str(), epoch), ("a", 1));
            assert!(
                expires_in > Duration::from_secs(50) && expires_in <= LONG,
                "{expires_in:?}"
            );
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // The holder's node takes it again (a newer session there): a new epoch.
    let again = leased(&mut *storage, "leased", "a", LONG).unwrap();
    assert_eq!(again.lease_epoch, Some(2));
    assert_eq!(again.login_count, 2, "the refused login was not counted");
    // An older epoch's release keeps the newer lease.
    assert!(!storage.release_lease("leased", "a", 1).unwrap());
    assert!(leased(&mut *storage, "leased", "b", LONG).is_err());
    assert!(
        !storage.release_lease("leased", "b", 2).unwrap(),
        "b holds nothing"
    );
    assert!(storage.release_lease("leased", "a", 2).unwrap());
    let taken = leased(&mut *storage, "leased", "b", LONG).unwrap();
    assert_eq!(taken.lease_epoch, Some(3));
    // Without a lease (no cluster) and as a guest: no lease at all.
    assert_eq!(storage.login("leased").unwrap().lease_epoch, None);
    let guest = leased(&mut *storage, "", "a", LONG).unwrap();
    assert_eq!(guest.lease_epoch, None);
}

fn an_expired_lease_is_taken_over(db: &Db) {
    let mut storage = db.open();
    let short = Duration::from_millis(300);
    leased(&mut *storage, "expiring", "a", short).unwrap();
    assert!(leased(&mut *storage, "expiring", "b", LONG).is_err());
    std::thread::sleep(short + Duration::from_millis(100));
    let taken = leased(&mut *storage, "expiring", "b", LONG).unwrap();
    assert_eq!(taken.lease_epoch, Some(2));
    // The old holder's renewal no longer has it.
    assert!(storage.renew_leases("a", LONG).unwrap().is_empty());
}

fn renewal_says_what_a_node_still_holds(db: &Db) {
    let mut storage = db.open();
    let short = Duration::from_millis(300);
    leased(&mut *storage, "kept", "a", short).unwrap();
    leased(&mut *storage, "lost", "a", short).unwrap();
    leased(&mut *storage, "other", "b", LONG).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let mut held = storage.renew_leases("a", short).unwrap();
    held.sort();
    assert_eq!(held, [("kept".to_owned(), 1), ("lost".to_owned(), 1)]);
    // Renewed: still held past the first term.
    std::thread::sleep(Duration::from_millis(200));
    assert!(leased(&mut *storage, "kept", "b", LONG).is_err());
    // Not renewed any more: "lost" expires and b takes it.
    std::thread::sleep(short);
    leased(&mut *storage, "lost", "b", LONG).unwrap();
    let mut held = storage.renew_leases("a", LONG).unwrap();
    held.sort();
    assert_eq!(
        held,
        [("kept".to_owned(), 1)],
        "a expired lease renewed if nobody took it"
    );
    assert_eq!(storage.release_node_leases("a").unwrap(), 1);
    assert!(storage.renew_leases("a", LONG).unwrap().is_empty());
    assert_eq!(storage.renew_leases("b", LONG).unwrap().len(), 2);
}

fn saves_are_fenced_by_the_lease(db: &Db) {
    let mut storage = db.open();
    let short = Duration::from_millis(200);
    let record = leased(&mut *storage, "fenced", "a", short).unwrap();
    let player = record.players[0].id;
    let fence = Fence {
        account: "fenced".into(),
        node: "a".into(),
        epoch: record.lease_epoch.unwrap(),
    };
    let here = Position {
        x: 10.0,
        y: 20.0,
        z: 0.0,
        yaw: 0.0,
    };
    assert!(storage.save_position_fenced(player, here, &fence).unwrap());
    std::thread::sleep(short + Duration::from_millis(100));
    let taken = leased(&mut *storage, "fenced", "b", LONG).unwrap();
    assert_eq!(taken.players[0].position, Some(here));
    let stale = Position { x: 99.0, ..here };
    assert!(
        !storage.save_position_fenced(player, stale, &fence).unwrap(),
        "a's save after b took the account is not written"
    );
    // Nor after b let go: the epoch moved on.
    storage.release_lease("fenced", "b", 2).unwrap();
    assert!(!storage.save_position_fenced(player, stale, &fence).unwrap());
    let now = storage.login("fenced").unwrap();
    assert_eq!(now.players[0].position, Some(here));
    // Another account's player is never written through a fence.
    let other = storage.login("bystander").unwrap().players[0].id;
    let fence = Fence {
        epoch: 2,
        node: "b".into(),
        ..fence
    };
    assert!(!storage.save_position_fenced(other, stale, &fence).unwrap());
}

fn nodes_racing_for_one_account_get_one_lease(db: &Db) {
    const NODES: usize = 6;
    const ROUNDS: usize = 5;
    let target = Arc::new(db.target.clone());
    for round in 0..ROUNDS {
        let account = format!("raced{round}");
        let start = Arc::new(std::sync::Barrier::new(NODES));
        let threads: Vec<_> = (0..NODES)
            .map(|n| {
                let (target, start, account) =
                    (Arc::clone(&target), Arc::clone(&start), account.clone());
                std::thread::spawn(move || {
                    let mut storage = storage::open(&target, &StorageOptions::default()).unwrap();
                    start.wait();
                    leased(&mut *storage, &account, &format!("n{n}"), LONG)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: one node wins: {results:?}");
        assert_eq!(won[0].as_ref().unwrap().lease_epoch, Some(1));
        for result in &results {
            if let Err(error) = result {
                assert!(
                    matches!(error, DbError::LeaseHeld { epoch: 1, .. }),
                    "round {round}: {error}"
                );
            }
        }
    }
}

fn create_then_load(db: &Db) {
    let mut storage = db.open();
    assert_eq!(storage.version().unwrap(), schema_version());
    let first = storage.login("alice").unwrap();
    assert!(first.created);
    assert_eq!(first.login_count, 1);
    let names: Vec<_> = first.players.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alice_knight", "alice_mage", "alice_archer"]);
    let types: Vec<_> = first.players.iter().map(|p| p.player_type).collect();
    assert_eq!(types, [1, 2, 3]);
    assert!(first.players.iter().all(|p| p.position.is_none()));
    let again = storage.login("alice").unwrap();
    assert!(!again.created);
    assert_eq!(again.login_count, 2);
    assert_eq!(again.account_id, first.account_id);
    assert_eq!(again.players, first.players);
    let bob = storage.login("bob").unwrap();
    assert_ne!(bob.account_id, first.account_id);
    assert!(bob.players.iter().all(|p| !first.players.contains(p)));
    // One batch: a refused name is rolled back alone.
    let long = "x".repeat(storage::MAX_ACCOUNT_LEN + 1);
    let results = storage.login_batch(&["carol", &long, "alice"]);
    assert!(results[0].as_ref().unwrap().created);
    assert!(matches!(
        results[1],
        Err(storage::DbError::AccountTooLong(65))
    ));
    assert_eq!(results[2].as_ref().unwrap().login_count, 3);
}

fn guests_are_fresh(db: &Db) {
    let mut storage = db.open();
    let a = storage.login("").unwrap();
    let b = storage.login("").unwrap();
    assert!(a.created && b.created);
    assert_ne!(a.account_id, b.account_id);
    assert_eq!(a.players[0].name, format!("guest{}_knight", a.account_id));
}

fn a_login_that_may_not_create_only_finds(db: &Db) {
    let mut storage = db.open();
    let existing = storage.login("existing").unwrap();
    let results = storage.login_batch_with(&[("existing", false), ("absent", false), ("", false)]);
    let found = results[0].as_ref().unwrap();
    assert!(!found.created);
    assert_eq!(found.account_id, existing.account_id);
    assert_eq!(found.login_count, 2);
    assert!(matches!(results[1], Err(storage::DbError::NoSuchAccount)));
    assert!(matches!(results[2], Err(storage::DbError::NoSuchAccount)));
    // Nothing was created: the absent account is new once creation is
    // allowed.
    assert!(storage.login("absent").unwrap().created);
}

fn save_positions(db: &Db) {
    let mut storage = db.open();
    let record = storage.login("walker").unwrap();
    let knight = record.players[0].id;
    let mage = record.players[1].id;
    let here = Position {
        x: 123.5,
        y: 1999.25,
        z: 0.0,
        yaw: 90.0,
    };
    let there = Position {
        x: 0.0,
        y: 7.0,
        z: 1.5,
        yaw: -45.0,
    };
    storage.save_positions(&[(knight, here)]).unwrap();
    storage
        .save_positions(&[(mage, here), (mage, there)])
        .unwrap();
    let loaded = storage.login("walker").unwrap();
    assert_eq!(loaded.players[0].position, Some(here));
    assert_eq!(loaded.players[1].position, Some(there));
    assert_eq!(loaded.players[2].position, None);
    // A save for a player that does not exist changes nothing.
    storage.save_positions(&[(u64::MAX >> 1, here)]).unwrap();
}

fn concurrent_logins_of_one_account(db: &Db) {
    const THREADS: usize = 6;
    const LOGINS: u64 = 5;
    let target = Arc::new(db.target.clone());
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let target = Arc::clone(&target);
            std::thread::spawn(move || {
                let mut storage = storage::open(&target, &StorageOptions::default()).unwrap();
                (0..LOGINS)
                    .map(|_| storage.login("shared").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let records: Vec<_> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    let created = records.iter().filter(|r| r.created).count();
    assert_eq!(created, 1, "the account is created exactly once");
    let account = records[0].account_id;
    assert!(records.iter().all(|r| r.account_id == account));
    assert!(records.iter().all(|r| r.players == records[0].players));
    let mut counts: Vec<u64> = records.iter().map(|r| r.login_count).collect();
    counts.sort_unstable();
    let expected: Vec<u64> = (1..=THREADS as u64 * LOGINS).collect();
    assert_eq!(counts, expected, "every login counted once");
}

fn restart_persistence(db: &Db) {
    let (account, knight) = {
        let mut storage = db.open();
        let record = storage.login("keeper").unwrap();
        let pos = Position {
            x: 42.0,
            y: 24.0,
            z: 0.0,
            yaw: 180.0,
        };
        storage
            .save_positions(&[(record.players[0].id, pos)])
            .unwrap();
        (record.account_id, record.players[0].id)
    };
    let mut storage = db.open();
    let record = storage.login("keeper").unwrap();
    assert!(!record.created);
    assert_eq!(record.account_id, account);
    assert_eq!(record.login_count, 2);
    assert_eq!(record.players[0].id, knight);
    assert_eq!(
        record.players[0].position.map(|p| (p.x, p.y)),
        Some((42.0, 24.0))
    );
    assert_eq!(storage.version().unwrap(), schema_version());
}

fn pool_keeps_each_accounts_order(db: &Db) {
    let options = StorageOptions {
        pool_size: 3,
        ..StorageOptions::default()
    };
    let mut pool = StoragePool::start(&db.target, &options).unwrap();
    assert_eq!(pool.threads(), 3);
    let kind = pool.kind();
    assert_eq!(
        kind,
        match db.target {
            DbTarget::Sqlite(_) => StorageKind::Sqlite,
            DbTarget::Postgres(_) => StorageKind::Postgres,
        }
    );
    let handle = pool.handle();
    let (tx, rx) = mpsc::channel();
    // Per account: login, save, barrier, login: the second login must see
    // the save, and the barrier comes between.
    for n in 0..12u32 {
        let account = format!("order{n}");
        let (tx1, tx2, tx3) = (tx.clone(), tx.clone(), tx.clone());
        let name = account.clone();
        let saver = handle.clone();
        handle.login(
            account.clone(),
            true,
            Box::new(move |result| {
                let record = result.unwrap();
                let player = record.players[0].id;
                let pos = Position {
                    x: n as f32,
                    y: 1.0,
                    z: 0.0,
                    yaw: 0.0,
                };
                saver.save_position(&name, player, pos, None);
                let barrier_tx = tx1.clone();
                saver.barrier(
                    &name,
                    Box::new(move || barrier_tx.send((n, "barrier", None)).unwrap()),
                );
                saver.login(
                    name.clone(),
                    false,
                    Box::new(move |result| {
                        let x = result.unwrap().players[0].position.map(|p| p.x);
                        tx2.send((n, "second", x)).unwrap();
                    }),
                );
                tx1.send((n, "first", None)).unwrap();
            }),
        );
        drop(tx3);
    }
    let mut seen = std::collections::HashMap::<u32, Vec<&str>>::new();
    for _ in 0..36 {
        let (n, what, x) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        if what == "second" {
            assert_eq!(x, Some(n as f32), "account {n}: the save came first");
        }
        seen.entry(n).or_default().push(what);
    }
    for (n, order) in seen {
        assert_eq!(order, ["first", "barrier", "second"], "account {n}");
    }
    pool.stop_and_join();
    let (late_tx, late_rx) = mpsc::channel();
    handle.login(
        "late".into(),
        true,
        Box::new(move |result| late_tx.send(result.is_err()).unwrap()),
    );
    assert!(late_rx.recv_timeout(Duration::from_secs(1)).unwrap());
}
