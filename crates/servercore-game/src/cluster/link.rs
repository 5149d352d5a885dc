//! The link's thread: a current-thread tokio runtime running the NATS
//! client, the subscriptions, the heartbeat and the commands of the game.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Message, Subscriber};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::redact::{percent_decode, scrub, split_userinfo};

use super::{
    ClusterEvents, Command, Shared, CHAT_SUBJECT, HEARTBEAT_PREFIX, KICK_PREFIX, LEAVE_PREFIX,
    OFFLINE_SUBJECT, ONLINE_SUBJECT,
};

/// Longest wait for the last messages to go out when the node stops.
const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct PresenceEvent {
    node: String,
    account: String,
}

#[derive(Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    accounts: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Leave {
    node: String,
}

/// The thread's body: builds the runtime, connects, reports the start,
/// then serves until [`Command::Stop`].
pub(super) fn run(
    shared: Arc<Shared>,
    events: Arc<dyn ClusterEvents>,
    commands: mpsc::UnboundedReceiver<Command>,
    started: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(
                anyhow::Error::new(error).context("cluster link runtime")
            ));
            return;
        }
    };
    runtime.block_on(async move {
        let link = match Link::connect(shared, events).await {
            Ok(link) => {
                let _ = started.send(Ok(()));
                link
            }
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        link.serve(commands).await;
    });
}

struct Subscriptions {
    chat: Subscriber,
    presence: Subscriber,
    heartbeats: Subscriber,
    leaves: Subscriber,
    kicks: Subscriber,
}

struct Link {
    shared: Arc<Shared>,
    events: Arc<dyn ClusterEvents>,
    client: Client,
    /// The chat payload's prefix: the origin node's name, length first.
    origin: Bytes,
}

impl Link {
    async fn connect(shared: Arc<Shared>, events: Arc<dyn ClusterEvents>) -> anyhow::Result<Link> {
        let config = &shared.config;
        let event_shared = Arc::clone(&shared);
        let url = config.nats_url.expose();
        let fail = |error: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "cannot use the NATS server {}: {}",
                config.nats_url,
                scrub(&error.to_string(), url)
            )
        };
        let (servers, credentials) = nats_target(url).map_err(|error| fail(&error))?;
        let options = match credentials {
            Some(NatsCredentials::UserPassword(user, password)) => {
                ConnectOptions::with_user_and_password(user, password)
            }
            Some(NatsCredentials::Token(token)) => ConnectOptions::with_token(token),
            None => ConnectOptions::new(),
        };
        let client = options
            .name(format!("servercore-{}", config.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(2))
            .request_timeout(Some(config.kick_timeout))
            .client_capacity(8192)
            .subscription_capacity(65_536)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).clamp(100, 1000))
            })
            .event_callback(move |event| {
                let shared = Arc::clone(&event_shared);
                async move { on_event(&shared, event) }
            })
            .connect(servers.as_str())
            .await
            .map_err(|error| fail(&error))?;
        let node = config.node.as_bytes();
        let mut origin = BytesMut::with_capacity(1 + node.len());
        origin.put_u8(node.len() as u8);
        origin.put_slice(node);
        Ok(Link {
            shared,
            events,
            client,
            origin: origin.freeze(),
        })
    }

    async fn subscribe(&self) -> anyhow::Result<Subscriptions> {
        let node = &self.shared.config.node;
        Ok(Subscriptions {
            chat: self.client.subscribe(CHAT_SUBJECT).await?,
            presence: self.client.subscribe("servercore.presence.*").await?,
            heartbeats: self
                .client
                .subscribe(format!("{HEARTBEAT_PREFIX}.*"))
                .await?,
            leaves: self.client.subscribe(format!("{LEAVE_PREFIX}.*")).await?,
            kicks: self
                .client
                .subscribe(format!("{KICK_PREFIX}.{node}"))
                .await?,
        })
    }

    async fn serve(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut subs = match self.subscribe().await {
            Ok(subs) => subs,
            Err(error) => {
                tracing::error!(%error, "cluster subscriptions failed; the node runs alone");
                // Keep answering claims so logins never wait on us.
                while let Some(command) = commands.recv().await {
                    match command {
                        Command::Claim { reply, .. } => reply(),
                        Command::Stop => break,
                        _ => {}
                    }
                }
                return;
            }
        };
        let config = self.shared.config.clone();
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Stop) => break,
                    Some(command) => self.command(command).await,
                },
                Some(message) = subs.chat.next() => self.chat_in(message),
                Some(message) = subs.presence.next() => self.presence_in(message),
                Some(message) = subs.heartbeats.next() => self.heartbeat_in(message),
                Some(message) = subs.leaves.next() => self.leave_in(message),
                Some(message) = subs.kicks.next() => self.kick_in(message),
                _ = heartbeat.tick() => self.beat().await,
            }
        }
        self.leave().await;
    }

    fn node(&self) -> &str {
        &self.shared.config.node
    }

    async fn command(&self, command: Command) {
        let counters = &self.shared.counters;
        match command {
            Command::Chat(packet) => {
                counters.pending_chats.fetch_sub(1, Ordering::Relaxed);
                if !self.shared.connected.load(Ordering::Relaxed) {
                    Shared::bump(&counters.chats_dropped);
                    return;
                }
                let mut payload = BytesMut::with_capacity(self.origin.len() + packet.len());
                payload.put_slice(&self.origin);
                payload.put_slice(&packet);
                match self.client.publish(CHAT_SUBJECT, payload.freeze()).await {
                    Ok(()) => Shared::bump(&counters.chats_out),
                    Err(_) => Shared::bump(&counters.chats_dropped),
                }
            }
            Command::Online(account) => {
                self.shared.presence.lock().local.insert(account.clone());
                self.publish_json(ONLINE_SUBJECT.to_owned(), &self.event(account))
                    .await;
            }
            Command::Offline(account) => {
                self.shared.presence.lock().local.remove(&account);
                self.publish_json(OFFLINE_SUBJECT.to_owned(), &self.event(account))
                    .await;
            }
            Command::Claim { account, reply } => self.claim(account, reply),
            Command::Stop => {}
        }
    }

    fn event(&self, account: String) -> PresenceEvent {
        PresenceEvent {
            node: self.node().to_owned(),
            account,
        }
    }

    async fn publish_json<T: Serialize>(&self, subject: String, value: &T) {
        if !self.shared.connected.load(Ordering::Relaxed) {
            return; // the next heartbeat after reconnecting says it all
        }
        let Ok(payload) = serde_json::to_vec(value) else {
            return;
        };
        if let Err(error) = self.client.publish(subject, payload.into()).await {
            tracing::debug!(%error, "cluster publish failed");
        }
    }

    /// Kicks `account` off every other node that holds it, then replies.
    fn claim(&self, account: String, reply: super::ClaimReply) {
        let holders = {
            let mut presence = self.shared.presence.lock();
            let holders = presence.holders(&account);
            // They will have let go once we reply; a stale heartbeat that
            // says otherwise is corrected by the next one.
            for node in &holders {
                presence.offline(node, &account);
            }
            holders
        };
        if holders.is_empty() {
            reply();
            return;
        }
        let client = self.client.clone();
        let shared = Arc::clone(&self.shared);
        let timeout = shared.config.kick_timeout;
        tokio::spawn(async move {
            for node in holders {
                Shared::bump(&shared.counters.kicks_sent);
                let subject = format!("{KICK_PREFIX}.{node}");
                let request = client.request(subject, Bytes::from(account.clone().into_bytes()));
                match tokio::time::timeout(timeout, request).await {
                    Ok(Ok(answer)) => tracing::debug!(
                        %account,
                        %node,
                        answer = %String::from_utf8_lossy(&answer.payload),
                        "handover done"
                    ),
                    Ok(Err(error)) => {
                        tracing::info!(%account, %node, %error, "handover not confirmed; logging in anyway")
                    }
                    Err(_) => tracing::info!(
                        %account,
                        %node,
                        "handover timed out; logging in anyway"
                    ),
                }
            }
            reply();
        });
    }

    fn chat_in(&self, message: Message) {
        let payload = message.payload;
        let Some((&len, rest)) = payload.split_first() else {
            return;
        };
        let len = len as usize;
        if rest.len() < len {
            return;
        }
        if &rest[..len] == self.node().as_bytes() {
            return; // ours: the local broadcast already delivered it
        }
        Shared::bump(&self.shared.counters.chats_in);
        self.events.remote_chat(payload.slice(1 + len..));
    }

    fn presence_in(&self, message: Message) {
        let Ok(event) = serde_json::from_slice::<PresenceEvent>(&message.payload) else {
            return;
        };
        if event.node == self.node() {
            return;
        }
        let mut presence = self.shared.presence.lock();
        if message.subject.as_str() == ONLINE_SUBJECT {
            presence.online(&event.node, event.account, Instant::now());
        } else if message.subject.as_str() == OFFLINE_SUBJECT {
            presence.offline(&event.node, &event.account);
        }
    }

    fn heartbeat_in(&self, message: Message) {
        let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.payload) else {
            return;
        };
        if beat.node == self.node() {
            return;
        }
        let count = beat.accounts.len();
        let new = self
            .shared
            .presence
            .lock()
            .heartbeat(&beat.node, beat.accounts, Instant::now());
        if new {
            tracing::info!(node = %beat.node, accounts = count, "node joined the cluster");
        }
    }

    fn leave_in(&self, message: Message) {
        let Ok(leave) = serde_json::from_slice::<Leave>(&message.payload) else {
            return;
        };
        if leave.node == self.node() {
            return;
        }
        if let Some(held) = self.shared.presence.lock().remove_node(&leave.node) {
            tracing::info!(node = %leave.node, accounts = held, "node left the cluster");
        }
    }

    fn kick_in(&self, message: Message) {
        let Some(reply) = message.reply else { return };
        let account = String::from_utf8_lossy(&message.payload).into_owned();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.events.kick(
            account,
            Box::new(move |kicked| {
                let _ = done_tx.send(kicked);
            }),
        );
        let client = self.client.clone();
        let shared = Arc::clone(&self.shared);
        let timeout = shared.config.kick_timeout;
        tokio::spawn(async move {
            let kicked = tokio::time::timeout(timeout, done_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            let answer: &'static [u8] = if kicked { b"kicked" } else { b"absent" };
            if client
                .publish(reply, Bytes::from_static(answer))
                .await
                .is_ok()
            {
                Shared::bump(&shared.counters.kicks_answered);
            }
        });
    }

    /// One heartbeat: tell the others we live and what we hold; forget the
    /// nodes that stopped telling us.
    async fn beat(&self) {
        let (accounts, dead) = {
            let mut presence = self.shared.presence.lock();
            let dead = presence.sweep(self.shared.config.node_timeout, Instant::now());
            (presence.local.iter().cloned().collect(), dead)
        };
        for (node, held) in dead {
            Shared::bump(&self.shared.counters.nodes_lost);
            tracing::warn!(%node, accounts = held, "node missed its heartbeats; its accounts are offline");
        }
        let beat = Heartbeat {
            node: self.node().to_owned(),
            accounts,
        };
        self.publish_json(format!("{HEARTBEAT_PREFIX}.{}", self.node()), &beat)
            .await;
    }

    /// A clean stop: tell the others, flush, close.
    async fn leave(&self) {
        let leave = Leave {
            node: self.node().to_owned(),
        };
        self.publish_json(format!("{LEAVE_PREFIX}.{}", self.node()), &leave)
            .await;
        let _ = tokio::time::timeout(STOP_FLUSH_TIMEOUT, self.client.flush()).await;
    }
}

/// The credentials a NATS URL carried.
#[derive(Debug, PartialEq, Eq)]
enum NatsCredentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// The server list without credentials, and the credentials it carried
/// (decoded). Every server of a list that carries some must carry the
/// same: the client has one set.
fn nats_target(url: &str) -> Result<(String, Option<NatsCredentials>), String> {
    let (servers, userinfos) = split_userinfo(url);
    let Some(first) = userinfos.first() else {
        return Ok((servers, None));
    };
    if userinfos.iter().any(|userinfo| userinfo != first) {
        return Err("the servers of one list must share their credentials".into());
    }
    let credentials = match first.split_once(':') {
        Some((user, password)) => {
            NatsCredentials::UserPassword(percent_decode(user), percent_decode(password))
        }
        None => NatsCredentials::Token(percent_decode(first)),
    };
    Ok((servers, Some(credentials)))
}

/// The connection's events: an outage and its end are logged once each.
fn on_event(shared: &Shared, event: Event) {
    match event {
        Event::Connected => {
            let was = shared.connected.swap(true, Ordering::Relaxed);
            if !was {
                if shared.counters.outages.load(Ordering::Relaxed) > 0 {
                    tracing::warn!(url = %shared.config.nats_url, "NATS reconnected; cross-node traffic resumes");
                } else {
                    tracing::info!(url = %shared.config.nats_url, node = %shared.config.node, "joined the cluster");
                }
            }
        }
        Event::Disconnected => {
            if shared.connected.swap(false, Ordering::Relaxed) {
                Shared::bump(&shared.counters.outages);
                tracing::warn!(
                    url = %shared.config.nats_url,
                    "NATS connection lost; serving local players, reconnecting"
                );
            }
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "NATS: this node is a slow consumer; messages were dropped"
            )
        }
        other => tracing::debug!(event = %other, "NATS event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        assert_eq!(
            nats_target("nats://127.0.0.1:4222").unwrap(),
            ("nats://127.0.0.1:4222".to_owned(), None)
        );
        assert_eq!(
            nats_target("nats://alice:p%40ss@n1:4222,nats://alice:p%40ss@n2:4222").unwrap(),
            (
                "nats://n1:4222,nats://n2:4222".to_owned(),
                Some(NatsCredentials::UserPassword("alice".into(), "p@ss".into()))
            )
        );
        assert_eq!(
            nats_target("t0ken@n1:4222").unwrap(),
            (
                "n1:4222".to_owned(),
                Some(NatsCredentials::Token("t0ken".into()))
            )
        );
        assert!(nats_target("nats://a:1@n1,nats://b:2@n2").is_err());
    }
}
