//! Many uploading tunnels into one receiver that cannot keep up: every tunnel gets its share of
//! what the receiver takes, on both backends, with two workers and zero-copy relaying.
//!
//! Bytes are counted where they are delivered, over a window that opens once every tunnel is
//! open and streaming. The receiver is greedy, as most are: each turn it reads everything a
//! socket holds, so whichever sockets the proxy lets queue the most would take the most. The
//! check is a ratio between tunnels, not a time.
//!
//! The receiver's sockets all offer the same large window (a fixed 4 MiB receive buffer, more
//! than the proxy's bounded send queue per tunnel): what each turn takes from a tunnel is then
//! what the proxy queued for it. With the kernel's receive autotuning instead, a socket that
//! happened to be read less early on keeps a small window and takes a small share whatever the
//! proxy does (measured: slowest tunnel 0.09-0.6 of the mean with the sink pausing 20 ms, on
//! both backends, paced or not), which would test the receiver's kernel, not fyntr.

#![allow(missing_docs)]

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use common::*;

const TUNNELS: usize = 40;

/// The two backends' runs take turns: the receiver must be the bottleneck. Run side by side they
/// would share two cores among 80 writing clients, two sinks and two proxies, the CPU would be
/// the bottleneck, and the shares would be whatever the OS scheduler gave the client threads.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A single-threaded sink that reads all its connections in turns, each turn draining every
/// socket, then pausing: the bottleneck of the test. Counts each connection's bytes.
struct GreedySink {
    addr: std::net::SocketAddr,
    counts: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
}

impl GreedySink {
    fn start() -> GreedySink {
        let listener = equal_window_listener();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (counts_in, stop_in) = (Arc::clone(&counts), Arc::clone(&stop));
        thread::spawn(move || {
            let mut sockets: Vec<TcpStream> = Vec::new();
            let mut buffer = vec![0u8; 256 * 1024];
            // Bounded: it ends with the test, or after a minute whatever happens.
            let started = Instant::now();
            while !stop_in.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                while let Ok((socket, _)) = listener.accept() {
                    socket.set_nonblocking(true).unwrap();
                    sockets.push(socket);
                    counts_in.lock().unwrap().push(0);
                }
                for (index, socket) in sockets.iter_mut().enumerate() {
                    let mut got = 0u64;
                    loop {
                        match socket.read(&mut buffer) {
                            Ok(0) => break,
                            Ok(n) => got += n as u64,
                            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => break,
                        }
                    }
                    counts_in.lock().unwrap()[index] += got;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        GreedySink { addr, counts, stop }
    }

    fn snapshot(&self) -> Vec<u64> {
        self.counts.lock().unwrap().clone()
    }
}

/// A loopback listener whose accepted sockets inherit one fixed receive buffer (so no
/// autotuning), forced past `net.core.rmem_max` where the test runs as root.
fn equal_window_listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    const RECEIVE_BUFFER: libc::c_int = 4 << 20;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    #[cfg(target_os = "linux")]
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&RECEIVE_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    #[cfg(not(target_os = "linux"))]
    let forced = -1;
    if forced != 0 {
        socket
            .set_recv_buffer_size(RECEIVE_BUFFER as usize)
            .unwrap();
    }
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(128).unwrap();
    socket.into()
}

impl Drop for GreedySink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

on_each_backend! {
    fn every_tunnel_gets_its_share_of_a_slow_receiver(backend) {
        let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sink = GreedySink::start();
        let proxy = Arc::new(Proxy::start(
            backend,
            &["--allow-port", &sink.addr.port().to_string(), "--workers", "2"],
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for i in 0..TUNNELS {
            let mut stream = proxy.tunnel(&sink.addr.to_string());
            stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let stop = Arc::clone(&stop);
            clients.push(thread::spawn(move || {
                let chunk = payload(256 * 1024, i as u64);
                // Bounded by the stop flag, and by the write timeout if the proxy stalls.
                while !stop.load(Ordering::Relaxed) {
                    match stream.write(&chunk) {
                        Ok(_) => {}
                        Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                        Err(error) if error.kind() == ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
            }));
        }
        let opened = Instant::now();
        while sink.snapshot().len() < TUNNELS && opened.elapsed() < WAIT {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_secs(1));
        let before = sink.snapshot();
        thread::sleep(Duration::from_secs(3));
        let after = sink.snapshot();
        stop.store(true, Ordering::Relaxed);
        drop(sink);
        for client in clients {
            client.join().unwrap();
        }
        assert_eq!(after.len(), TUNNELS, "every tunnel reached the sink");
        let delivered: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let least = *delivered.iter().min().unwrap();
        let most = *delivered.iter().max().unwrap();
        // Printed for the record (see docs/performance.md for what spreads the shares).
        let mean = delivered.iter().sum::<u64>() as f64 / TUNNELS as f64;
        eprintln!(
            "{backend:?}: delivered per tunnel: least {least}, most {most}, mean {mean:.0}"
        );
        assert!(
            least as f64 >= mean / 2.0,
            "the slowest tunnel delivered less than half the mean: {delivered:?}"
        );
    }
}
