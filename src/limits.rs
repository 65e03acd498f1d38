//! How large a write may be, checked where a write enters: the `Db` API for
//! its caller, and a cluster member for its remote clients (whose own
//! process checked nothing the member can rely on).

use flotilla_engine::kv::{BatchOp, WriteOp};

use crate::error::{Error, Result};

/// The key and value limits of a `Db` (`max_key_bytes`, `max_value_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteLimits {
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
}

impl WriteLimits {
    /// Refuses a key above `max_key_bytes`.
    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        within_limit("key", key.len(), self.max_key_bytes, "max_key_bytes")
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        within_limit(
            "value",
            value.len(),
            self.max_value_bytes,
            "max_value_bytes",
        )
    }

    /// Refuses a write with a key or value over the limits; a batch's keys
    /// and values together may be as large as one value.
    pub(crate) fn check(&self, op: &WriteOp) -> Result<()> {
        for key in op.keys() {
            self.check_key(key)?;
        }
        match op {
            WriteOp::Put { value, .. } | WriteOp::Append { value, .. } => self.check_value(value),
            WriteOp::CompareAndSwap { expected, new, .. } => {
                for value in [expected, new].into_iter().flatten() {
                    self.check_value(value)?;
                }
                Ok(())
            }
            WriteOp::Batch { ops } => {
                let bytes: usize = ops
                    .iter()
                    .map(|op| match op {
                        BatchOp::Put { key, value } => key.len() + value.len(),
                        BatchOp::Delete { key } => key.len(),
                    })
                    .sum();
                within_limit(
                    "batch",
                    bytes,
                    self.max_value_bytes,
                    "max_value_bytes; split the batch",
                )
            }
            WriteOp::Delete { .. } | WriteOp::OpenSession => Ok(()),
        }
    }
}

/// Refuses `len` bytes of `what` beyond `max`, naming the `setting`.
fn within_limit(what: &str, len: usize, max: usize, setting: &str) -> Result<()> {
    if len > max {
        return Err(Error::InvalidArgument(format!(
            "{what} of {len} bytes is over the {max}-byte limit ({setting})"
        )));
    }
    Ok(())
}
