//! Tests of the ring backend on its own: a worker on a loopback listener, driven by plain
//! blocking clients on other threads.

use std::{
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use super::*;
use crate::{IoBuffer, Listener, Stream};

/// Whether io_uring works here; says why the test is skipped when it does not.
fn io_uring_here() -> bool {
    match probe() {
        Ok(_) => true,
        Err(unavailable) => {
            eprintln!("skipped: io_uring unavailable here: {unavailable}");
            false
        }
    }
}

/// Runs one worker of `backend` that hands its listener to `serve` and ends when `serve`
/// returns. Returns the address to connect to and the worker's thread.
fn worker<F, Fut>(backend: Uring, serve: F) -> (SocketAddr, thread::JoinHandle<()>)
where
    F: Fn(UringListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let listeners = crate::socket::bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let server = thread::spawn(move || {
        backend
            .run_workers(1, vec![listeners], move |mut worker| {
                serve(worker.listeners.remove(0))
            })
            .unwrap();
    });
    (addr, server)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn plain(capacity: usize) -> UringBuffer {
    UringBuffer::Heap(crate::pool::HeapBuffer::detached(capacity))
}

/// Waits (bounded) until every operation but the eventfd read has completed and every buffer
/// is back on its ring. Descriptors: every socket's operations hold a reference to it, so no
/// operation left means every closed socket is really closed.
async fn everything_returned(small: usize, bulk: usize) {
    for _ in 0..200 {
        if RingWorker::outstanding() == (1, small, bulk) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "still outstanding (operations, small, bulk): {:?}",
        RingWorker::outstanding()
    );
}

#[test]
fn small_and_bulk_messages_are_echoed_byte_exact_and_everything_comes_back() {
    if !io_uring_here() {
        return;
    }
    let (addr, server) = worker(Uring::new(16 * 1024, true), |listener| async move {
        let (stream, _) = listener.accept().await.unwrap();
        loop {
            stream.readable().await.unwrap();
            let (read, buffer) = stream.read(plain(16 * 1024)).await;
            if read.unwrap() == 0 {
                break;
            }
            let (written, _) = stream.write_all(buffer).await;
            written.unwrap();
        }
        stream.shutdown_write().unwrap();
        drop(stream);
        // The listener's accept is the last operation; stopping it ends that too.
        listener.stop();
        everything_returned(
            usize::from(buffers::SMALL_BUFFERS),
            usize::from(RING_BUFFERS),
        )
        .await;
    });
    let mut client = TcpStream::connect(addr).unwrap();
    let small = pattern(100, 1);
    client.write_all(&small).unwrap();
    let mut back = vec![0u8; small.len()];
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, small);
    let bulk = pattern(3 << 20, 2);
    let writer = {
        let mut client = client.try_clone().unwrap();
        let bulk = bulk.clone();
        thread::spawn(move || {
            client.write_all(&bulk).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == bulk,
        "{} of {} bytes came back",
        back.len(),
        bulk.len()
    );
    server.join().unwrap();
}

#[test]
fn exhausted_buffers_hold_the_sender_back_and_lose_nothing() {
    if !io_uring_here() {
        return;
    }
    // One buffer per ring. The first stream's receive takes the small one and the relay keeps
    // it; the second stream then receives nothing, its data waits in the socket, and arrives
    // whole once the buffer is given back.
    let first_sent = pattern(64 * 1024, 5);
    let sent = pattern(2 << 20, 3);
    let expected = sent.clone();
    let backend = Uring::new(16 * 1024, false).with_ring_buffers(1, 1);
    let (addr, server) = worker(backend, move |listener| {
        let expected = expected.clone();
        async move {
            let (first, _) = listener.accept().await.unwrap();
            let (second, _) = listener.accept().await.unwrap();
            first.readable().await.unwrap();
            assert_eq!(
                RingWorker::outstanding().1,
                0,
                "the first holds the small buffer"
            );
            // Starved: nothing is received for the second while the buffer is held.
            let waited = tokio::time::timeout(Duration::from_millis(100), second.readable()).await;
            assert!(
                waited.is_err(),
                "the second received with no buffer to spare"
            );
            assert!(
                second.queued_to_read().unwrap() > 0,
                "the rest waits in the socket"
            );
            // The relay takes the first's bytes: the buffer goes back to the ring.
            let mut taken = vec![0u8; 4096];
            assert!(first.try_recv(&mut taken).unwrap() > 0);
            drop(first);
            let mut received = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                second.readable().await.unwrap();
                match second.try_recv(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => panic!("receive failed: {error}"),
                }
            }
            assert!(
                received == expected,
                "{} of {} bytes",
                received.len(),
                expected.len()
            );
            drop(second);
            listener.stop();
            everything_returned(1, 1).await;
        }
    });
    let mut first = TcpStream::connect(addr).unwrap();
    first.write_all(&first_sent).unwrap();
    // One listener accepts in connection order.
    let mut second = TcpStream::connect(addr).unwrap();
    second.write_all(&sent).unwrap();
    second.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = second.read_to_end(&mut rest);
    let _ = first.read_to_end(&mut rest);
    server.join().unwrap();
}

#[test]
fn a_peer_that_resets_mid_send_fails_the_write_and_the_worker_serves_on() {
    if !io_uring_here() {
        return;
    }
    let (addr, server) = worker(Uring::new(64 * 1024, true), |listener| async move {
        let (stream, _) = listener.accept().await.unwrap();
        let chunk = pattern(1 << 20, 4);
        let failed = loop {
            let mut buffer = plain(chunk.len());
            buffer.fill_from(&chunk);
            if let (Err(error), _) = stream.write_all(buffer).await {
                break error;
            }
        };
        assert!(
            matches!(failed.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)),
            "{failed}"
        );
        drop(stream);
        // The next connection is served as usual.
        let (stream, _) = listener.accept().await.unwrap();
        stream.send_all(b"still here").await.unwrap();
        stream.shutdown_write().unwrap();
    });
    let mut client = TcpStream::connect(addr).unwrap();
    let mut some = vec![0u8; 64 * 1024];
    client.read_exact(&mut some).unwrap();
    // Close with unread data and a zero linger: the kernel sends RST.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let mut next = TcpStream::connect(addr).unwrap();
    let mut answer = String::new();
    next.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "still here");
    server.join().unwrap();
}

#[test]
fn a_worker_that_ends_with_operations_in_flight_closes_its_sockets() {
    if !io_uring_here() {
        return;
    }
    let (addr, server) = worker(Uring::new(64 * 1024, true), |listener| async move {
        // One stream waits to read, the other writes to a peer that does not read.
        let (idle, _) = listener.accept().await.unwrap();
        let (stuck, _) = listener.accept().await.unwrap();
        Uring::spawn(async move {
            let _ = idle.readable().await;
            let _ = idle.read(plain(1024)).await;
        });
        Uring::spawn(async move {
            loop {
                let mut buffer = plain(1 << 20);
                buffer.fill_from(&pattern(1 << 20, 5));
                if stuck.write_all(buffer).await.0.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        listener.stop();
        assert!(listener.accept().await.is_err());
    });
    let mut idle = TcpStream::connect(addr).unwrap();
    let mut stuck = TcpStream::connect(addr).unwrap();
    server.join().unwrap();
    // The worker is gone: both connections end (EOF or reset), neither hangs.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(idle.read(&mut byte), Ok(0) | Err(_)));
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match stuck.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                assert_ne!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock,
                    "the socket stayed open"
                );
                break;
            }
        }
    }
}
