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
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Socket options for upstream connections when pacing is on.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketTuning {
    /// `SO_RCVBUF`: bounds the window the destination may fill before fyntr reads.
    pub receive_buffer: Option<usize>,
    /// `SO_SNDBUF`: keeps the kernel's send queue short so DRR's order reaches the wire.
    pub send_buffer: Option<usize>,
}

/// A new non-blocking TCP socket for `addr`, with `tuning` applied (before `connect`, so that
/// the window scale matches the receive buffer); not connected yet.
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
    if let Some(size) = tuning.receive_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = tuning.send_buffer {
        socket.set_send_buffer_size(size)?;
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

/// One non-blocking `send` of `bytes` (no `SIGPIPE`); returns how many were accepted.
pub(crate) fn send_now<S: std::os::fd::AsRawFd>(socket: &S, bytes: &[u8]) -> io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = libc::MSG_DONTWAIT;
    // Safety: a valid slice for its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            flags,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
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
