use serde::{Deserialize, Serialize};

use crate::{Index, Membership, Term};

/// Identifies a snapshot and the configuration it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last log index the snapshot covers.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// Membership as of `index`.
    pub membership: Membership,
}
