//! Binding listening sockets.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog: deep enough for a Terraform connection storm arriving at once.
const LISTEN_BACKLOG: i32 = 1024;

/// Whether this OS balances incoming connections across `SO_REUSEPORT` listeners.
pub const REUSEPORT_BALANCES: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Binds the listening sockets for `workers` workers on `addr`.
///
/// Where the kernel balances `SO_REUSEPORT` listeners (Linux), each worker gets its own socket on
/// the same address; elsewhere one socket is returned and the backend hands connections out.
/// With port 0 the first bind picks the port and the others join it.
pub fn bind_listeners(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let count = if REUSEPORT_BALANCES {
        workers.max(1)
    } else {
        1
    };
    let first = bind_one(addr, count > 1)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_one(bound, true)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    let _ = reuse_port;
    if on_loopback(addr) {
        // Accepted sockets inherit the listener's congestion control.
        use_loopback_congestion_control(&socket);
    }
    // Accepted sockets inherit it on Linux (see ACCEPTED_INHERIT_NODELAY), which saves a
    // system call per connection; elsewhere each accepted socket sets it again.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether sockets accepted on Linux carry the listener's `TCP_NODELAY` (set by
/// [`bind_listeners`]). They do: the kernel clones the listener's TCP state into each accepted
/// socket. On a churn of short tunnels the `setsockopt` it saves is one of about thirty system
/// calls per tunnel. Other systems are not relied on.
pub(crate) const ACCEPTED_INHERIT_NODELAY: bool =
    cfg!(any(target_os = "linux", target_os = "android"));

/// The congestion control for sockets whose peer is on this host.
pub const LOOPBACK_CONGESTION_CONTROL: &str = "reno";

/// Gives a socket whose peer is on this host the cheapest congestion control,
/// [`LOOPBACK_CONGESTION_CONTROL`].
///
/// Loopback never drops or queues a packet, so no algorithm has anything to control there, but
/// some cost CPU for nothing: BBR (a common choice on servers and cloud images, and the default on
/// the machines fyntr is benchmarked on) paces every packet with a high-resolution timer. On the
/// load benchmark, with BBR the system default, that timer work was half of fyntr's CPU time per
/// relayed gigabyte, and the client-facing socket of a proxy at `127.0.0.1:9999` is always such a
/// socket. Reno is built into every Linux kernel and always allowed to unprivileged processes. A
/// failure (a kernel without `TCP_CONGESTION`) leaves the system default, which only costs CPU.
pub(crate) fn use_loopback_congestion_control(socket: &Socket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket.set_tcp_congestion(LOOPBACK_CONGESTION_CONTROL.as_bytes()) {
        tracing::debug!(%error, "could not set the loopback congestion control");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// Whether sockets accepted on a listener bound to `local` need
/// [`use_loopback_congestion_control`] one by one when their peer is on loopback: a listener
/// bound to loopback already gave them its own.
pub(crate) fn tunes_loopback_peers(local: io::Result<SocketAddr>) -> bool {
    local.is_ok_and(|local| !on_loopback(local))
}

/// Applies [`use_loopback_congestion_control`] to a socket accepted from `peer` when the peer is
/// on loopback (see [`tunes_loopback_peers`]).
pub(crate) fn tune_accepted<S: std::os::fd::AsFd>(socket: &S, peer: SocketAddr) {
    if on_loopback(peer) {
        use_loopback_congestion_control(&socket2::SockRef::from(socket));
    }
}

/// Whether `addr` is a loopback address, IPv4-mapped ones (`::ffff:127.0.0.1`, how a dual-stack
/// socket sees an IPv4 peer) included.
fn on_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Socket options for upstream connections when downloads are paced.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketTuning {
    /// `TCP_WINDOW_CLAMP` before `connect`: bounds the receive window the destination may fill
    /// before fyntr reads, from the first window on. Unlike `SO_RCVBUF` it leaves the window
    /// scale and the buffer's autotuning alone, and [`set_window_clamp`] can move it later.
    pub window_clamp: Option<usize>,
}

/// A new non-blocking TCP socket for `addr`, with `tuning` applied (before `connect`, so that
/// it bounds the first window too); not connected yet.
pub(crate) fn socket_for(addr: SocketAddr, tuning: SocketTuning) -> io::Result<Socket> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let socket = {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket
    };
    if on_loopback(addr) {
        use_loopback_congestion_control(&socket);
    }
    if let Some(clamp) = tuning.window_clamp {
        set_window_clamp(&socket, clamp)?;
    }
    Ok(socket)
}

/// One non-blocking `recv` of at most `len` bytes into `buf`.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes for the duration of the call.
pub(crate) unsafe fn recv_into<S: std::os::fd::AsRawFd>(
    socket: &S,
    buf: *mut u8,
    len: usize,
) -> io::Result<usize> {
    // Safety: the caller guarantees `buf` is writable for `len` bytes.
    let received = unsafe { libc::recv(socket.as_raw_fd(), buf.cast(), len, libc::MSG_DONTWAIT) };
    usize::try_from(received).map_err(|_| io::Error::last_os_error())
}

/// Starts connecting the non-blocking `socket` to `addr`: done, or in progress (the first write
/// readiness then says connected, or failed: see [`writable_now`] and `SO_ERROR`).
pub(crate) fn start_connect(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    match socket.connect(&addr.into()) {
        Err(error) if error.raw_os_error() != Some(libc::EINPROGRESS) => Err(error),
        _ => Ok(()),
    }
}

/// Whether `socket` could be written to now (for a connecting socket: the connection is set
/// up, or failed), by a `poll` that does not wait.
pub(crate) fn writable_now<S: std::os::fd::AsRawFd>(socket: &S) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // Safety: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ready > 0)
}

/// Sends all of `bytes` with `try_send` (one non-blocking attempt), waiting with `writable`
/// whenever an attempt would block; both backends' plain writes.
pub(crate) async fn send_all_with<Fut: std::future::Future<Output = io::Result<()>>>(
    bytes: &[u8],
    mut try_send: impl FnMut(&[u8]) -> io::Result<usize>,
    mut writable: impl FnMut() -> Fut,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        match try_send(&bytes[sent..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "peer accepts no data",
                ))
            }
            Ok(n) => sent += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => writable().await?,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Shuts a socket down in both directions, ignoring errors (it may already be closed).
pub fn shutdown_both<S: std::os::fd::AsFd>(socket: &S) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
}

/// Shuts the write side of a socket down (sends FIN).
pub fn shutdown_write<S: std::os::fd::AsFd>(socket: &S) -> io::Result<()> {
    socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write)
}

/// Stops a listening socket: a blocked `accept` on it returns an error.
pub fn stop_listening<S: std::os::fd::AsFd>(socket: &S) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Read);
}

/// Whether an `accept` error means the process or system is out of descriptors or memory
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM): transient, and accepting again at once cannot succeed, so
/// the caller backs off instead of spinning.
pub fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Bytes the kernel holds ready to read on `socket` (`FIONREAD`). Lets a paced reader ask for
/// a grant of exactly what one read will return, before reading it.
pub fn queued_to_read<S: std::os::fd::AsFd>(socket: &S) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // Safety: FIONREAD writes one c_int through the pointer, which points at a live c_int.
    let result = unsafe { libc::ioctl(socket.as_fd().as_raw_fd(), libc::FIONREAD, &mut queued) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Bounds what the kernel holds for sending on `socket`: at most `unsent` bytes not yet sent
/// (`TCP_NOTSENT_LOWAT`: the socket is writable only below it), and, when `buffer` is given,
/// about that many bytes sent or not (`SO_SNDBUF`, which also ends the kernel's autotuning of
/// this socket's buffer). Off Linux nothing is changed.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn bound_send_queue<S: std::os::fd::AsFd>(
    socket: &S,
    unsent: usize,
    buffer: Option<usize>,
) -> io::Result<()> {
    set_size_option(socket, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, unsent)?;
    if let Some(buffer) = buffer {
        // The kernel doubles the value for its bookkeeping, which leaves about `buffer` for data.
        socket2::SockRef::from(socket).set_send_buffer_size(buffer)?;
    }
    Ok(())
}

/// Off Linux the kernel's send queue is left as it is.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn bound_send_queue<S: std::os::fd::AsFd>(
    _socket: &S,
    _unsent: usize,
    _buffer: Option<usize>,
) -> io::Result<()> {
    Ok(())
}

/// Bounds the receive window `socket` advertises to `bytes` (`TCP_WINDOW_CLAMP`); it may be
/// moved at any time, and the window follows as data is read (it never shrinks below what was
/// already offered). The kernel's receive-buffer autotuning raises the clamp whenever it grows
/// the buffer, so a clamp meant to hold must be paired with [`fix_receive_buffer`] once the
/// connection is up. Off Linux nothing is changed.
pub fn set_window_clamp<S: std::os::fd::AsFd>(socket: &S, bytes: usize) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return set_size_option(socket, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, bytes);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (socket, bytes);
        Ok(())
    }
}

/// The local address of `socket`.
pub fn local_addr<S: std::os::fd::AsFd>(socket: &S) -> io::Result<SocketAddr> {
    socket2::SockRef::from(socket)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

/// Fixes the receive buffer of a connected `socket` at about `bytes` (`SO_RCVBUF`), which ends
/// its autotuning; the window scale, agreed at connect, stays.
pub fn fix_receive_buffer<S: std::os::fd::AsFd>(socket: &S, bytes: usize) -> io::Result<()> {
    socket2::SockRef::from(socket).set_recv_buffer_size(bytes)
}

/// Sets the integer socket option `level`/`name` to `bytes`, saturated to a C int.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_size_option<S: std::os::fd::AsFd>(
    socket: &S,
    level: libc::c_int,
    name: libc::c_int,
    bytes: usize,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // Safety: the option value is one live c_int, and its size is passed with it.
    let set = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most the kernel's send-buffer autotuning gives a socket (`net.ipv4.tcp_wmem`, third
/// field; 4 MiB by default, and taken to be that where it cannot be read), read once.
pub fn autotuned_send_buffer_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .ok()
            .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(4 << 20)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_port() {
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap().port(), port);
        }
        if REUSEPORT_BALANCES {
            assert_eq!(listeners.len(), 3);
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn congestion_control<S: std::os::fd::AsFd>(socket: &S) -> String {
        let name = socket2::SockRef::from(socket).tcp_congestion().unwrap();
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn loopback_sockets_get_the_loopback_congestion_control() {
        // Accepted on a loopback listener: inherited from it.
        let listener = bind_listeners("127.0.0.1:0".parse().unwrap(), 1)
            .unwrap()
            .remove(0);
        let addr = listener.local_addr().unwrap();
        assert!(!tunes_loopback_peers(listener.local_addr()));
        let dialed = socket_for(addr, SocketTuning::default()).unwrap();
        assert_eq!(congestion_control(&dialed), LOOPBACK_CONGESTION_CONTROL);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(congestion_control(&accepted), LOOPBACK_CONGESTION_CONTROL);

        // Accepted on a wildcard listener from a loopback peer: set one by one.
        let wildcard = bind_listeners("0.0.0.0:0".parse().unwrap(), 1)
            .unwrap()
            .remove(0);
        assert!(tunes_loopback_peers(wildcard.local_addr()));
        let port = wildcard.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        wildcard.set_nonblocking(false).unwrap();
        let (accepted, peer) = wildcard.accept().unwrap();
        tune_accepted(&accepted, peer);
        assert_eq!(congestion_control(&accepted), LOOPBACK_CONGESTION_CONTROL);

        // A dual-stack wildcard listener sees an IPv4 loopback peer as ::ffff:127.0.0.1.
        let Ok(mut dual) = bind_listeners("[::]:0".parse().unwrap(), 1) else {
            eprintln!("no IPv6 here: the dual-stack case is skipped");
            return;
        };
        let dual = dual.remove(0);
        let port = dual.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        dual.set_nonblocking(false).unwrap();
        let (accepted, peer) = dual.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}");
        tune_accepted(&accepted, peer);
        assert_eq!(congestion_control(&accepted), LOOPBACK_CONGESTION_CONTROL);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_send_queue_is_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _receiver = listener.accept().unwrap();
        bound_send_queue(&sender, 128 * 1024, Some(256 * 1024)).unwrap();
        let socket = socket2::SockRef::from(&sender);
        assert_eq!(socket.send_buffer_size().unwrap(), 2 * 256 * 1024);
    }

    #[test]
    fn queued_to_read_counts_unread_bytes() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        assert_eq!(queued_to_read(&receiver).unwrap(), 0);
        sender.write_all(&[7; 1000]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while queued_to_read(&receiver).unwrap() < 1000 {
            assert!(std::time::Instant::now() < deadline, "bytes never arrived");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut head = [0; 400];
        receiver.read_exact(&mut head).unwrap();
        assert_eq!(queued_to_read(&receiver).unwrap(), 600);
    }
}
