//! The link's thread: a current-thread tokio runtime running three NATS
//! clients (chat, control, liveness) and three tasks: the control loop
//! (the game's commands, presence, kicks), the chat intake, and the
//! liveness task (heartbeats and leaves).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Message};
use bytes::Bytes;
use futures_util::StreamExt as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::redact::{percent_decode, scrub, split_userinfo};

use crate::world::border::BORDER_PREFIX;

use super::{
    is_node_name, ClusterChat, ClusterEvents, Command, RemoteChat, Shared, BORDER_BACKLOG,
    CHAT_BACKLOG, CHAT_SUBJECT, HEARTBEAT_PREFIX, KICK_PREFIX, LEAVE_PREFIX, OFFLINE_SUBJECT,
    ONLINE_SUBJECT,
};

/// Longest wait for the last messages to go out when the node stops.
const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Remote chats checked before the chat task lets the others run.
const CHATS_PER_TURN: usize = 64;

/// The answer to a kick that let the account go.
const RELEASED: &[u8] = b"released";
/// The answer to a kick that could not.
const FAILED: &[u8] = b"failed";

#[derive(Serialize, Deserialize)]
struct Online {
    node: String,
    account: String,
    epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct Offline {
    node: String,
    account: String,
}

#[derive(Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    accounts: Vec<String>,
    /// Where players handed to the node connect (a shared world).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ws_url: String,
}

#[derive(Serialize, Deserialize)]
struct Leave {
    node: String,
}

#[derive(Serialize, Deserialize)]
struct KickRequest {
    account: String,
    epoch: u64,
}

/// Which of the three connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Control,
    Chat,
    Liveness,
    /// Border cells of a shared world (only for a node of one).
    World,
}

impl Role {
    fn suffix(self) -> &'static str {
        match self {
            Role::Control => "",
            Role::Chat => "-chat",
            Role::Liveness => "-liveness",
            Role::World => "-world",
        }
    }
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
        let connected = async {
            Ok::<_, anyhow::Error>((
                connect(&shared, Role::Control).await?,
                connect(&shared, Role::Chat).await?,
                connect(&shared, Role::Liveness).await?,
                match shared.config.world_nodes.is_empty() {
                    true => None,
                    false => Some(connect(&shared, Role::World).await?),
                },
            ))
        };
        let (control, chat, liveness, world) = match connected.await {
            Ok(clients) => {
                let _ = started.send(Ok(()));
                clients
            }
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        let (stop_tx, stop) = watch::channel(false);
        let liveness_task = tokio::spawn(keep_alive(
            Arc::clone(&shared),
            liveness.clone(),
            stop.clone(),
        ));
        let border_task = world.clone().map(|world| {
            tokio::spawn(take_border(
                Arc::clone(&shared),
                Arc::clone(&events),
                world,
                stop.clone(),
            ))
        });
        let chat_task = tokio::spawn(take_chats(
            Arc::clone(&shared),
            Arc::clone(&events),
            chat.clone(),
            stop,
        ));
        let link = Link {
            shared,
            events,
            control,
            chat,
            world,
        };
        link.serve(commands).await;
        let _ = stop_tx.send(true);
        let _ = liveness_task.await;
        let _ = chat_task.await;
        if let Some(task) = border_task {
            let _ = task.await;
        }
        for client in [&link.control, &link.chat, &liveness]
            .into_iter()
            .chain(link.world.as_ref())
        {
            let _ = tokio::time::timeout(STOP_FLUSH_TIMEOUT, client.flush()).await;
        }
    });
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

/// One client of the node.
async fn connect(shared: &Arc<Shared>, role: Role) -> anyhow::Result<Client> {
    let config = &shared.config;
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
    let capacity = match role {
        Role::Chat => CHAT_BACKLOG,
        Role::World => BORDER_BACKLOG,
        Role::Control | Role::Liveness => 65_536,
    };
    let event_shared = Arc::clone(shared);
    options
        .name(format!("servercore-{}{}", config.node, role.suffix()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .request_timeout(Some(config.kick_timeout))
        .client_capacity(8192)
        .subscription_capacity(capacity)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).clamp(100, 1000))
        })
        .event_callback(move |event| {
            let shared = Arc::clone(&event_shared);
            async move { on_event(&shared, role, event) }
        })
        .connect(servers.as_str())
        .await
        .map_err(|error| fail(&error))
}

/// True while `client` is connected.
fn is_up(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

async fn publish_json<T: Serialize>(client: &Client, subject: String, value: &T) {
    if !is_up(client) {
        return; // the next heartbeat after reconnecting says it all
    }
    let Ok(payload) = serde_json::to_vec(value) else {
        return;
    };
    if let Err(error) = client.publish(subject, payload.into()).await {
        tracing::debug!(%error, "cluster publish failed");
    }
}

/// The control loop's state.
struct Link {
    shared: Arc<Shared>,
    events: Arc<dyn ClusterEvents>,
    control: Client,
    chat: Client,
    world: Option<Client>,
}

impl Link {
    fn node(&self) -> &str {
        &self.shared.config.node
    }

    async fn serve(&self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let node = self.node().to_owned();
        let subscribed = async {
            Ok::<_, async_nats::SubscribeError>((
                self.control.subscribe("servercore.presence.*").await?,
                self.control
                    .subscribe(format!("{KICK_PREFIX}.{node}"))
                    .await?,
            ))
        };
        let (mut presence, mut kicks) = match subscribed.await {
            Ok(subscriptions) => subscriptions,
            Err(error) => {
                tracing::error!(%error, "cluster subscriptions failed; the node runs alone");
                // Keep answering kicks so logins never wait on us.
                while let Some(command) = commands.recv().await {
                    match command {
                        Command::Kick { reply, .. } => reply(false),
                        Command::Stop => break,
                        _ => {}
                    }
                }
                return;
            }
        };
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Stop) => break,
                    Some(command) => self.command(command).await,
                },
                Some(message) = presence.next() => self.presence_in(message),
                Some(message) = kicks.next() => self.kick_in(message),
            }
        }
    }

    async fn command(&self, command: Command) {
        let counters = &self.shared.counters;
        match command {
            Command::Chat(payload) => {
                counters.pending_chats.fetch_sub(1, Ordering::Relaxed);
                if !self.shared.chat_connected.load(Ordering::Relaxed) {
                    Shared::bump(&counters.chats_dropped);
                    return;
                }
                match self.chat.publish(CHAT_SUBJECT, payload).await {
                    Ok(()) => Shared::bump(&counters.chats_out),
                    Err(_) => Shared::bump(&counters.chats_dropped),
                }
            }
            Command::Online { account, epoch } => {
                self.shared.presence.lock().local.insert(account.clone());
                let online = Online {
                    node: self.node().to_owned(),
                    account,
                    epoch,
                };
                publish_json(&self.control, ONLINE_SUBJECT.to_owned(), &online).await;
            }
            Command::Offline(account) => {
                self.shared.presence.lock().local.remove(&account);
                let offline = Offline {
                    node: self.node().to_owned(),
                    account,
                };
                publish_json(&self.control, OFFLINE_SUBJECT.to_owned(), &offline).await;
            }
            Command::Kick {
                node,
                account,
                epoch,
                reply,
            } => self.kick_out(node, account, epoch, reply),
            Command::Border { node, payload } => {
                counters.pending_border.fetch_sub(1, Ordering::Relaxed);
                if let Some(world) = &self.world {
                    if let Err(error) = world
                        .publish(format!("{BORDER_PREFIX}.{node}"), payload)
                        .await
                    {
                        tracing::debug!(%error, "border publish failed");
                    }
                }
            }
            Command::Stop => {}
        }
    }

    /// Asks `node` to let `account` go; replies once it answers or the
    /// kick timeout passes.
    fn kick_out(&self, node: String, account: String, epoch: u64, reply: super::KickReply) {
        let Ok(payload) = serde_json::to_vec(&KickRequest {
            account: account.clone(),
            epoch,
        }) else {
            return reply(false);
        };
        let client = self.control.clone();
        let shared = Arc::clone(&self.shared);
        Shared::bump(&shared.counters.kicks_sent);
        let timeout = shared.config.kick_timeout;
        tokio::spawn(async move {
            let subject = format!("{KICK_PREFIX}.{node}");
            let request = client.request(subject, Bytes::from(payload));
            let released = match tokio::time::timeout(timeout, request).await {
                Ok(Ok(answer)) => answer.payload.as_ref() == RELEASED,
                Ok(Err(error)) => {
                    tracing::info!(%account, %node, %error, "handover not confirmed");
                    false
                }
                Err(_) => {
                    tracing::info!(%account, %node, "handover timed out");
                    false
                }
            };
            if released {
                Shared::bump(&shared.counters.kicks_released);
            }
            reply(released);
        });
    }

    fn presence_in(&self, message: Message) {
        if message.subject.as_str() == ONLINE_SUBJECT {
            let Ok(online) = serde_json::from_slice::<Online>(&message.payload) else {
                return;
            };
            if online.node == self.node() || !is_node_name(&online.node) {
                return;
            }
            self.shared.presence.lock().online(
                &online.node,
                online.account.clone(),
                Instant::now(),
            );
            self.events
                .remote_online(&online.node, &online.account, online.epoch);
        } else if message.subject.as_str() == OFFLINE_SUBJECT {
            let Ok(offline) = serde_json::from_slice::<Offline>(&message.payload) else {
                return;
            };
            if offline.node != self.node() {
                self.shared
                    .presence
                    .lock()
                    .offline(&offline.node, &offline.account);
            }
        }
    }

    fn kick_in(&self, message: Message) {
        let Some(reply) = message.reply else { return };
        let Ok(request) = serde_json::from_slice::<KickRequest>(&message.payload) else {
            return;
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.events.kick(
            request.account,
            request.epoch,
            Box::new(move |released| {
                let _ = done_tx.send(released);
            }),
        );
        let client = self.control.clone();
        let shared = Arc::clone(&self.shared);
        let timeout = shared.config.kick_timeout;
        tokio::spawn(async move {
            let released = tokio::time::timeout(timeout, done_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            let answer = if released { RELEASED } else { FAILED };
            if client
                .publish(reply, Bytes::from_static(answer))
                .await
                .is_ok()
            {
                Shared::bump(&shared.counters.kicks_answered);
            }
        });
    }
}

/// Why a chat from the network was dropped.
#[derive(Debug, Clone, Copy)]
enum Refused {
    TooLong,
    Malformed,
}

/// Logs dropped remote chats at most once a second, with counts.
#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
    too_long: u64,
    malformed: u64,
}

impl DropLog {
    fn note(&mut self, refused: Refused, origin: Option<&str>) {
        match refused {
            Refused::TooLong => self.too_long += 1,
            Refused::Malformed => self.malformed += 1,
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(now);
        tracing::warn!(
            last = ?refused,
            origin = origin.map(|origin| origin.escape_debug().to_string()),
            too_long = std::mem::take(&mut self.too_long),
            malformed = std::mem::take(&mut self.malformed),
            "dropping chats from the cluster that are not valid chats"
        );
    }
}

/// The chat intake: checks each chat from the network, hands the good
/// ones to the game, counts and drops the rest.
async fn take_chats(
    shared: Arc<Shared>,
    events: Arc<dyn ClusterEvents>,
    client: Client,
    mut stop: watch::Receiver<bool>,
) {
    let mut chats = match client.subscribe(CHAT_SUBJECT).await {
        Ok(chats) => chats,
        Err(error) => {
            tracing::error!(%error, "cluster chat subscription failed; no chat from other nodes");
            return;
        }
    };
    let mut drops = DropLog::default();
    let mut this_turn = 0;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return,
            message = chats.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        match check_chat(&shared, &message.payload) {
            Ok(Some(chat)) => {
                Shared::bump(&shared.counters.chats_in);
                events.remote_chat(chat);
            }
            Ok(None) => {} // ours: the local broadcast delivered it
            Err((refused, origin)) => {
                let counter = match refused {
                    Refused::TooLong => &shared.counters.chats_in_too_long,
                    Refused::Malformed => &shared.counters.chats_in_malformed,
                };
                Shared::bump(counter);
                drops.note(refused, origin.as_deref());
            }
        }
        this_turn += 1;
        if this_turn == CHATS_PER_TURN {
            this_turn = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// A chat from the network, checked: `None` if it is this node's own.
fn check_chat(
    shared: &Shared,
    payload: &[u8],
) -> Result<Option<RemoteChat>, (Refused, Option<String>)> {
    let config = &shared.config;
    if payload.len() > config.max_chat_payload() {
        return Err((Refused::TooLong, None));
    }
    let chat = ClusterChat::decode(payload).map_err(|_| (Refused::Malformed, None))?;
    if !is_node_name(&chat.origin) || chat.player_id == 0 {
        return Err((Refused::Malformed, Some(chat.origin)));
    }
    if chat.origin == config.node {
        return Ok(None);
    }
    if chat.text.len() > config.max_chat_len {
        return Err((Refused::TooLong, Some(chat.origin)));
    }
    Ok(Some(RemoteChat {
        origin: chat.origin,
        player_id: chat.player_id,
        text: chat.text,
        client_time_us: chat.client_time_us,
    }))
}

/// The border intake: every message on this node's border subject goes to
/// the world, which checks it (at most [`BORDER_BACKLOG`] wait here; past
/// that the client drops them).
async fn take_border(
    shared: Arc<Shared>,
    events: Arc<dyn ClusterEvents>,
    client: Client,
    mut stop: watch::Receiver<bool>,
) {
    let subject = format!("{BORDER_PREFIX}.{}", shared.config.node);
    let mut messages = match client.subscribe(subject).await {
        Ok(messages) => messages,
        Err(error) => {
            tracing::error!(%error, "border subscription failed; no border cells from other nodes");
            return;
        }
    };
    let mut this_turn = 0;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return,
            message = messages.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        events.border(message.payload);
        this_turn += 1;
        if this_turn == CHATS_PER_TURN {
            this_turn = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// The liveness task: heartbeats out, the others' heartbeats and leaves
/// in, the dead swept; a clean stop says the node leaves.
async fn keep_alive(shared: Arc<Shared>, client: Client, mut stop: watch::Receiver<bool>) {
    let node = shared.config.node.clone();
    let subscribed = async {
        Ok::<_, async_nats::SubscribeError>((
            client.subscribe(format!("{HEARTBEAT_PREFIX}.*")).await?,
            client.subscribe(format!("{LEAVE_PREFIX}.*")).await?,
        ))
    };
    let (mut heartbeats, mut leaves) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(error) => {
            tracing::error!(%error, "cluster liveness subscriptions failed");
            return;
        }
    };
    let mut ticker = tokio::time::interval(shared.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {
                // A tick this late means this node stood still (paused, or
                // starved): the others' heartbeats are waiting unread, so
                // none of them is judged now.
                let now = Instant::now();
                let stalled = now.duration_since(last_tick) > shared.config.node_timeout;
                last_tick = now;
                if stalled {
                    tracing::warn!(
                        "this node stood still longer than the node timeout; reading the \
                         others' heartbeats before judging them"
                    );
                }
                beat(&shared, &client, !stalled).await;
            }
            Some(message) = heartbeats.next() => heartbeat_in(&shared, &message),
            Some(message) = leaves.next() => leave_in(&shared, &message),
        }
    }
    let leave = Leave { node: node.clone() };
    publish_json(&client, format!("{LEAVE_PREFIX}.{node}"), &leave).await;
}

/// One heartbeat: tell the others we live and what we hold; forget the
/// nodes that stopped telling us (if `sweep`).
async fn beat(shared: &Shared, client: &Client, sweep: bool) {
    let (accounts, dead) = {
        let mut presence = shared.presence.lock();
        let dead = if sweep {
            presence.sweep(shared.config.node_timeout, Instant::now())
        } else {
            Vec::new()
        };
        (presence.local.iter().cloned().collect(), dead)
    };
    for (node, held) in dead {
        Shared::bump(&shared.counters.nodes_lost);
        tracing::warn!(%node, accounts = held, "node missed its heartbeats; its accounts are offline");
    }
    let node = &shared.config.node;
    let (addr, ws_url) = shared.advertised.lock().clone();
    let beat = Heartbeat {
        node: node.clone(),
        accounts,
        addr,
        ws_url,
    };
    publish_json(client, format!("{HEARTBEAT_PREFIX}.{node}"), &beat).await;
}

fn heartbeat_in(shared: &Shared, message: &Message) {
    let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.payload) else {
        return;
    };
    if beat.node == shared.config.node || !is_node_name(&beat.node) {
        return;
    }
    let count = beat.accounts.len();
    // Bounded like any input: an address is short.
    let addrs = (beat.addr.len() <= 256 && beat.ws_url.len() <= 512)
        .then(|| (beat.addr.clone(), beat.ws_url.clone()));
    let new = {
        let mut presence = shared.presence.lock();
        let new = presence.heartbeat(&beat.node, beat.accounts, Instant::now());
        if let Some(addrs) = addrs.filter(|(addr, _)| !addr.is_empty()) {
            presence.set_addrs(&beat.node, addrs);
        }
        new
    };
    if new {
        tracing::info!(node = %beat.node, accounts = count, "node joined the cluster");
    }
}

fn leave_in(shared: &Shared, message: &Message) {
    let Ok(leave) = serde_json::from_slice::<Leave>(&message.payload) else {
        return;
    };
    if leave.node == shared.config.node {
        return;
    }
    if let Some(held) = shared.presence.lock().remove_node(&leave.node) {
        tracing::info!(node = %leave.node, accounts = held, "node left the cluster");
    }
}

/// A connection's events: an outage of the control connection and its
/// end are logged once each; the others' at debug level.
fn on_event(shared: &Shared, role: Role, event: Event) {
    let url = &shared.config.nats_url;
    match (role, event) {
        (Role::Control, Event::Connected) => {
            let was = shared.connected.swap(true, Ordering::Relaxed);
            if !was {
                if shared.counters.outages.load(Ordering::Relaxed) > 0 {
                    tracing::warn!(%url, "NATS reconnected; cross-node traffic resumes");
                } else {
                    tracing::info!(%url, node = %shared.config.node, "joined the cluster");
                }
            }
        }
        (Role::Control, Event::Disconnected) => {
            if shared.connected.swap(false, Ordering::Relaxed) {
                Shared::bump(&shared.counters.outages);
                tracing::warn!(%url, "NATS connection lost; serving local players, reconnecting");
            }
        }
        (Role::Chat, Event::Connected) => shared.chat_connected.store(true, Ordering::Relaxed),
        (Role::Chat, Event::Disconnected) => shared.chat_connected.store(false, Ordering::Relaxed),
        (Role::World, Event::Connected) => shared.world_connected.store(true, Ordering::Relaxed),
        (Role::World, Event::Disconnected) => {
            shared.world_connected.store(false, Ordering::Relaxed)
        }
        (Role::Chat, Event::SlowConsumer(_)) => tracing::warn!(
            "NATS: chats from other nodes arrive faster than they are checked; some were dropped"
        ),
        (_, Event::SlowConsumer(sid)) => tracing::warn!(
            sid,
            ?role,
            "NATS: this node is a slow consumer; messages were dropped"
        ),
        (role, other) => tracing::debug!(?role, event = %other, "NATS event"),
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

    fn shared() -> Shared {
        Shared {
            config: super::super::ClusterConfig::new("nats://127.0.0.1:1", "here"),
            counters: Default::default(),
            connected: Default::default(),
            chat_connected: Default::default(),
            world_connected: Default::default(),
            advertised: Default::default(),
            presence: Default::default(),
        }
    }

    fn chat(origin: &str, player_id: u64, text: &str) -> Vec<u8> {
        ClusterChat {
            origin: origin.into(),
            player_id,
            text: text.into(),
            client_time_us: 5,
        }
        .encode_to_vec()
    }

    #[test]
    fn remote_chats_are_checked() {
        let shared = shared();
        let good = check_chat(&shared, &chat("there", 7, "hi"))
            .unwrap()
            .unwrap();
        assert_eq!(
            good,
            RemoteChat {
                origin: "there".into(),
                player_id: 7,
                text: "hi".into(),
                client_time_us: 5
            }
        );
        assert_eq!(check_chat(&shared, &chat("here", 7, "hi")).unwrap(), None);
        let longest = "x".repeat(shared.config.max_chat_len);
        assert!(check_chat(&shared, &chat("there", 7, &longest)).is_ok());
        let refused = |payload: &[u8]| check_chat(&shared, payload).unwrap_err().0;
        let too_long = "x".repeat(shared.config.max_chat_len + 1);
        assert!(matches!(
            refused(&chat("there", 7, &too_long)),
            Refused::TooLong
        ));
        assert!(matches!(refused(&vec![b'x'; 4096]), Refused::TooLong));
        assert!(matches!(refused(b"\xff\xff\xff"), Refused::Malformed));
        assert!(matches!(
            refused(&chat("bad node", 7, "hi")),
            Refused::Malformed
        ));
        assert!(matches!(
            refused(&chat("there", 0, "hi")),
            Refused::Malformed
        ));
        // Text that is not UTF-8 does not decode.
        let mut bad_text = chat("there", 7, "ab");
        let len = bad_text.len();
        bad_text[len - 4] = 0xff;
        assert!(
            matches!(refused(&bad_text), Refused::Malformed),
            "{bad_text:?}"
        );
    }
}
