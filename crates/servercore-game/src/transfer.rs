//! Hand-over between zones (one world across nodes, see [`crate::zones`]):
//! the single-use transfer tokens and what a node does for a player whose
//! position passed into another node's zone.
//!
//! The world notices the crossing in a tick, stops taking the player's
//! moves and keeps showing it (see `world::Transfer`); this module then
//! saves its position through its account's database thread (the storage
//! barrier: the target reads the account after the save, since the login
//! there takes the account's lease only once this node lets go of it,
//! after every save), and once the save is committed sends the client
//! `S_TRANSFER` (the target's name, TCP address, WebSocket URL, a token,
//! the position) and closes the session after the flush.
//!
//! A token is an HS256 JWT signed with the cluster secret
//! (`--cluster-secret`), claims `sub` (account), `player` (id), `node`
//! (the target), `exp` (30 s) and `jti` (unique). The target takes it as
//! `C_LOGIN.account` once ([`Transfers::accept`]): refused when expired,
//! signed with another secret, for another node, or used before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use servercore_protocol::{make_packet, STransfer};

use crate::auth::{TokenError, TokenKey};
use crate::storage::{Position, MAX_ACCOUNT_LEN};
use crate::world::{Seat, Transfer, Transferer};
use crate::GameContext;

/// How long a transfer token is valid: 30 s.
pub const TRANSFER_TOKEN_TTL: Duration = Duration::from_secs(30);

/// The claims of a transfer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferClaims {
    /// The account.
    pub sub: String,
    /// The player handed over.
    pub player: u64,
    /// The node it is handed to (the only one that takes the token).
    pub node: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The token's unique id (single use).
    pub jti: String,
}

/// Why a transfer token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferRefusal {
    /// Past its `exp`.
    Expired,
    /// Not signed with this cluster's secret.
    BadSignature,
    /// For another node.
    WrongNode(String),
    /// Used before.
    Reused,
    /// Not a transfer token (claims missing or of the wrong type).
    Malformed(String),
}

impl std::fmt::Display for TransferRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferRefusal::Expired => f.write_str("transfer token expired"),
            TransferRefusal::BadSignature => {
                f.write_str("transfer token not signed with this cluster's secret")
            }
            TransferRefusal::WrongNode(node) => {
                write!(f, "transfer token for another node ({node})")
            }
            TransferRefusal::Reused => f.write_str("transfer token used before"),
            TransferRefusal::Malformed(detail) => write!(f, "malformed transfer token: {detail}"),
        }
    }
}

/// True if `account` is shaped like a JWT (its header decodes): on a node
/// of a shared world such a `C_LOGIN.account` is a token, never a name.
pub fn looks_like_token(account: &str) -> bool {
    account.len() > 16 && jsonwebtoken::decode_header(account).is_ok()
}

/// This node's transfer tokens: minting for players it hands over,
/// checking (once) those handed to it.
pub struct Transfers {
    key: TokenKey,
    node: String,
    /// Tokens taken, by `jti`, with their expiry (forgotten once expired).
    used: Mutex<HashMap<String, u64>>,
    minted: AtomicU64,
    /// The players this node is handing over, by account, until another
    /// node says the account logged in there.
    handing: Mutex<HashMap<String, Weak<Seat>>>,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers")
            .field("node", &self.node)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Transfers {
    /// The tokens of node `node`, signed with the cluster secret `key`.
    pub fn new(key: TokenKey, node: impl Into<String>) -> Transfers {
        Transfers {
            key,
            node: node.into(),
            used: Mutex::default(),
            minted: AtomicU64::new(0),
            handing: Mutex::default(),
        }
    }

    /// This node hands `seat` over: remembered until its account logs in
    /// on another node ([`Transfers::arrived_elsewhere`]).
    pub(crate) fn handing_over(&self, seat: &Arc<Seat>) {
        let mut handing = self.handing.lock();
        if handing.len() >= 256 {
            // Players let go already (arrived, or never did) are forgotten.
            handing.retain(|_, seat| seat.strong_count() > 0);
        }
        handing.insert(seat.account().to_owned(), Arc::downgrade(seat));
    }

    /// `account` logged in on another node: a player of it this node is
    /// handing over is there now. The world lets it go even where the
    /// target's border cells do not show it here (without this it would
    /// stay, still, for the 10 s a player has to arrive).
    pub(crate) fn arrived_elsewhere(&self, account: &str) {
        if let Some(seat) = self.handing.lock().remove(account) {
            if let Some(seat) = seat.upgrade() {
                seat.note_arrived_elsewhere();
            }
        }
    }

    /// A token handing `account`'s player `player` to `target`, valid for
    /// [`TRANSFER_TOKEN_TTL`].
    pub fn mint(&self, account: &str, player: u64, target: &str) -> anyhow::Result<String> {
        self.mint_expiring(
            account,
            player,
            target,
            unix_now() + TRANSFER_TOKEN_TTL.as_secs(),
        )
    }

    /// [`Transfers::mint`] with a given expiry (seconds since the epoch;
    /// tests of expiry).
    pub fn mint_expiring(
        &self,
        account: &str,
        player: u64,
        target: &str,
        exp: u64,
    ) -> anyhow::Result<String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let serial = self.minted.fetch_add(1, Ordering::Relaxed);
        self.key.sign(&TransferClaims {
            sub: account.to_owned(),
            player,
            node: target.to_owned(),
            exp,
            jti: format!("{}.{nanos:x}.{serial}", self.node),
        })
    }

    /// Checks a token handed to this node and takes it (once).
    pub fn accept(&self, token: &str) -> Result<TransferClaims, TransferRefusal> {
        let claims: TransferClaims = self.key.open(token).map_err(|error| match error {
            TokenError::Expired => TransferRefusal::Expired,
            TokenError::BadSignature => TransferRefusal::BadSignature,
            other => TransferRefusal::Malformed(other.to_string()),
        })?;
        if claims.node != self.node {
            return Err(TransferRefusal::WrongNode(claims.node));
        }
        if claims.sub.is_empty() || claims.sub.len() > MAX_ACCOUNT_LEN || claims.jti.len() > 200 {
            return Err(TransferRefusal::Malformed("bad sub or jti".into()));
        }
        let now = unix_now();
        let mut used = self.used.lock();
        used.retain(|_, exp| *exp >= now);
        if used.contains_key(&claims.jti) {
            return Err(TransferRefusal::Reused);
        }
        used.insert(claims.jti.clone(), claims.exp);
        Ok(claims)
    }
}

/// The world's [`Transferer`] for the game `ctx`: for each player handed
/// over, the save, then `S_TRANSFER` and the close.
pub(crate) fn transferer(ctx: Weak<GameContext>) -> Transferer {
    Arc::new(move |batch: Vec<Transfer>| {
        let Some(ctx) = ctx.upgrade() else { return };
        let (Some(transfers), Some(cluster)) = (ctx.transfers.clone(), ctx.cluster.clone()) else {
            return;
        };
        for Transfer { seat, pos, target } in batch {
            transfers.handing_over(&seat);
            let account = seat.account().to_owned();
            let player = seat.player_id;
            let handle = seat.handle().clone();
            let (addr, ws_url) = cluster.node_addrs(&target).unwrap_or_default();
            let transfers = Arc::clone(&transfers);
            let saved = Position {
                x: pos.x,
                y: pos.y,
                z: pos.z,
                yaw: pos.yaw,
            };
            let shard = account.clone();
            ctx.db.save_position(
                &shard,
                player,
                saved,
                Some(Box::new(move |result| {
                    if let Err(error) = result {
                        tracing::warn!(%account, player, %error, "saving a player handed over failed");
                    }
                    match transfers.mint(&account, player, &target) {
                        Ok(token) => {
                            tracing::debug!(%account, player, %target, "handing a player over");
                            let _ = handle.send(make_packet(&STransfer {
                                node: target,
                                addr,
                                ws_url,
                                token,
                                pos: Some(pos),
                            }));
                        }
                        Err(error) => {
                            tracing::warn!(%account, player, %error, "cannot mint a transfer token")
                        }
                    }
                    handle.disconnect();
                })),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> TokenKey {
        TokenKey::from_secret(secret).unwrap()
    }

    const SECRET: &[u8] = b"the cluster secret, 32 bytes or more";

    #[test]
    fn a_token_is_taken_once_by_its_node_only() {
        let a = Transfers::new(key(SECRET), "a");
        let b = Transfers::new(key(SECRET), "b");
        let token = a.mint("alice", 7, "b").unwrap();
        assert!(looks_like_token(&token));
        assert!(!looks_like_token("alice"));
        let claims = b.accept(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.player, claims.node.as_str()),
            ("alice", 7, "b")
        );
        assert!(claims.exp >= unix_now() + 29 && claims.jti.starts_with("a."));
        assert_eq!(b.accept(&token), Err(TransferRefusal::Reused));
        // Another token, another jti.
        let again = a.mint("alice", 7, "b").unwrap();
        assert!(b.accept(&again).is_ok());
        // For b, shown to a.
        let other = a.mint("alice", 7, "b").unwrap();
        assert_eq!(
            a.accept(&other),
            Err(TransferRefusal::WrongNode("b".into()))
        );
        // Expired.
        let old = a.mint_expiring("alice", 7, "b", unix_now() - 1).unwrap();
        assert_eq!(b.accept(&old), Err(TransferRefusal::Expired));
        // Another secret.
        let foreign = Transfers::new(key(b"another secret of 32 bytes or more!"), "a");
        let forged = foreign.mint("alice", 7, "b").unwrap();
        assert_eq!(b.accept(&forged), Err(TransferRefusal::BadSignature));
        // A login token is no transfer token.
        let login = key(SECRET).mint("alice", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            b.accept(&login),
            Err(TransferRefusal::Malformed(_))
        ));
    }
}
