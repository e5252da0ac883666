//! A heap-backed buffer pool for backends that read into ordinary memory.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
};

use tokio::sync::Notify;

use crate::{BufferPool, IoBuffer};

/// How many free buffers a pool keeps for reuse; the rest go back to the allocator, so a burst
/// does not pin its peak memory for ever.
const KEEP_FREE: usize = 16;

struct PoolInner {
    buffer_size: usize,
    max_buffers: usize,
    free: RefCell<Vec<Box<[u8]>>>,
    allocated: Cell<usize>,
    released: Notify,
}

/// A bounded pool of heap buffers, owned by one worker.
#[derive(Clone)]
pub struct HeapPool {
    inner: Rc<PoolInner>,
}

impl HeapPool {
    /// Creates an empty pool; buffers are allocated lazily, up to `max_buffers`.
    pub fn new(buffer_size: usize, max_buffers: usize) -> Self {
        Self {
            inner: Rc::new(PoolInner {
                buffer_size: buffer_size.max(1),
                max_buffers: max_buffers.max(1),
                free: RefCell::new(Vec::new()),
                allocated: Cell::new(0),
                released: Notify::new(),
            }),
        }
    }

    fn try_take(&self) -> Option<HeapBuffer> {
        let inner = &self.inner;
        let data = match inner.free.borrow_mut().pop() {
            Some(data) => data,
            None if inner.allocated.get() < inner.max_buffers => {
                inner.allocated.set(inner.allocated.get() + 1);
                vec![0u8; inner.buffer_size].into_boxed_slice()
            }
            None => return None,
        };
        Some(HeapBuffer {
            data: Some(data),
            len: 0,
            pool: Some(Rc::clone(inner)),
        })
    }
}

impl BufferPool for HeapPool {
    type Buffer = HeapBuffer;

    async fn take(&self) -> HeapBuffer {
        loop {
            // Register interest before checking, so a release between the check and the await
            // is not lost.
            let released = self.inner.released.notified();
            if let Some(buffer) = self.try_take() {
                return buffer;
            }
            released.await;
        }
    }

    fn allocated(&self) -> usize {
        self.inner.allocated.get()
    }
}

/// A buffer from a [`HeapPool`]; it returns to its pool when dropped.
pub struct HeapBuffer {
    data: Option<Box<[u8]>>,
    len: usize,
    pool: Option<Rc<PoolInner>>,
}

impl HeapBuffer {
    /// A zeroed buffer of `capacity` bytes that belongs to no pool: freed when dropped.
    pub(crate) fn detached(capacity: usize) -> Self {
        Self {
            data: Some(vec![0u8; capacity].into_boxed_slice()),
            len: 0,
            pool: None,
        }
    }

    /// The whole buffer, for a read to fill; call [`HeapBuffer::set_len`] afterwards.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.data
            .as_deref_mut()
            .expect("buffer data present until drop")
    }

    /// Records that the first `len` bytes are filled.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "filled length beyond capacity");
        self.len = len;
    }
}

impl IoBuffer for HeapBuffer {
    fn filled(&self) -> &[u8] {
        &self
            .data
            .as_deref()
            .expect("buffer data present until drop")[..self.len]
    }

    fn capacity(&self) -> usize {
        self.data.as_deref().map_or(0, <[u8]>::len)
    }

    fn fill_from(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.capacity());
        self.spare_mut()[..n].copy_from_slice(&bytes[..n]);
        self.len = n;
        n
    }
}

impl Drop for HeapBuffer {
    fn drop(&mut self) {
        let (Some(pool), Some(data)) = (self.pool.take(), self.data.take()) else {
            return;
        };
        let mut free = pool.free.borrow_mut();
        if free.len() < KEEP_FREE {
            free.push(data);
        } else {
            drop(data);
            pool.allocated.set(pool.allocated.get() - 1);
        }
        drop(free);
        pool.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_to_the_pool_and_the_cap_holds() {
        let pool = HeapPool::new(8, 2);
        let a = pool.try_take().unwrap();
        let b = pool.try_take().unwrap();
        assert!(pool.try_take().is_none(), "cap of 2 must hold");
        drop(a);
        let c = pool.try_take().expect("a released buffer is reused");
        assert_eq!(pool.allocated(), 2);
        drop((b, c));
    }

    #[test]
    fn fill_from_copies_a_prefix() {
        let pool = HeapPool::new(4, 1);
        let mut buffer = pool.try_take().unwrap();
        assert_eq!(buffer.fill_from(b"abcdef"), 4);
        assert_eq!(buffer.filled(), b"abcd");
    }

    #[test]
    fn a_waiting_take_wakes_when_a_buffer_is_released() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool = HeapPool::new(4, 1);
            let held = pool.take().await;
            let waiter = pool.clone();
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let task = tokio::task::spawn_local(async move { waiter.take().await });
                    tokio::task::yield_now().await;
                    drop(held);
                    let buffer = task.await.unwrap();
                    assert_eq!(buffer.capacity(), 4);
                })
                .await;
        });
    }
}
