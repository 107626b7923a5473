//! Text kept for the life of the process, one copy per distinct value, so
//! that the values made over it clone without a reference count.
//!
//! A value every request clones (a service's `Host` header, an endpoint's
//! authority) shared by reference count is a count every core writes,
//! twice a request, which on a busy multi-core client costs more than an
//! allocation and a copy per request (`benches/contention.rs`). A value
//! over `'static` bytes has neither: cloning it copies a pointer. Each
//! table keeps a bounded number of texts for the life of the process,
//! first come first kept; past its bound, values are made over bytes of
//! their own.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// A bounded table of `'static` texts.
pub(crate) struct StaticTexts {
    limit: usize,
    texts: OnceLock<Mutex<HashSet<&'static str>>>,
    /// Whether the table was found full (said once, in the log).
    full: AtomicBool,
}

impl StaticTexts {
    /// A table that keeps at most `limit` texts.
    pub(crate) const fn new(limit: usize) -> Self {
        StaticTexts {
            limit,
            texts: OnceLock::new(),
            full: AtomicBool::new(false),
        }
    }

    /// `text`'s `'static` copy, if one was kept before; never adds one
    /// (for text from less trusted places than where [`StaticTexts::get`]
    /// is called).
    pub(crate) fn find(&self, text: &str) -> Option<&'static str> {
        let texts = self.texts.get()?;
        let texts = texts.lock().unwrap_or_else(|p| p.into_inner());
        texts.get(text).copied()
    }

    /// `text`'s `'static` copy: the one kept before, else a new one while
    /// the table has room.
    pub(crate) fn get(&self, text: &str) -> Option<&'static str> {
        let texts = self.texts.get_or_init(Mutex::default);
        // A poisoned lock guards a set that is only ever added to, whole.
        let mut texts = texts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = texts.get(text) {
            return Some(kept);
        }
        if texts.len() >= self.limit {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::debug!(
                    limit = self.limit,
                    "static text table full: later values get bytes of their own"
                );
            }
            return None;
        }
        let kept: &'static str = Box::leak(Box::from(text));
        texts.insert(kept);
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_text_and_none_past_the_limit() {
        let table = StaticTexts::new(2);
        let a = table.get("a").unwrap();
        assert_eq!(a, "a");
        assert_eq!(table.get("a").unwrap().as_ptr(), a.as_ptr(), "one copy");
        assert_eq!(table.get("b"), Some("b"));
        assert_eq!(table.get("c"), None, "past the limit");
        assert_eq!(table.get("a").unwrap().as_ptr(), a.as_ptr(), "still kept");
        assert_eq!(table.find("a").unwrap().as_ptr(), a.as_ptr());
        assert_eq!(table.find("d"), None, "finding adds nothing");
        assert_eq!(StaticTexts::new(1).find("a"), None, "an empty table");
    }
}
