//! Local upstream servers for the tests, each on its own thread and a free loopback port.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
};

use sha2::{Digest, Sha256};

use super::{hex, sha256, WAIT};

/// A server on a free port; `handle` runs on a new thread for each connection.
pub fn serve(handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    serve_on(
        TcpListener::bind("127.0.0.1:0").expect("bind target"),
        handle,
    )
}

/// A server on a listener the caller bound (an IPv6 one, say), so that no other test can take
/// its port between a probe and the bind.
pub fn serve_on(
    listener: TcpListener,
    handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.set_write_timeout(Some(WAIT)).unwrap();
            let handle = handle.clone();
            thread::spawn(move || handle(stream));
        }
    });
    addr
}

/// Echoes everything until EOF, then half-closes.
pub fn echo() -> SocketAddr {
    serve(|mut stream| echo_on(&mut stream))
}

/// Echoes what `stream` sends until EOF, then half-closes it.
pub fn echo_on(stream: &mut TcpStream) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads until EOF, then answers with the sha256 (hex) and byte count of what it read.
pub fn hashing_sink() -> SocketAddr {
    serve(|mut stream| {
        let mut received = Vec::new();
        if stream.read_to_end(&mut received).is_ok() {
            let _ = write!(stream, "{} {}", sha256(&received), received.len());
        }
    })
}

/// Like [`hashing_sink`] (hashing as it reads, for large uploads), but no connection reads
/// anything until the returned function is called: writes to it back up in whatever lies
/// between.
pub fn gated_hashing_sink() -> (SocketAddr, impl FnOnce()) {
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let waiting = std::sync::Arc::clone(&gate);
    let addr = serve(move |mut stream| {
        let (open, opened) = &*waiting;
        let mut open = open.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
        drop(open);
        let mut hash = Sha256::new();
        let mut total = 0;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buffer[..n]);
                    total += n;
                }
                Err(_) => return,
            }
        }
        let _ = write!(stream, "{} {total}", hex(&hash.finalize()));
    });
    let release = move || {
        let (open, opened) = &*gate;
        *open.lock().unwrap() = true;
        opened.notify_all();
    };
    (addr, release)
}

/// Reads until EOF, then answers with the number of bytes it read (no hashing: for bulk loads).
pub fn counting_sink() -> SocketAddr {
    serve(|mut stream| {
        let mut buffer = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(_) => return,
            }
        }
        let _ = write!(stream, "{total}");
    })
}

/// Sends `data` to every client, then closes.
pub fn source(data: Vec<u8>) -> SocketAddr {
    let data = std::sync::Arc::new(data);
    serve(move |mut stream| {
        let _ = stream.write_all(&data);
    })
}

/// Accepts and reports each connection's received bytes (until EOF) on the returned channel.
pub fn recorder() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (sender, receiver) = mpsc::channel();
    let sender = std::sync::Arc::new(std::sync::Mutex::new(sender));
    let addr = serve(move |mut stream| {
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        let _ = sender.lock().unwrap().send(received);
    });
    (addr, receiver)
}

/// A port where nothing listens.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A listener whose accept queue is full, so new SYNs are dropped and connecting times out.
/// The returned values must stay alive for as long as the port must stay black.
pub fn black_hole() -> (SocketAddr, Vec<TcpStream>, socket2::Socket) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue: connections that are never accepted.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
        {
            fillers.push(stream);
        }
    }
    (addr, fillers, socket)
}
