//! Relay buffers of the io_uring backend: a provided buffer ring the kernel receives into, and
//! the buffer type that crosses the backend boundary.
//!
//! Each worker maps two regions and hands their buffers to the kernel as two provided buffer
//! rings: [`SMALL_BUFFERS`] of one page for interactive traffic (TLS handshakes, requests, small
//! messages), and [`RING_BUFFERS`] of the relay buffer size for bulk. A socket's multishot
//! receive takes one when data arrives, so an idle tunnel holds none; the relay then writes that
//! very buffer to the other socket, and dropping it gives it back to its ring. The kernel takes
//! buffers in ring order, so every buffer of a ring gets touched in turn: small messages in big
//! buffers would make a page of each resident. When a ring runs dry, receives stop (the data
//! waits in the socket, under TCP's flow control) until a buffer comes back: backpressure, never
//! loss. Both regions are registered with the ring as fixed buffers on the first write from
//! them, so writes need no page pinning per operation; that pins the regions
//! (`RLIMIT_MEMLOCK`), and where registration is refused, writes are plain sends.

use std::{
    cell::{Cell, RefCell},
    io,
    ptr::NonNull,
    rc::{Rc, Weak},
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::types::BufRingEntry;

use super::{stream::RecvState, submission::Submission};
use crate::{
    pool::{HeapBuffer, HeapPool},
    BufferPool, IoBuffer,
};

/// Bulk buffers in each worker's provided ring (a power of two): enough for the chunks in
/// flight on a busy worker's tunnels, each stream holding at most
/// [`super::stream::READ_AHEAD`] ahead.
pub const RING_BUFFERS: u16 = 128;

/// Small buffers in each worker's other ring (a power of two), and their size: one page each,
/// 256 KiB in all when every one has been used.
pub(super) const SMALL_BUFFERS: u16 = 64;
pub(super) const SMALL_SIZE: usize = 4096;

/// The buffer groups receives draw from; also their fixed-buffer index once registered.
pub(super) const SMALL_GROUP: u16 = 0;
pub(super) const BULK_GROUP: u16 = 1;

/// One worker's provided buffer ring and the region behind it.
pub(super) struct ProvidedBuffers {
    region: NonNull<u8>,
    region_len: usize,
    size: usize,
    entries: NonNull<BufRingEntry>,
    entries_len: usize,
    count: u16,
    /// The ring's tail as this side last published it.
    tail: Cell<u16>,
    /// Buffers the kernel may fill now.
    available: Cell<usize>,
    /// Streams whose receive stopped for want of a buffer, woken when one comes back.
    starved: RefCell<Vec<Weak<RecvState>>>,
    group: u16,
}

impl ProvidedBuffers {
    /// Maps `count` buffers (a power of two) of `size` bytes and registers them as `group`.
    pub(super) fn new(
        size: usize,
        count: u16,
        group: u16,
        submission: &Submission,
    ) -> io::Result<Rc<Self>> {
        let size = size.max(1);
        let region_len = size * usize::from(count);
        let entries_len = (std::mem::size_of::<BufRingEntry>() * usize::from(count)).max(page());
        let region = map(region_len)?;
        let entries = match map(entries_len) {
            Ok(entries) => entries,
            Err(error) => {
                unmap(region, region_len);
                return Err(error);
            }
        };
        let buffers = Rc::new(Self {
            region,
            region_len,
            size,
            entries: entries.cast(),
            entries_len,
            count,
            tail: Cell::new(0),
            available: Cell::new(0),
            starved: RefCell::new(Vec::new()),
            group,
        });
        // Safety: the entries stay mapped until `buffers` is dropped, which happens only after
        // the ring is closed (the worker closes its ring first).
        submission.with_submitter(|submitter| unsafe {
            submitter.register_buf_ring(buffers.entries.as_ptr() as u64, count, group)
        })?;
        for bid in 0..count {
            buffers.give_back(bid);
        }
        Ok(buffers)
    }

    /// Buffers the kernel may fill now.
    pub(super) fn available(&self) -> usize {
        self.available.get()
    }

    /// Takes the buffer a receive filled (`bid`, with `len` bytes).
    pub(super) fn claim(self: &Rc<Self>, bid: u16, len: u32) -> Provided {
        self.available.set(self.available.get().saturating_sub(1));
        Provided {
            buffers: Rc::clone(self),
            bid,
            start: 0,
            len,
        }
    }

    /// Puts buffer `bid` back on the ring, and wakes the streams waiting for one.
    fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (self.count - 1));
        // Safety: `index` is within the mapped entries; only this thread writes them, and the
        // kernel reads an entry only after the tail below covers it.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(self.address(bid) as u64);
        entry.set_len(u32::try_from(self.size).unwrap_or(u32::MAX));
        entry.set_bid(bid);
        let next = tail.wrapping_add(1);
        self.tail.set(next);
        // Safety: the tail field lies in the first entry, mapped and aligned for a u16; the
        // kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(next, Ordering::Release);
        }
        self.available.set(self.available.get() + 1);
        if !self.starved.borrow().is_empty() {
            let starved = std::mem::take(&mut *self.starved.borrow_mut());
            for stream in starved.iter().filter_map(Weak::upgrade) {
                stream.buffer_returned();
            }
        }
    }

    /// Remembers a stream whose receive waits for a buffer.
    pub(super) fn wait_for_buffer(&self, stream: Weak<RecvState>) {
        self.starved.borrow_mut().push(stream);
    }

    fn address(&self, bid: u16) -> *mut u8 {
        // Safety: `bid` < count, so the offset stays within the region.
        unsafe { self.region.as_ptr().add(usize::from(bid) * self.size) }
    }

    /// The region, for registration as a fixed buffer.
    pub(super) fn region(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.region.as_ptr().cast(),
            iov_len: self.region_len,
        }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        unmap(self.entries.cast(), self.entries_len);
        unmap(self.region, self.region_len);
    }
}

fn page() -> usize {
    // Safety: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// An anonymous private mapping: pages become resident only once touched.
fn map(len: usize) -> io::Result<NonNull<u8>> {
    // Safety: a fresh anonymous mapping aliases nothing.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(address.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

fn unmap(address: NonNull<u8>, len: usize) {
    // Safety: the mapping was made by `map` with this length and is no longer used.
    unsafe {
        libc::munmap(address.as_ptr().cast(), len);
    }
}

/// A provided buffer taken off the ring: it goes back when dropped.
pub struct Provided {
    buffers: Rc<ProvidedBuffers>,
    bid: u16,
    /// Bytes already consumed from the front.
    start: u32,
    /// Bytes held, from `start`.
    len: u32,
}

impl Provided {
    pub(super) fn filled_bytes(&self) -> &[u8] {
        // Safety: the buffer is ours until dropped (the kernel fills only buffers on the ring),
        // and `start + len` is within its size.
        unsafe {
            std::slice::from_raw_parts(
                self.buffers.address(self.bid).add(self.start as usize),
                self.len as usize,
            )
        }
    }

    /// Drops the first `n` bytes (copied out by a small read).
    pub(super) fn consume(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(self.len);
        self.start += n;
        self.len -= n;
    }

    /// The group (and fixed-buffer index) of the ring it came from.
    pub(super) fn group(&self) -> u16 {
        self.buffers.group
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        self.buffers.give_back(self.bid);
    }
}

/// A buffer of the io_uring backend.
pub enum UringBuffer {
    /// A buffer a receive filled, straight from the provided ring.
    Provided(Provided),
    /// A heap buffer of the worker's pool, for bulk chunks read with plain calls (see
    /// `stream`).
    Heap(HeapBuffer),
}

impl IoBuffer for UringBuffer {
    fn filled(&self) -> &[u8] {
        match self {
            Self::Provided(provided) => provided.filled_bytes(),
            Self::Heap(heap) => heap.filled(),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Self::Provided(provided) => provided.buffers.size,
            Self::Heap(heap) => heap.capacity(),
        }
    }

    fn fill_from(&mut self, source: &[u8]) -> usize {
        match self {
            Self::Provided(provided) => {
                let n = source.len().min(provided.buffers.size);
                // Safety: the buffer is ours and `n` is within its size; `source` is a distinct
                // slice (it cannot borrow this buffer mutably borrowed here).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        source.as_ptr(),
                        provided.buffers.address(provided.bid),
                        n,
                    );
                }
                provided.start = 0;
                provided.len = n as u32;
                n
            }
            Self::Heap(heap) => heap.fill_from(source),
        }
    }
}

/// A worker's pool of heap buffers, bounded like the portable backend's. Receives come in
/// provided buffers; the relay takes a buffer from here only for a bulk chunk it has no pipe
/// for.
pub struct UringPool {
    heap: HeapPool,
}

impl UringPool {
    pub(super) fn new(buffer_size: usize, max_buffers: usize) -> Self {
        Self {
            heap: HeapPool::new(buffer_size, max_buffers),
        }
    }
}

impl BufferPool for UringPool {
    type Buffer = UringBuffer;

    async fn take(&self) -> UringBuffer {
        UringBuffer::Heap(self.heap.take().await)
    }

    fn allocated(&self) -> usize {
        self.heap.allocated()
    }
}
