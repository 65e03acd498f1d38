//! What a job needs from the store it runs over.

/// One map task's input: a slice of the input range that one iterator of
/// the store reads at one consistent point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// The shard the slice lies in.
    pub shard: u16,
    /// First user key of the slice.
    pub start: Vec<u8>,
    /// End of the slice (exclusive; empty: no bound).
    pub end: Vec<u8>,
}

/// The store a job reads its input from and writes its output to.
pub trait Store: Send + Sync {
    /// Splits covering the user keys in `start..end` (empty `end`: no
    /// bound), each holding about `max_bytes` of keys and values at most
    /// (a single larger pair is a split of its own). Parts of the range
    /// that hold nothing need no split.
    fn splits(&self, start: &[u8], end: &[u8], max_bytes: u64) -> Result<Vec<Split>, String>;

    /// Calls `visit` on every pair of `split`, in key order.
    fn read_split(&self, split: &Split, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String>;

    /// True if no key starts with `prefix`.
    fn is_prefix_empty(&self, prefix: &[u8]) -> Result<bool, String>;

    /// Removes every key that starts with `prefix`.
    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), String>;

    /// Stores `pairs`. Storing the same pairs again changes nothing, which
    /// is what makes a repeated commit harmless.
    fn put_all(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), String>;
}
