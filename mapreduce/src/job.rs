//! The job API: map, reduce, an optional combiner and partitioner.

/// Receives the pairs a map, combine or reduce call emits.
pub type Emit<'a> = dyn FnMut(&[u8], &[u8]) + 'a;

/// The values of one intermediate key, streamed from the merged runs.
pub type Values<'a> = dyn Iterator<Item = Vec<u8>> + 'a;

/// A MapReduce job. Every member of a cluster runs the same binary, so jobs
/// are registered by name on every node and looked up when a task arrives.
pub trait Job: Send + Sync {
    /// Maps one input pair to intermediate pairs.
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>);

    /// Reduces one intermediate key's values (in no particular order) to
    /// output pairs; an output key is stored under the job's output prefix.
    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>);

    /// Whether [`combine`](Self::combine) should run on each map task's
    /// sorted output before it is written. Default false.
    fn has_combiner(&self) -> bool {
        false
    }

    /// Folds one key's values within a map task into fewer values (emit
    /// pairs with the same key). Only called when
    /// [`has_combiner`](Self::has_combiner) is true.
    fn combine(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        for value in values {
            emit(key, &value);
        }
    }

    /// The reduce partition of an intermediate key, in `0..partitions`.
    /// Default: FNV-1a of the key.
    fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        (fnv1a(key) % u64::from(partitions.max(1))) as u32
    }
}

/// 64-bit FNV-1a: stable across builds and machines, so every worker
/// partitions alike.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
