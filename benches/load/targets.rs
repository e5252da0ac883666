//! Loopback targets: sink, source, echo and ack-after-N, each on its own port.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The running targets.
pub struct Targets {
    /// Sends bytes until the client closes (the client reads as much as it wants).
    pub source: SocketAddr,
    /// Echoes everything.
    pub echo: SocketAddr,
    /// Reads a 8-byte big-endian length N, then N bytes, then answers one byte; repeats.
    pub ack: SocketAddr,
    /// Accepts and holds connections, reading and discarding.
    pub idle: SocketAddr,
    /// Reads and discards, counting each connection's bytes where they are delivered.
    pub sink: SocketAddr,
    /// The byte counters of the sink's connections, in the order they were accepted.
    pub delivered: Delivered,
}

/// Per-connection counts of the bytes the sink target has read.
#[derive(Clone, Default)]
pub struct Delivered(Arc<Mutex<Vec<Arc<AtomicU64>>>>);

impl Delivered {
    /// Forgets every connection counted so far (at the start of a scenario).
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// How many connections the sink has accepted since the last clear.
    pub fn connections(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Each connection's bytes so far.
    pub fn snapshot(&self) -> Vec<u64> {
        let counters = self.0.lock().unwrap();
        counters
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .collect()
    }

    fn register(&self) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        self.0.lock().unwrap().push(Arc::clone(&counter));
        counter
    }
}

impl Targets {
    pub async fn start() -> Targets {
        let delivered = Delivered::default();
        Targets {
            source: serve(source).await,
            echo: serve(echo).await,
            ack: serve(ack).await,
            idle: serve(idle).await,
            sink: serve_sink(delivered.clone()).await,
            delivered,
        }
    }

    /// All target ports, for proxies that need them allowed.
    pub fn ports(&self) -> Vec<u16> {
        vec![
            self.source.port(),
            self.echo.port(),
            self.ack.port(),
            self.idle.port(),
            self.sink.port(),
        ]
    }
}

async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream));
            }
        }
    });
    addr
}

async fn source(mut stream: TcpStream) {
    let buffer = vec![0x5au8; 256 * 1024];
    while stream.write_all(&buffer).await.is_ok() {}
}

async fn echo(mut stream: TcpStream) {
    let (mut reader, mut writer) = stream.split();
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
}

async fn ack(mut stream: TcpStream) {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let mut header = [0u8; 8];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut remaining = u64::from_be_bytes(header);
        while remaining > 0 {
            let want = remaining.min(buffer.len() as u64) as usize;
            match stream.read(&mut buffer[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => remaining -= n as u64,
            }
        }
        if stream.write_all(&[1]).await.is_err() {
            return;
        }
    }
}

async fn idle(mut stream: TcpStream) {
    let mut buffer = [0u8; 64];
    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
}

async fn serve_sink(delivered: Delivered) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((mut stream, _)) = listener.accept().await {
                let counter = delivered.register();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 256 * 1024];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        }
    });
    addr
}
