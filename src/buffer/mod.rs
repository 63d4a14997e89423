//! The frame buffer: a ring of sequence-numbered slots between the pipeline and the display.
//!
//! The pipeline registers a pair's sequence numbers before it starts the work (so the order is
//! fixed up front), then fills each slot with its encoded frame or marks it failed. The display
//! takes slots from the front. Every operation is O(1) on the ring; displayed frames leave it,
//! so memory is bounded by the frames ahead of the display (at most the target plus one pair,
//! since generation pauses when the buffer is full). Frames on disk are [`archive`]'s job.

pub mod archive;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::frame::EncodedFrame;

/// One sequence number's state.
#[derive(Debug, Clone)]
pub enum Slot {
    /// Registered; its work is still running.
    Pending,
    /// Encoded and ready to show.
    Ready(Arc<EncodedFrame>),
    /// Its work failed or ran out of time; the display skips it.
    Failed,
}

/// What the display finds at the front of the buffer.
#[derive(Debug, Clone)]
pub enum Front {
    /// Nothing registered ahead of the display.
    Empty,
    Pending(u64),
    Failed(u64),
    Ready(Arc<EncodedFrame>),
}

/// Registration must continue the sequence without gaps.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("sequence {got} registered out of order (next is {expected})")]
pub struct OutOfOrder {
    pub expected: u64,
    pub got: u64,
}

/// Counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferCounts {
    /// Ready frames ahead of the display.
    pub ready: usize,
    /// Registered slots ahead of the display, in any state.
    pub registered: usize,
    /// Sequence number of the front slot (the next one the display will look at).
    pub front_seq: u64,
}

struct Ring {
    front_seq: u64,
    slots: VecDeque<Slot>,
    ready: usize,
}

/// The shared frame buffer.
pub struct FrameBuffer {
    ring: Mutex<Ring>,
    space: Notify,
}

impl FrameBuffer {
    /// An empty buffer whose first slot will be `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Self {
            ring: Mutex::new(Ring {
                front_seq: first_seq,
                slots: VecDeque::new(),
                ready: 0,
            }),
            space: Notify::new(),
        }
    }

    /// Registers `count` pending slots starting at `first_seq`, which must be the next number.
    pub fn register(&self, first_seq: u64, count: usize) -> Result<(), OutOfOrder> {
        let mut ring = self.ring.lock();
        let expected = ring.front_seq + ring.slots.len() as u64;
        if first_seq != expected {
            return Err(OutOfOrder {
                expected,
                got: first_seq,
            });
        }
        ring.slots.extend(std::iter::repeat_n(Slot::Pending, count));
        Ok(())
    }

    /// Fills a pending slot. Returns false when the slot is gone (displayed or skipped) or no
    /// longer pending (it timed out), in which case the frame is dropped.
    pub fn fulfil(&self, frame: Arc<EncodedFrame>) -> bool {
        let mut ring = self.ring.lock();
        let Some(index) = ring.index_of(frame.seq) else {
            return false;
        };
        if !matches!(ring.slots[index], Slot::Pending) {
            return false;
        }
        ring.slots[index] = Slot::Ready(frame);
        ring.ready += 1;
        true
    }

    /// Marks a slot failed if it is still pending. Returns whether it did.
    pub fn fail(&self, seq: u64) -> bool {
        let mut ring = self.ring.lock();
        match ring.index_of(seq) {
            Some(index) if matches!(ring.slots[index], Slot::Pending) => {
                ring.slots[index] = Slot::Failed;
                true
            }
            _ => false,
        }
    }

    /// Marks every slot of `seqs` failed that is still pending (a pair that failed, was
    /// abandoned, or ended with frames missing).
    pub fn fail_range(&self, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            self.fail(seq);
        }
    }

    /// What is at the front.
    pub fn front(&self) -> Front {
        let ring = self.ring.lock();
        match ring.slots.front() {
            None => Front::Empty,
            Some(Slot::Pending) => Front::Pending(ring.front_seq),
            Some(Slot::Failed) => Front::Failed(ring.front_seq),
            Some(Slot::Ready(frame)) => Front::Ready(Arc::clone(frame)),
        }
    }

    /// Removes the front slot (shown or skipped) and wakes a producer waiting for space.
    pub fn pop_front(&self) -> Option<(u64, Slot)> {
        let popped = {
            let mut ring = self.ring.lock();
            let slot = ring.slots.pop_front()?;
            let seq = ring.front_seq;
            ring.front_seq += 1;
            if matches!(slot, Slot::Ready(_)) {
                ring.ready -= 1;
            }
            (seq, slot)
        };
        self.space.notify_waiters();
        Some(popped)
    }

    /// The state of one slot, if it is still in the ring.
    pub fn slot(&self, seq: u64) -> Option<Slot> {
        let ring = self.ring.lock();
        ring.index_of(seq).map(|index| ring.slots[index].clone())
    }

    pub fn counts(&self) -> BufferCounts {
        let ring = self.ring.lock();
        BufferCounts {
            ready: ring.ready,
            registered: ring.slots.len(),
            front_seq: ring.front_seq,
        }
    }

    /// Waits until fewer than `limit` slots are registered ahead of the display, or `max_wait`
    /// passes. Returns whether there is room.
    pub async fn wait_for_room(&self, limit: usize, max_wait: Duration) -> bool {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.counts().registered < limit {
            return true;
        }
        let _ = tokio::time::timeout(max_wait, notified).await;
        self.counts().registered < limit
    }
}

impl Ring {
    fn index_of(&self, seq: u64) -> Option<usize> {
        let index = seq.checked_sub(self.front_seq)? as usize;
        (index < self.slots.len()).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Arc<EncodedFrame> {
        crate::frame::test_frame(seq)
    }

    #[test]
    fn frames_leave_in_sequence_order_whatever_order_they_finish() {
        let buffer = FrameBuffer::new(100);
        buffer.register(100, 3).unwrap();
        assert!(buffer.fulfil(frame(102)));
        assert!(matches!(buffer.front(), Front::Pending(100)));
        assert!(buffer.fulfil(frame(100)));
        assert!(buffer.fail(101));
        assert_eq!(buffer.counts().ready, 2);
        assert!(matches!(buffer.front(), Front::Ready(f) if f.seq == 100));
        buffer.pop_front();
        assert!(matches!(buffer.front(), Front::Failed(101)));
        buffer.pop_front();
        assert!(matches!(buffer.front(), Front::Ready(f) if f.seq == 102));
        buffer.pop_front();
        assert!(matches!(buffer.front(), Front::Empty));
        assert_eq!(
            buffer.counts(),
            BufferCounts {
                ready: 0,
                registered: 0,
                front_seq: 103
            }
        );
    }

    #[test]
    fn registration_must_be_contiguous() {
        let buffer = FrameBuffer::new(0);
        buffer.register(0, 2).unwrap();
        assert_eq!(
            buffer.register(5, 1),
            Err(OutOfOrder {
                expected: 2,
                got: 5
            })
        );
    }

    #[test]
    fn late_frames_for_gone_or_failed_slots_are_dropped() {
        let buffer = FrameBuffer::new(0);
        buffer.register(0, 2).unwrap();
        buffer.pop_front();
        assert!(!buffer.fulfil(frame(0)));
        assert!(buffer.fail(1));
        assert!(!buffer.fulfil(frame(1)));
        assert!(!buffer.fail(1));
        assert_eq!(buffer.counts().ready, 0);
    }

    #[tokio::test]
    async fn producer_waits_for_room_until_the_display_pops() {
        let buffer = Arc::new(FrameBuffer::new(0));
        buffer.register(0, 4).unwrap();
        assert!(!buffer.wait_for_room(4, Duration::from_millis(10)).await);
        let popper = {
            let buffer = Arc::clone(&buffer);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                buffer.pop_front();
            })
        };
        assert!(buffer.wait_for_room(4, Duration::from_secs(5)).await);
        popper.await.unwrap();
    }
}
