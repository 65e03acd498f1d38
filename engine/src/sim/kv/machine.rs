//! The key/value nodes' state machine in the client scenarios: the node's
//! own [`KvApplier`] over memory, optionally broken on purpose to show
//! that the scenario's checks catch the bug.

use flotilla_wal::{Entry, EntryPayload, Index};

use crate::group::StateMachine;
use crate::kv::{command, Command, CommandError, SessionLimits, WriteReply};
use crate::sim::node::{kv_loader, KvMachineOverMemory, MachineLoader, SimMachine};

/// The machine a client scenario's nodes run.
pub struct KvSimMachine {
    inner: KvMachineOverMemory,
    /// Broken on purpose: commands are applied as if they had no session,
    /// so a retried write is applied again.
    forget_sessions: bool,
}

impl KvSimMachine {
    /// The loader for nodes with `limits`; `forget_sessions` breaks
    /// exactly-once on purpose.
    pub fn loader(limits: SessionLimits, forget_sessions: bool) -> MachineLoader<KvSimMachine> {
        let load = kv_loader(limits);
        std::rc::Rc::new(move |image, meta| {
            Ok(KvSimMachine {
                inner: load(image, meta)?,
                forget_sessions,
            })
        })
    }

    /// The node's key/value machine.
    pub fn inner(&self) -> &KvMachineOverMemory {
        &self.inner
    }
}

/// A write's command without its session (client 0, which the machine
/// never deduplicates); an open-session command stays as it is.
fn without_session(entry: &Entry) -> Entry {
    let EntryPayload::Normal(bytes) = &entry.payload else {
        return entry.clone();
    };
    let Ok(mut decoded) = command::decode::<Command>(bytes) else {
        return entry.clone();
    };
    if matches!(decoded.op, crate::kv::WriteOp::OpenSession) {
        return entry.clone();
    }
    decoded.client = 0;
    decoded.seq = 0;
    Entry {
        payload: EntryPayload::Normal(command::encode(&decoded)),
        ..entry.clone()
    }
}

impl StateMachine for KvSimMachine {
    type Reply = Result<WriteReply, CommandError>;

    fn applied_index(&self) -> Index {
        self.inner.applied_index()
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(Index, Self::Reply)>, String> {
        if self.forget_sessions {
            let stripped: Vec<Entry> = entries.iter().map(without_session).collect();
            return self.inner.apply(&stripped);
        }
        self.inner.apply(entries)
    }

    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.inner.read(key)
    }
}

impl SimMachine for KvSimMachine {
    fn image(&self) -> Result<Vec<u8>, String> {
        self.inner.image()
    }
}
