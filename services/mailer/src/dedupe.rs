//! Event ids this process already handed to SMTP: a redelivered event (after
//! a lost ack or a reconnect) is acked without a second mail. Bounded, oldest
//! forgotten first.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;

/// A bounded set of recently sent event ids.
pub struct Sent {
    inner: Mutex<(HashSet<Uuid>, VecDeque<Uuid>)>,
    capacity: usize,
}

impl Sent {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` was sent by this process.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.inner.lock().map(|g| g.0.contains(id)).unwrap_or(false)
    }

    /// Records `id` as sent.
    pub fn insert(&self, id: Uuid) {
        if let Ok(mut g) = self.inner.lock()
            && g.0.insert(id)
        {
            g.1.push_back(id);
            if g.1.len() > self.capacity
                && let Some(old) = g.1.pop_front()
            {
                g.0.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_most_recent_ids() {
        let s = Sent::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        s.insert(a);
        s.insert(b);
        s.insert(b);
        assert!(s.contains(&a) && s.contains(&b));
        s.insert(c);
        assert!(!s.contains(&a) && s.contains(&b) && s.contains(&c));
    }
}
