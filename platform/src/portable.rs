//! The portable backend: a Tokio current-thread runtime per worker (epoll on Linux, kqueue on
//! macOS). It runs everywhere, and on Linux wherever io_uring is unavailable.

use std::{cell::Cell, future::Future, io, net::SocketAddr, sync::Arc, task::Poll, thread};

use tokio::net::TcpListener;

use crate::{
    balance::{Balance, Handoff, Load, WorkerShare},
    socket, Backend, HeapBuffer, HeapPool, IoBuffer, Pipe, SocketTuning, Worker,
};

/// The portable (Tokio) backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

/// A listener of the portable backend: the worker's own socket, or, where `SO_REUSEPORT` does
/// not balance, the connections an acceptor thread hands over. Either way connections go to
/// the least loaded worker ([`crate::balance`]).
pub struct PortableListener {
    /// The worker's own socket, if it has one.
    socket: Option<OwnSocket>,
    share: WorkerShare,
    /// See [`crate::socket::tunes_loopback_peers`].
    tunes_loopback_peers: bool,
}

/// A worker's own listening socket.
struct OwnSocket {
    listener: TcpListener,
    /// Set once [`crate::Listener::stop`] was called.
    stopped: Cell<bool>,
}

/// What a listener's wait ended with.
enum Arrival {
    /// A connection from this worker's socket.
    Accepted(io::Result<(tokio::net::TcpStream, SocketAddr)>),
    /// A connection another worker or the acceptor thread handed over.
    HandedOver(Handoff),
}

impl PortableListener {
    /// Waits for a connection on this worker's socket or one handed over.
    async fn next_arrival(&self) -> io::Result<Arrival> {
        std::future::poll_fn(|cx| {
            let handed = self.share.poll_handoff(cx);
            if let Poll::Ready(Some(handoff)) = handed {
                return Poll::Ready(Ok(Arrival::HandedOver(handoff)));
            }
            match &self.socket {
                Some(own) if own.stopped.get() => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "listener stopped",
                ))),
                Some(own) => own
                    .listener
                    .poll_accept(cx)
                    .map(|accepted| Ok(Arrival::Accepted(accepted))),
                None if handed.is_ready() => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "acceptor stopped",
                ))),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Counts and tunes a connection this worker takes.
    fn tuned(&self, mut stream: PortableStream, peer: SocketAddr, load: Load) -> PortableStream {
        if self.tunes_loopback_peers {
            socket::tune_accepted(&stream.inner, peer);
        }
        stream.load = Some(load);
        stream
    }
}

impl crate::Listener for PortableListener {
    type Stream = PortableStream;

    async fn accept(&self) -> io::Result<(PortableStream, SocketAddr)> {
        loop {
            match self.next_arrival().await? {
                Arrival::HandedOver(handoff) => {
                    let stream = PortableStream::from_std(handoff.stream)?;
                    return Ok((self.tuned(stream, handoff.peer, handoff.load), handoff.peer));
                }
                Arrival::Accepted(accepted) => {
                    let (stream, peer) = accepted?;
                    if let Some(load) = self.share.keep() {
                        let stream = PortableStream::accepted(stream)?;
                        return Ok((self.tuned(stream, peer, load), peer));
                    }
                    if let Some((stream, load)) = self.share.hand_off(stream.into_std()?, peer) {
                        return Ok((
                            self.tuned(PortableStream::from_std(stream)?, peer, load),
                            peer,
                        ));
                    }
                }
            }
        }
    }

    fn stop(&self) {
        self.share.stop();
        if let Some(own) = &self.socket {
            own.stopped.set(true);
            socket::stop_listening(&own.listener);
        }
    }
}

/// A connected stream of the portable backend.
pub struct PortableStream {
    inner: tokio::net::TcpStream,
    /// A client connection's place in its worker's count ([`crate::balance`]).
    load: Option<Load>,
}

impl PortableStream {
    /// Wraps a connection this worker accepted.
    fn accepted(inner: tokio::net::TcpStream) -> io::Result<Self> {
        if !socket::ACCEPTED_INHERIT_NODELAY {
            inner.set_nodelay(true)?;
        }
        Ok(Self { inner, load: None })
    }

    /// Wraps a connection this worker dialled, or one the acceptor thread accepted.
    fn new(inner: tokio::net::TcpStream) -> io::Result<Self> {
        // A proxy forwards each chunk as soon as it has it; Nagle would only add latency.
        inner.set_nodelay(true)?;
        Ok(Self { inner, load: None })
    }

    /// Adopts a connection the acceptor thread accepted (where `SO_REUSEPORT` does not balance).
    fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Self::new(tokio::net::TcpStream::from_std(stream)?)
    }
}

impl crate::Stream for PortableStream {
    type Buffer = HeapBuffer;

    async fn readable(&self) -> io::Result<()> {
        self.inner.readable().await
    }

    async fn read(&self, mut buf: HeapBuffer) -> (io::Result<usize>, HeapBuffer) {
        // One attempt: Tokio keeps readiness set until a read would block, so after `readable`
        // the socket may in fact be empty. Waiting here would escape the caller's deadline;
        // WouldBlock sends the caller back to `readable` instead.
        match self.inner.try_read(buf.spare_mut()) {
            Ok(n) => {
                buf.set_len(n);
                (Ok(n), buf)
            }
            Err(error) => {
                buf.set_len(0);
                (Err(error), buf)
            }
        }
    }

    async fn write_all(&self, buf: HeapBuffer) -> (io::Result<()>, HeapBuffer) {
        let written = self.send_all(buf.filled()).await;
        (written, buf)
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;
        let mut received = None;
        // Tokio clears its readiness only when an attempt says WouldBlock. A short read on
        // Linux has emptied the receive queue (see `Stream::try_recv`), which is exactly that
        // state, so the attempt reports it and keeps what it read aside. Readiness that arrived
        // after Tokio's last look carries a newer tick and is not cleared.
        let fd = self.inner.as_raw_fd();
        let mut attempted = false;
        let attempt = self.inner.try_io(Interest::READABLE, || {
            attempted = true;
            // Safety: `buf` is a live, writable slice of its length.
            let n = unsafe { socket::recv_into(&fd, buf.as_mut_ptr(), buf.len()) }?;
            received = Some(n);
            if cfg!(target_os = "linux") && n > 0 && n < buf.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        if !attempted {
            // Tokio has not seen the socket readable yet, as with a connection just accepted,
            // whose client has usually sent its first bytes already (see the handshake): look
            // once all the same. Tokio's readiness is left as it was.
            // Safety: `buf` is a live, writable slice of its length.
            return unsafe { socket::recv_into(&fd, buf.as_mut_ptr(), buf.len()) };
        }
        received.map_or(attempt, Ok)
    }

    async fn send_all(&self, bytes: &[u8]) -> io::Result<()> {
        // Try first: the socket usually has room, which saves a readiness round trip.
        socket::send_all_with(
            bytes,
            |rest| self.inner.try_write(rest),
            || self.inner.writable(),
        )
        .await
    }

    #[cfg(target_os = "linux")]
    fn try_splice_in(&self, pipe: &mut Pipe, max: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;
        // Tokio clears its readiness when the attempt would block, so `readable` then waits.
        let fd = self.inner.as_raw_fd();
        self.inner
            .try_io(Interest::READABLE, || pipe.fill_from(fd, max))
    }

    #[cfg(target_os = "linux")]
    async fn splice_out(&self, pipe: &mut Pipe) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;
        let fd = self.inner.as_raw_fd();
        while pipe.held() > 0 {
            match self
                .inner
                .try_io(Interest::WRITABLE, || pipe.drain_into(fd))
            {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.inner.writable().await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn try_splice_in(&self, _pipe: &mut Pipe, _max: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    async fn splice_out(&self, _pipe: &mut Pipe) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        socket::shutdown_write(&self.inner)
    }

    fn abort(&self) {
        socket::shutdown_both(&self.inner);
    }

    fn queued_to_read(&self) -> io::Result<usize> {
        socket::queued_to_read(&self.inner)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        crate::socket::local_addr(&self.inner)
    }

    fn descriptor(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inner.as_fd()
    }

    fn fix_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        crate::socket::fix_receive_buffer(&self.inner, bytes)
    }

    fn set_window_clamp(&self, bytes: usize) -> io::Result<()> {
        crate::socket::set_window_clamp(&self.inner, bytes)
    }

    fn bound_send_queue(&self, unsent: usize, buffer: Option<usize>) -> io::Result<()> {
        crate::socket::bound_send_queue(&self.inner, unsent, buffer)
    }
}

impl Backend for Portable {
    type Buffer = HeapBuffer;
    type Stream = PortableStream;
    type Listener = PortableListener;
    type Pool = HeapPool;

    fn name(&self) -> &'static str {
        "tokio"
    }

    fn run_workers<F, Fut>(
        self,
        workers: usize,
        listeners: Vec<Vec<std::net::TcpListener>>,
        worker: F,
    ) -> io::Result<()>
    where
        F: Fn(Worker<PortableListener>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let workers = workers.max(1);
        let groups = listeners
            .into_iter()
            .map(|group| listener_sources(workers, group))
            .collect::<io::Result<Vec<_>>>()?;
        let sources = crate::per_worker(workers, groups);
        crate::run_worker_threads("fyntr-worker", sources, move |index, sources| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async {
                let listeners = sources
                    .into_iter()
                    .map(ListenerSource::into_listener)
                    .collect::<io::Result<Vec<_>>>()?;
                worker(Worker { index, listeners }).await;
                Ok(())
            })
        })
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        tokio::task::spawn_local(future);
    }

    async fn yield_to_others() {
        tokio::task::yield_now().await;
    }

    async fn connect(addr: SocketAddr, tuning: SocketTuning) -> io::Result<PortableStream> {
        let socket = socket::socket_for(addr, tuning)?;
        socket::start_connect(&socket, addr)?;
        let stream = tokio::net::TcpStream::from_std(socket.into())?;
        // The first write readiness of a connecting socket means connected, or failed (then
        // SO_ERROR says why). On loopback the handshake is usually over when `connect`
        // returns, and a look first saves a trip through the worker's event loop.
        if !socket::writable_now(&stream)? {
            stream.writable().await?;
        }
        if let Some(error) = stream.take_error()? {
            return Err(error);
        }
        PortableStream::new(stream)
    }

    fn new_pool(&self, buffer_size: usize, max_buffers: usize) -> HeapPool {
        HeapPool::new(buffer_size, max_buffers)
    }
}

/// Where a worker's connections come from, before its runtime exists.
struct ListenerSource {
    socket: Option<std::net::TcpListener>,
    share: WorkerShare,
    tunes_loopback_peers: bool,
}

impl ListenerSource {
    fn into_listener(self) -> io::Result<PortableListener> {
        let socket = match self.socket {
            Some(listener) => Some(OwnSocket {
                listener: TcpListener::from_std(listener)?,
                stopped: Cell::new(false),
            }),
            None => None,
        };
        Ok(PortableListener {
            socket,
            share: self.share,
            tunes_loopback_peers: self.tunes_loopback_peers,
        })
    }
}

/// One listener per worker when there are enough, otherwise one acceptor thread that hands
/// each connection to the least loaded worker.
fn listener_sources(
    workers: usize,
    mut listeners: Vec<std::net::TcpListener>,
) -> io::Result<Vec<ListenerSource>> {
    let first = listeners
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener to run on"))?;
    let tunes_loopback_peers = socket::tunes_loopback_peers(first.local_addr());
    let (balance, shares) = Balance::new(workers);
    if listeners.len() >= workers {
        listeners.truncate(workers);
        return Ok(listeners
            .into_iter()
            .zip(shares)
            .map(|(listener, share)| ListenerSource {
                socket: Some(listener),
                share,
                tunes_loopback_peers,
            })
            .collect());
    }
    let listener = listeners.swap_remove(0);
    listener.set_nonblocking(false)?;
    thread::Builder::new()
        .name("fyntr-acceptor".into())
        .spawn(move || hand_out_connections(listener, balance))?;
    Ok(shares
        .into_iter()
        .map(|share| ListenerSource {
            socket: None,
            share,
            tunes_loopback_peers,
        })
        .collect())
}

/// The acceptor thread: accepts in a blocking loop and hands each connection to the least
/// loaded worker. It ends when every worker has stopped (the process then exits with it).
fn hand_out_connections(listener: std::net::TcpListener, balance: Arc<Balance>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if balance.hand_to_least_loaded(stream, peer).is_err() {
                    return;
                }
            }
            Err(error) if socket::is_resource_exhaustion(&error) => {
                thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::{BufferPool, Listener, Stream};

    /// Echo server on the portable backend, accepting through `listeners`.
    fn echo_once_per_worker(workers: usize, listeners: Vec<std::net::TcpListener>) {
        Portable
            .run_workers(workers, vec![listeners], |worker| async move {
                let pool = Portable.new_pool(64, 4);
                let (stream, _) = worker.listeners[0].accept().await.unwrap();
                let mut buffer = pool.take().await;
                loop {
                    stream.readable().await.unwrap();
                    let (read, returned) = stream.read(buffer).await;
                    buffer = returned;
                    match read {
                        Ok(n) => {
                            assert!(n > 0);
                            break;
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(error) => panic!("{error}"),
                    }
                }
                let (written, _) = stream.write_all(buffer).await;
                written.unwrap();
                stream.shutdown_write().unwrap();
            })
            .unwrap();
    }

    fn round_trip(addr: SocketAddr) {
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"ping").unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"ping");
    }

    #[test]
    fn each_worker_serves_on_its_own_listener_or_through_the_acceptor() {
        for listener_count in [2, 1] {
            let listeners = socket::bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
            let addr = listeners[0].local_addr().unwrap();
            let listeners: Vec<_> = listeners.into_iter().take(listener_count).collect();
            let server = thread::spawn(move || echo_once_per_worker(2, listeners));
            // Each worker serves exactly one connection; with SO_REUSEPORT the kernel may give
            // both to one worker, so keep connecting until both have finished.
            while !server.is_finished() {
                let client = thread::spawn(move || {
                    if let Ok(mut client) = std::net::TcpStream::connect(addr) {
                        let _ = client.write_all(b"ping");
                        let mut reply = Vec::new();
                        let _ =
                            client.set_read_timeout(Some(std::time::Duration::from_millis(200)));
                        let _ = client.read_to_end(&mut reply);
                    }
                });
                client.join().unwrap();
            }
            server.join().unwrap();
        }
        let listener = socket::bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listener[0].local_addr().unwrap();
        let server = thread::spawn(move || echo_once_per_worker(1, listener));
        round_trip(addr);
        server.join().unwrap();
    }
}
