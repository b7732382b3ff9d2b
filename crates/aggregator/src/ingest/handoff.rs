//! DTOs the ingest path has just stored, handed to the loader in memory so the common path
//! never reads a file back. Bounded: past its capacity the loader finds the overflow in the
//! store instead; either way the file stays until the data is committed.

use pollux_model::Dto;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// DTOs held at most.
pub const HANDOFF_CAPACITY: usize = 64;

/// Value cells (records x metric columns, 16 bytes each) the handoff holds at most: about
/// 128 MiB of decoded values whatever the DTOs look like. Past it the loader reads the store.
const HANDOFF_CELLS: usize = 8 << 20;

fn cells(dto: &Dto) -> usize {
    dto.records.len() * dto.metrics.len()
}

#[derive(Debug)]
pub struct Handoff {
    queue: Mutex<VecDeque<Dto>>,
    capacity: usize,
    /// Set when a DTO did not fit: the loader must then read the store too.
    overflowed: AtomicBool,
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff::new(HANDOFF_CAPACITY)
    }
}

impl Handoff {
    pub fn new(capacity: usize) -> Handoff {
        Handoff { queue: Mutex::new(VecDeque::new()), capacity, overflowed: AtomicBool::new(false) }
    }

    /// Offers a DTO that is already durable in the store.
    pub fn offer(&self, dto: Dto) {
        let mut queue = self.queue.lock().expect("handoff");
        let held: usize = queue.iter().map(cells).sum();
        if queue.len() < self.capacity && held + cells(&dto) <= HANDOFF_CELLS {
            queue.push_back(dto);
        } else {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    /// Takes DTOs up to about `max_values` values.
    pub fn take(&self, max_values: usize) -> Vec<Dto> {
        let mut queue = self.queue.lock().expect("handoff");
        let mut taken = Vec::new();
        let mut values = 0;
        while values < max_values {
            let Some(dto) = queue.pop_front() else { break };
            values += dto.value_count();
            taken.push(dto);
        }
        taken
    }

    /// Whether a DTO overflowed since the last call.
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::AcqRel)
    }

    pub fn clear(&self) {
        self.queue.lock().expect("handoff").clear();
    }
}
