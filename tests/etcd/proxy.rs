//! A TCP proxy the test can cut, reset or pause: the watcher sees etcd vanish, its
//! connection drop, or its bytes held back, while the test's own client keeps writing
//! (and compacting) directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on every cut or reset: connections of an older generation close.
    generation: Arc<AtomicU64>,
    /// While true, no byte is forwarded either way (connections stay open).
    paused: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub(crate) async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (paused, _) = tokio::sync::watch::channel(false);
        let task = {
            let up = up.clone();
            let generation = generation.clone();
            let paused = paused.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let target = target.clone();
                    let generation = generation.clone();
                    let mine = generation.load(Ordering::SeqCst);
                    let paused = paused.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let watch = async {
                            while generation.load(Ordering::SeqCst) == mine {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            }
                        };
                        tokio::select! {
                            _ = pipe(cr, sw, paused.subscribe()) => {}
                            _ = pipe(sr, cw, paused.subscribe()) => {}
                            _ = watch => {}
                        }
                    });
                }
            })
        };
        Proxy {
            port,
            up,
            generation,
            paused,
            task,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub(crate) fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Closes every connection (within a few milliseconds) and goes on accepting new ones.
    pub(crate) fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops forwarding bytes, either way, on every connection: they stay open, and what
    /// the peers send waits in the proxy and in the kernel's buffers (then the senders
    /// block) until [`Proxy::resume`].
    pub(crate) fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again what [`Proxy::pause`] held back, and what follows.
    pub(crate) fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while `paused` says so.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A proxy to `target` (`host:port`) that delays every byte by `delay` each way (a
/// round trip of twice that, like a WAN link); returns its endpoint.
pub(crate) async fn delayed(target: String, delay: std::time::Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(late_pipe(cr, sw, delay));
                tokio::spawn(late_pipe(sr, cw, delay));
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

async fn late_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 65536];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
    }
}
