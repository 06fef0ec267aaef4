//! Media threads: each room's peer connections, and the forwarding between them, run on one
//! thread of their own (a single-threaded runtime), as many threads as cores. A forwarded
//! packet passes between three tasks (the publisher's connection, the forwarder, the
//! receiver's connection); on the server's shared runtime those were woken across worker
//! threads for every packet, with futex calls and work stealing; on a room's thread they are
//! woken in place. Measured in `loadtests/RESULTS.md` (issue 6): at 100 consultations, 7% less
//! CPU per forwarded packet and no loss where the shared runtime lost 0.5–1.25%.
//!
//! The threads start with the first room and stop when the forwarding unit goes.

use std::{
    future::Future,
    hash::{Hash, Hasher},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    default_runtime,
};

/// The media threads of one forwarding unit.
pub(super) struct Shards {
    count: usize,
    started: OnceLock<Vec<Shard>>,
}

struct Shard {
    runtime: Arc<ShardRuntime>,
    /// Dropped (or sent) to end the thread.
    _stop: oneshot::Sender<()>,
}

impl Shards {
    pub(super) fn new() -> Self {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            count,
            started: OnceLock::new(),
        }
    }

    /// The runtime of `room`'s thread (the same for every call with that room).
    pub(super) fn of(&self, room: &str) -> Arc<ShardRuntime> {
        let shards = self
            .started
            .get_or_init(|| (0..self.count).map(start).collect());
        // SipHash with fixed keys: the same room always lands on the same thread.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new();
        room.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % shards.len() as u64).unwrap_or(0);
        shards[index].runtime.clone()
    }
}

fn start(index: usize) -> Shard {
    let (handles, handle) = std::sync::mpsc::sync_channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("sen-media-{index}"))
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = handles.send(runtime.handle().clone());
            runtime.block_on(async move {
                let _ = stopped.await;
            });
        });
    // Without a thread of its own (no thread or runtime could be made), the room's tasks run on
    // the server's runtime, as before.
    let handle = spawned
        .ok()
        .and_then(|_| handle.recv().ok())
        .unwrap_or_else(Handle::current);
    Shard {
        runtime: Arc::new(ShardRuntime {
            handle,
            tokio: default_runtime().expect("webrtc is built with its tokio runtime"),
        }),
        _stop: stop,
    }
}

/// The `webrtc` runtime of one media thread: tasks spawn there, sockets and timers register
/// with its reactor; the rest is the crate's tokio runtime.
pub(super) struct ShardRuntime {
    handle: Handle,
    tokio: Arc<dyn Runtime>,
}

impl ShardRuntime {
    /// Runs `future` on this thread and waits for it.
    pub(super) async fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future).await.ok()
    }
}

impl std::fmt::Debug for ShardRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRuntime").finish_non_exhaustive()
    }
}

struct Task(tokio::task::JoinHandle<()>);

impl JoinHandle for Task {
    // Dropping a tokio handle detaches its task already.
    fn detach(&self) {}

    fn abort(&self) {
        self.0.abort();
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Runtime for ShardRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        Box::new(Task(self.handle.spawn(future)))
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let _on = self.handle.enter();
        self.tokio.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let _on = self.handle.enter();
        self.tokio.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.tokio.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let _on = self.handle.enter();
        self.tokio.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        let _on = self.handle.enter();
        self.tokio.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future);
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }

    fn name(&self) -> &'static str {
        "sen-media"
    }
}
