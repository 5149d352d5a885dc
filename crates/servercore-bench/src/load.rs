//! The load generators, run on a tokio multi-thread runtime in the harness
//! process (the server under test is another process, so their CPU is kept
//! apart):
//! - [`echo`]: C clients, each in a loop: write 128 bytes, read 128 back;
//! - [`broadcast`]: N game clients log in, enter, and each sends one
//!   `C_CHAT` per interval (staggered over the interval), counting every
//!   `S_CHAT` and timing their own chats' round trip;
//! - [`connect_many`]: opens connections and holds them (the idle scenario).
//!
//! Connections take their source address round-robin from several
//! `127.0.0.x` addresses ([`Sources`]) so ephemeral ports never run out.
//! Every loop ends by itself: clients stop when the window closes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::perf::{PerfCounts, PerfStat};
use super::procfs;
use super::progress::Progress;
use super::proto::{self, CChat, CEnterGame, CLogin, SEnterGame, SLogin};
use super::transport::{ClientStream, Connector};

/// Bytes of one echo request.
pub const ECHO_SIZE: usize = 128;
/// Characters of one chat line.
pub const CHAT_SIZE: usize = 64;
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 256;
/// Largest latency the histograms hold (60 s, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;

/// An empty latency histogram (µs, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Microseconds since the first call in this process, never 0: the clock
/// of `client_time_us` (sender and receiver are both in this process).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Client source addresses, used round-robin.
#[derive(Debug, Clone)]
pub struct Sources {
    addrs: Vec<IpAddr>,
}

impl Sources {
    /// `127.0.0.1` .. `127.0.0.count`, keeping those this machine lets us
    /// bind (at least `127.0.0.1`).
    pub fn loopback(count: u8) -> Sources {
        let addrs: Vec<IpAddr> = (1..=count.max(1))
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .filter(|ip| std::net::TcpListener::bind((*ip, 0)).is_ok())
            .collect();
        if addrs.is_empty() {
            return Sources {
                addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            };
        }
        Sources { addrs }
    }

    /// How many addresses are in use.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// The address of connection number `index`.
    pub fn pick(&self, index: usize) -> IpAddr {
        self.addrs[index % self.addrs.len()]
    }
}

/// Connects to `server` from `source` (any port), with `TCP_NODELAY`.
pub async fn connect(server: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if source.is_ipv4() == server.is_ipv4() {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What [`connect_many`] managed.
pub struct Connected {
    /// The open connections.
    pub streams: Vec<TcpStream>,
    /// Connections that failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Opens `count` connections, [`CONNECT_CONCURRENCY`] at a time, showing
/// each attempt on `progress`.
pub async fn connect_many(
    server: SocketAddr,
    count: usize,
    sources: &Sources,
    progress: &Progress,
) -> Connected {
    progress.step("connecting", count as u64);
    let mut connected = Connected {
        streams: Vec::with_capacity(count),
        failed: 0,
        first_error: None,
    };
    let mut next = 0;
    while next < count {
        let end = (next + CONNECT_CONCURRENCY).min(count);
        let mut batch = JoinSet::new();
        for index in next..end {
            let source = sources.pick(index);
            batch.spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), connect(server, source))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            });
        }
        while let Some(result) = batch.join_next().await {
            progress.inc(1);
            match result {
                Ok(Ok(stream)) => connected.streams.push(stream),
                Ok(Err(error)) => {
                    connected.failed += 1;
                    connected
                        .first_error
                        .get_or_insert_with(|| error.to_string());
                }
                Err(error) => {
                    connected.failed += 1;
                    connected
                        .first_error
                        .get_or_insert_with(|| error.to_string());
                }
            }
        }
        next = end;
    }
    connected
}

/// Opens `count` connections or fails with the first error.
async fn connect_all(
    server: SocketAddr,
    count: usize,
    sources: &Sources,
    progress: &Progress,
) -> anyhow::Result<Vec<TcpStream>> {
    let connected = connect_many(server, count, sources, progress).await;
    if connected.failed > 0 {
        bail!(
            "{} of {count} connections failed; first error: {}",
            connected.failed,
            connected.first_error.unwrap_or_default()
        );
    }
    Ok(connected.streams)
}

/// Opens `count` connections and runs the transport's handshake on each,
/// or fails with the first error.
async fn connect_all_over(
    server: SocketAddr,
    count: usize,
    sources: &Sources,
    progress: &Progress,
    connector: &Connector,
) -> anyhow::Result<Vec<ClientStream>> {
    if let Connector::Quic(config) = connector {
        return connect_all_quic(server, count, sources, progress, config).await;
    }
    let streams = connect_all(server, count, sources, progress).await?;
    if let Connector::Tcp = connector {
        return Ok(streams.into_iter().map(ClientStream::Tcp).collect());
    }
    progress.step("handshakes", count as u64);
    let mut upgraded = Vec::with_capacity(count);
    let mut pending = streams.into_iter();
    loop {
        let mut batch = JoinSet::new();
        for stream in pending.by_ref().take(CONNECT_CONCURRENCY) {
            let connector = connector.clone();
            batch.spawn(async move {
                tokio::time::timeout(Duration::from_secs(20), connector.upgrade(stream, server))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            });
        }
        if batch.is_empty() {
            break;
        }
        while let Some(result) = batch.join_next().await {
            progress.inc(1);
            upgraded.push(
                result
                    .context("handshake task")?
                    .context("transport handshake")?,
            );
        }
    }
    Ok(upgraded)
}

/// Opens `count` QUIC connections (handshake and stream each), or fails
/// with the first error.
async fn connect_all_quic(
    server: SocketAddr,
    count: usize,
    sources: &Sources,
    progress: &Progress,
    config: &quinn::ClientConfig,
) -> anyhow::Result<Vec<ClientStream>> {
    progress.step("connecting (quic)", count as u64);
    let mut streams = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let end = (next + CONNECT_CONCURRENCY).min(count);
        let mut batch = JoinSet::new();
        for index in next..end {
            let (source, config) = (sources.pick(index), config.clone());
            batch.spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    Connector::connect_quic(&config, server, source),
                )
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            });
        }
        while let Some(result) = batch.join_next().await {
            progress.inc(1);
            streams.push(result.context("connect task")?.context("QUIC connect")?);
        }
        next = end;
    }
    Ok(streams)
}

/// CPU time of the server and of this process over a measured window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Wall-clock length.
    pub elapsed: Duration,
    /// CPU the server process used.
    pub server_cpu: Duration,
    /// Of `server_cpu`, the part in user space (the rest is the kernel:
    /// system calls and the TCP work charged to them).
    pub server_user_cpu: Duration,
    /// CPU this process (the load generator) used.
    pub load_cpu: Duration,
    /// CPU every other user-space process used: a busy machine makes the
    /// numbers unreliable.
    pub other_cpu: Duration,
    /// CPU the machine used beyond all processes: kernel work charged to
    /// no process (softirq processing of loopback TCP in kernel threads or
    /// on idle cores, for both sides).
    pub kernel_cpu: Duration,
    /// TCP segments the machine sent (server and load generator alike).
    pub tcp_segments: u64,
    /// Gathered socket writes of the server, where it counts them.
    pub server_writes: Option<u64>,
    /// The server's system calls and context switches, with `--perf`.
    pub perf: Option<Result<PerfCounts, String>>,
}

/// The readings at the start of a measured window; [`WindowStart::close`]
/// turns them into a [`Window`].
pub struct WindowStart {
    at: Instant,
    server_cpu: (Duration, Duration),
    load_cpu: Duration,
    machine_cpu: Duration,
    others: HashMap<u32, u64>,
    tcp_segments: u64,
    perf: Option<std::io::Result<PerfStat>>,
}

impl WindowStart {
    /// Reads the server's and the machine's counters now.
    pub fn now(server_pid: u32, timing: &Timing) -> anyhow::Result<WindowStart> {
        let perf = timing
            .perf
            .then(|| PerfStat::start(server_pid, timing.duration));
        Ok(WindowStart {
            perf,
            at: Instant::now(),
            server_cpu: procfs::user_system_time(server_pid)?,
            load_cpu: procfs::cpu_time(std::process::id())?,
            machine_cpu: procfs::machine_cpu_time()?,
            others: procfs::user_process_ticks(&[server_pid, std::process::id()]),
            tcp_segments: procfs::tcp_segments_sent()?,
        })
    }

    /// Reads them again: the window from then to now.
    pub fn close(self, server_pid: u32) -> anyhow::Result<Window> {
        let elapsed = self.at.elapsed();
        let (user, system) = procfs::user_system_time(server_pid)?;
        let server_user_cpu = user.saturating_sub(self.server_cpu.0);
        let server_cpu = server_user_cpu + system.saturating_sub(self.server_cpu.1);
        let load_cpu = procfs::cpu_time(std::process::id())?.saturating_sub(self.load_cpu);
        let busy = procfs::machine_cpu_time()?.saturating_sub(self.machine_cpu);
        let others = procfs::user_process_ticks(&[server_pid, std::process::id()]);
        let other_cpu = procfs::ticks_since(&self.others, &others);
        Ok(Window {
            elapsed,
            server_cpu,
            server_user_cpu,
            load_cpu,
            other_cpu,
            kernel_cpu: busy.saturating_sub(server_cpu + load_cpu + other_cpu),
            tcp_segments: procfs::tcp_segments_sent()?.saturating_sub(self.tcp_segments),
            server_writes: None,
            perf: self.perf.map(|perf| {
                perf.map_err(|error| format!("cannot run perf: {error}"))
                    .and_then(PerfStat::finish)
            }),
        })
    }
}

/// Sleeps `duration`, moving the progress bar in milliseconds.
async fn sleep_with_progress(duration: Duration, progress: &Progress, message: &str) {
    let total = duration.as_millis() as u64;
    progress.step(message, total);
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        progress.set_position(elapsed.as_millis() as u64);
        tokio::time::sleep((duration - elapsed).min(Duration::from_millis(100))).await;
    }
    progress.set_position(total);
}

/// How long a measurement warms up, how long it measures, and what it
/// counts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Load runs this long before the window opens.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Count the server's system calls with `perf stat` over the window.
    pub perf: bool,
}

/// What one echo measurement saw.
pub struct EchoOutcome {
    /// Round trips completed inside the window.
    pub requests: u64,
    /// The window.
    pub window: Window,
    /// Round-trip time of the window's requests (µs).
    pub latency: Histogram<u64>,
    /// Clients that failed, and the first error.
    pub errors: Vec<String>,
}

/// Runs `clients` echo clients against `server` (process `server_pid`).
#[allow(clippy::too_many_arguments)]
pub async fn echo(
    server: SocketAddr,
    server_pid: u32,
    clients: usize,
    timing: Timing,
    sources: &Sources,
    progress: &Progress,
    connector: &Connector,
) -> anyhow::Result<EchoOutcome> {
    let streams = connect_all_over(server, clients, sources, progress, connector).await?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for stream in streams {
        tasks.spawn(echo_client(stream, measuring.clone(), stop.clone()));
    }
    sleep_with_progress(timing.warmup, progress, "warming up").await;
    let start = WindowStart::now(server_pid, &timing)?;
    measuring.store(true, Ordering::Release);
    sleep_with_progress(timing.duration, progress, "measuring").await;
    measuring.store(false, Ordering::Release);
    let window = start.close(server_pid)?;
    stop.store(true, Ordering::Release);
    let mut latency = latency_histogram();
    let mut errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (histogram, error) = result.context("echo client task")?;
        latency.add(&histogram).context("merging histograms")?;
        errors.extend(error);
    }
    Ok(EchoOutcome {
        requests: latency.len(),
        window,
        latency,
        errors,
    })
}

async fn echo_client(
    mut stream: ClientStream,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> (Histogram<u64>, Option<String>) {
    let request = [0x5au8; ECHO_SIZE];
    let mut reply = [0u8; ECHO_SIZE];
    let mut histogram = latency_histogram();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let result = async {
            stream.write_all(&request).await?;
            stream.flush().await?;
            stream.read_exact(&mut reply).await?;
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), result).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return (histogram, Some(error.to_string())),
            Err(_) => return (histogram, Some("no echo within 10 s".into())),
        }
        if measuring.load(Ordering::Relaxed) {
            histogram.saturating_record(sent.elapsed().as_micros() as u64);
        }
    }
    (histogram, None)
}

/// What one broadcast measurement saw.
pub struct BroadcastOutcome {
    /// Sessions in the room.
    pub sessions: usize,
    /// How often each session chats.
    pub interval: Duration,
    /// `S_CHAT` packets received inside the window, over all sessions.
    pub deliveries: u64,
    /// `C_CHAT` packets sent inside the window.
    pub chats_sent: u64,
    /// The window.
    pub window: Window,
    /// Time from sending a chat to receiving it back, over the window (µs).
    pub latency: Histogram<u64>,
    /// Sessions the server closed or that failed.
    pub disconnects: u64,
    /// The first few errors.
    pub errors: Vec<String>,
    /// Time to connect, log in and enter every session.
    pub setup: Duration,
}

#[derive(Default)]
struct ChatCounters {
    measuring: AtomicBool,
    deliveries: AtomicU64,
    chats_sent: AtomicU64,
    disconnects: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl ChatCounters {
    fn fail(&self, error: String) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock();
        if errors.len() < 5 {
            errors.push(error);
        }
    }
}

/// How the broadcast window looks at the server process.
pub struct ServerProbe<'a> {
    /// Its process id (CPU time from `/proc`).
    pub pid: u32,
    /// Its gathered socket writes so far, where it counts them.
    pub writes: &'a mut dyn FnMut() -> Option<u64>,
}

/// Runs `sessions` chatting game clients against `server`.
#[allow(clippy::too_many_arguments)]
pub async fn broadcast(
    server: SocketAddr,
    probe: ServerProbe<'_>,
    sessions: usize,
    interval: Duration,
    timing: Timing,
    sources: &Sources,
    progress: &Progress,
    connector: &Connector,
) -> anyhow::Result<BroadcastOutcome> {
    let ServerProbe {
        pid: server_pid,
        writes: server_writes,
    } = probe;
    let setup_started = Instant::now();
    let streams = connect_all_over(server, sessions, sources, progress, connector).await?;
    progress.step("logging in", sessions as u64);
    let mut entering = JoinSet::new();
    for stream in streams {
        entering.spawn(tokio::time::timeout(Duration::from_secs(20), enter(stream)));
    }
    let mut players = Vec::with_capacity(sessions);
    while let Some(result) = entering.join_next().await {
        let entered = result
            .context("login task")?
            .map_err(|_| anyhow::anyhow!("login and enter took over 20 s"))??;
        players.push(entered);
        progress.inc(1);
    }
    let setup = setup_started.elapsed();

    let counters = Arc::new(ChatCounters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let first_tick = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut readers = JoinSet::new();
    let mut writers = JoinSet::new();
    let count = players.len() as u32;
    for (index, (stream, player_id, leftover)) in players.into_iter().enumerate() {
        let (read, write) = tokio::io::split(stream);
        readers.spawn(chat_reader(
            read,
            player_id,
            leftover,
            counters.clone(),
            stop_rx.clone(),
        ));
        let offset = interval * index as u32 / count.max(1);
        writers.spawn(chat_writer(
            write,
            first_tick + offset,
            interval,
            counters.clone(),
            stop_rx.clone(),
        ));
    }
    sleep_with_progress(timing.warmup, progress, "warming up").await;
    let writes_before = server_writes();
    let start = WindowStart::now(server_pid, &timing)?;
    counters.measuring.store(true, Ordering::Release);
    sleep_with_progress(timing.duration, progress, "measuring").await;
    counters.measuring.store(false, Ordering::Release);
    let mut window = start.close(server_pid)?;
    window.server_writes = server_writes()
        .zip(writes_before)
        .map(|(after, before)| after.saturating_sub(before));
    let _ = stop_tx.send(true);

    let mut write_halves = Vec::with_capacity(sessions);
    while let Some(result) = writers.join_next().await {
        write_halves.extend(result.context("chat writer task")?);
    }
    let mut latency = latency_histogram();
    while let Some(result) = readers.join_next().await {
        latency
            .add(&result.context("chat reader task")?)
            .context("merging histograms")?;
    }
    drop(write_halves);
    let errors = counters.errors.lock().clone();
    Ok(BroadcastOutcome {
        sessions,
        interval,
        deliveries: counters.deliveries.load(Ordering::Relaxed),
        chats_sent: counters.chats_sent.load(Ordering::Relaxed),
        window,
        latency,
        disconnects: counters.disconnects.load(Ordering::Relaxed),
        errors,
        setup,
    })
}

/// Logs in as a guest and enters with the first player: returns the stream,
/// the player id and whatever was read past `S_ENTER_GAME`.
async fn enter(mut stream: ClientStream) -> anyhow::Result<(ClientStream, u64, BytesMut)> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    stream
        .write_all(&proto::packet(proto::C_LOGIN, &CLogin::default()))
        .await?;
    stream.flush().await?;
    let login = SLogin::decode(read_packet(&mut stream, &mut buf, proto::S_LOGIN).await?)?;
    ensure!(login.success && !login.players.is_empty(), "login refused");
    stream
        .write_all(&proto::packet(
            proto::C_ENTER_GAME,
            &CEnterGame { player_index: 0 },
        ))
        .await?;
    stream.flush().await?;
    let entered =
        SEnterGame::decode(read_packet(&mut stream, &mut buf, proto::S_ENTER_GAME).await?)?;
    ensure!(entered.success, "enter game refused");
    Ok((stream, entered.player_id, buf))
}

/// Reads until a packet with id `want` arrives (skipping others) and
/// returns its body.
pub async fn read_packet(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    want: u16,
) -> anyhow::Result<Bytes> {
    loop {
        if let Some(frame) = proto::split_frame(buf)? {
            let (id, len) = (frame.id, frame.len);
            let body = Bytes::copy_from_slice(frame.body);
            buf.advance(len);
            if id == want {
                return Ok(body);
            }
            continue;
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("server closed the connection while waiting for packet {want}");
        }
    }
}

async fn chat_reader(
    mut read: ReadHalf<ClientStream>,
    me: u64,
    mut buf: BytesMut,
    counters: Arc<ChatCounters>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut histogram = latency_histogram();
    loop {
        buf.reserve(16 * 1024);
        tokio::select! {
            result = read.read_buf(&mut buf) => match result {
                Ok(0) => {
                    counters.fail("server closed a session".into());
                    break;
                }
                Err(error) => {
                    counters.fail(format!("read: {error}"));
                    break;
                }
                Ok(_) => {}
            },
            _ = stop.changed() => break,
        }
        let measuring = counters.measuring.load(Ordering::Relaxed);
        let now = now_us();
        let mut delivered = 0;
        loop {
            match proto::split_frame(&buf) {
                Ok(Some(frame)) => {
                    if frame.id == proto::S_CHAT {
                        delivered += 1;
                        if measuring {
                            if let Some((player, sent)) = proto::peek_chat(frame.body) {
                                if player == me && sent != 0 {
                                    histogram.saturating_record(now.saturating_sub(sent));
                                }
                            }
                        }
                    }
                    let len = frame.len;
                    buf.advance(len);
                }
                Ok(None) => break,
                Err(error) => {
                    counters.fail(format!("bad frame from server: {error}"));
                    return histogram;
                }
            }
        }
        if measuring {
            counters.deliveries.fetch_add(delivered, Ordering::Relaxed);
        }
    }
    histogram
}

async fn chat_writer(
    mut write: WriteHalf<ClientStream>,
    first: tokio::time::Instant,
    interval: Duration,
    counters: Arc<ChatCounters>,
    mut stop: watch::Receiver<bool>,
) -> Option<WriteHalf<ClientStream>> {
    let msg: String = "m".repeat(CHAT_SIZE);
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Some(write),
        }
        let chat = CChat {
            msg: msg.clone(),
            client_time_us: now_us(),
        };
        let packet = proto::packet(proto::C_CHAT, &chat);
        let written = async {
            write.write_all(&packet).await?;
            write.flush().await
        };
        if let Err(error) = written.await {
            counters.fail(format!("write: {error}"));
            return None;
        }
        if counters.measuring.load(Ordering::Relaxed) {
            counters.chats_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
