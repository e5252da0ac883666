//! What the kernel knows about one TCP connection's path (`TCP_INFO` on Linux): round trips,
//! the delivery rate, bytes acknowledged and received, and what limited the sender.
//!
//! The proxy reads it to size socket queues to the path and to estimate a bottleneck's rate.
//! `libc::tcp_info` stops at the fields of Linux 2.6, so the layout of `struct tcp_info` from
//! `include/uapi/linux/tcp.h` (Linux 5.5 and later) is declared here; an older kernel fills a
//! prefix and the rest reads as zero.

use std::{io, time::Duration};

/// A snapshot of one connection as its kernel sees it. A figure the kernel does not report
/// (older kernel, or not Linux) is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// The smoothed round trip.
    pub round_trip: Duration,
    /// The least round trip seen recently (the path without queueing); zero if unknown.
    pub min_round_trip: Duration,
    /// The receiver's estimate of the round trip (`tcpi_rcv_rtt`): from the timestamps the
    /// peer echoes in its data, or one window's time without them. It follows a queue on the
    /// path while this side only receives, but it may stay where it was for seconds.
    pub receive_round_trip: Duration,
    /// How long ago this side last sent data: the smoothed round trip is as old as that,
    /// plus a round trip.
    pub since_data_sent: Duration,
    /// Bytes per second of the most recent delivery-rate sample.
    pub delivery_rate: u64,
    /// Whether that sample was limited by the application (too little to send), so that it
    /// understates the path.
    pub delivery_rate_app_limited: bool,
    /// Bytes this side sent that the peer acknowledged.
    pub bytes_acked: u64,
    /// Segments this side sent that reached the peer, selectively acknowledged ones included:
    /// unlike `bytes_acked` it keeps counting while a loss holds the cumulative ACK back.
    pub delivered_segments: u32,
    /// Bytes this side received in order.
    pub bytes_received: u64,
    /// Bytes this side has sent, retransmissions included.
    pub bytes_sent: u64,
    /// Bytes this side retransmitted.
    pub bytes_retransmitted: u64,
    /// Segments retransmitted over the connection's life.
    pub total_retransmits: u32,
    /// Time spent with data to send.
    pub busy: Duration,
    /// Of that, time limited by the peer's receive window.
    pub receive_window_limited: Duration,
    /// Of that, time limited by this side's send buffer.
    pub send_buffer_limited: Duration,
    /// Bytes queued in the socket and not yet sent.
    pub unsent: u32,
    /// The congestion window, in segments.
    pub congestion_window: u32,
    /// The sender's maximum segment size.
    pub send_mss: u32,
    /// Segments this side received, bare ACKs included.
    pub segments_received: u32,
    /// Segments with data this side received.
    pub data_segments_received: u32,
    /// Of those, segments that arrived out of order: after a hole, every segment until the
    /// missing one comes again, so a link dropping this side's incoming data shows here.
    pub out_of_order_received: u32,
}

impl TcpStats {
    /// The path's round trip without the queues on it when the kernel knows it, else the
    /// smoothed one.
    pub fn base_round_trip(&self) -> Duration {
        if self.min_round_trip.is_zero() {
            self.round_trip
        } else {
            self.min_round_trip
        }
    }
}

/// `struct tcp_info` of Linux 5.5 (`include/uapi/linux/tcp.h`).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[repr(C)]
#[derive(Default)]
struct RawTcpInfo {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    /// `snd_wscale:4, rcv_wscale:4`.
    window_scales: u8,
    /// `delivery_rate_app_limited:1, fastopen_client_fail:2`.
    flags: u8,
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
    busy_time: u64,
    rwnd_limited: u64,
    sndbuf_limited: u64,
    delivered: u32,
    delivered_ce: u32,
    bytes_sent: u64,
    bytes_retrans: u64,
    dsack_dups: u32,
    reord_seen: u32,
    rcv_ooopack: u32,
    snd_wnd: u32,
}

/// Reads `socket`'s [`TcpStats`].
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn read<S: std::os::fd::AsFd>(socket: &S) -> io::Result<TcpStats> {
    use std::os::fd::AsRawFd;
    let mut raw = RawTcpInfo::default();
    let mut len = std::mem::size_of::<RawTcpInfo>() as libc::socklen_t;
    // Safety: `raw` is plain data of `len` bytes and outlives the call; the kernel writes at
    // most `len` bytes and leaves the rest as it was (zero).
    let got = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut raw as *mut RawTcpInfo).cast(),
            &mut len,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let micros = |us: u64| Duration::from_micros(us);
    Ok(TcpStats {
        round_trip: micros(raw.rtt.into()),
        min_round_trip: micros(raw.min_rtt.into()),
        receive_round_trip: micros(raw.rcv_rtt.into()),
        since_data_sent: Duration::from_millis(raw.last_data_sent.into()),
        delivery_rate: raw.delivery_rate,
        delivery_rate_app_limited: raw.flags & 1 != 0,
        bytes_acked: raw.bytes_acked,
        delivered_segments: raw.delivered,
        bytes_received: raw.bytes_received,
        bytes_sent: raw.bytes_sent,
        bytes_retransmitted: raw.bytes_retrans,
        total_retransmits: raw.total_retrans,
        busy: micros(raw.busy_time),
        receive_window_limited: micros(raw.rwnd_limited),
        send_buffer_limited: micros(raw.sndbuf_limited),
        unsent: raw.notsent_bytes,
        congestion_window: raw.snd_cwnd,
        send_mss: raw.snd_mss,
        segments_received: raw.segs_in,
        data_segments_received: raw.data_segs_in,
        out_of_order_received: raw.rcv_ooopack,
    })
}

/// A socket whose [`TcpStats`] another thread reads once in a while (`auto` pacing's thread
/// reads every busy upstream socket once a tick): its descriptor, kept by number, since the
/// stream itself belongs to its worker.
#[derive(Debug)]
pub struct WatchedSocket(std::os::fd::RawFd);

impl WatchedSocket {
    /// Keeps `socket`'s descriptor for [`WatchedSocket::read`].
    ///
    /// # Safety
    ///
    /// The descriptor must stay open for as long as this value may be read: drop it (or stop
    /// reading it) before the socket closes, or a read would reach whatever file took the
    /// descriptor's number next.
    pub unsafe fn new(socket: std::os::fd::BorrowedFd<'_>) -> Self {
        use std::os::fd::AsRawFd;
        Self(socket.as_raw_fd())
    }

    /// Reads the socket's [`TcpStats`].
    pub fn read(&self) -> io::Result<TcpStats> {
        // Safety: `new`'s caller keeps the descriptor open while this value is read.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        read(&socket)
    }
}

/// Off Linux nothing is read.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn read<S: std::os::fd::AsFd>(_socket: &S) -> io::Result<TcpStats> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_layout_is_the_kernels() {
        // Linux 5.5's struct tcp_info is 232 bytes; its 2.6 prefix, what libc declares, 104.
        assert_eq!(std::mem::size_of::<RawTcpInfo>(), 232);
        assert_eq!(std::mem::offset_of!(RawTcpInfo, pacing_rate), 104);
        assert_eq!(
            std::mem::offset_of!(RawTcpInfo, rtt),
            std::mem::offset_of!(libc::tcp_info, tcpi_rtt)
        );
    }

    #[test]
    fn bytes_sent_and_received_are_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let message = vec![7u8; 100_000];
        sender.write_all(&message).unwrap();
        let mut got = vec![0u8; message.len()];
        receiver.read_exact(&mut got).unwrap();
        let sent = read(&sender).unwrap();
        let received = read(&receiver).unwrap();
        assert_eq!(received.bytes_received, 100_000);
        assert_eq!(sent.bytes_sent, 100_000);
        // The peer acknowledges the SYN too.
        assert!(sent.bytes_acked <= 100_001, "{sent:?}");
        assert!(!sent.base_round_trip().is_zero());
        assert!(sent.base_round_trip() <= sent.round_trip.max(sent.min_round_trip));
    }
}
