use crate::{Chunk, SnapshotError, SnapshotMeta, SnapshotStore};

/// An in-memory [`SnapshotStore`] for the simulator. "Durable" means held by
/// this value: the simulator keeps it across simulated crashes.
#[derive(Clone, Debug, Default)]
pub struct MemSnapshotStore {
    current: Option<(SnapshotMeta, Vec<u8>)>,
    staged: Option<(SnapshotMeta, Vec<u8>)>,
}

impl MemSnapshotStore {
    /// Saves a snapshot the local application made; it becomes current.
    pub fn save(&mut self, meta: SnapshotMeta, image: Vec<u8>) {
        self.current = Some((meta, image));
    }

    /// The current snapshot's image.
    pub fn image(&self) -> Option<&[u8]> {
        self.current.as_ref().map(|(_, image)| image.as_slice())
    }
}

impl SnapshotStore for MemSnapshotStore {
    fn current(&self) -> Option<SnapshotMeta> {
        self.current.as_ref().map(|(meta, _)| meta.clone())
    }

    fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Chunk, SnapshotError> {
        let unavailable = || SnapshotError::Unavailable {
            index: meta.index,
            term: meta.term,
        };
        let (current, image) = self.current.as_ref().ok_or_else(unavailable)?;
        if current != meta {
            return Err(unavailable());
        }
        let start = (offset as usize).min(image.len());
        let end = start.saturating_add(max_bytes as usize).min(image.len());
        Ok(Chunk {
            data: image[start..end].to_vec(),
            done: end == image.len(),
        })
    }

    fn stage_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError> {
        let continues = self
            .staged
            .as_ref()
            .is_some_and(|(staged, _)| staged == meta);
        if offset == 0 || !continues {
            if offset != 0 {
                return Err(SnapshotError::OutOfOrder { offset, staged: 0 });
            }
            self.staged = Some((meta.clone(), Vec::new()));
        }
        if let Some((_, bytes)) = self.staged.as_mut() {
            if bytes.len() as u64 != offset {
                return Err(SnapshotError::OutOfOrder {
                    offset,
                    staged: bytes.len() as u64,
                });
            }
            bytes.extend_from_slice(data);
        }
        Ok(())
    }

    fn staged(&self) -> Option<(SnapshotMeta, u64)> {
        self.staged
            .as_ref()
            .map(|(meta, bytes)| (meta.clone(), bytes.len() as u64))
    }

    fn install_staged(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        match self.staged.take() {
            Some((staged, image)) if staged == *meta => {
                self.current = Some((staged, image));
                Ok(())
            }
            other => {
                self.staged = other;
                Err(SnapshotError::NotStaged { index: meta.index })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MemHarness;

    impl crate::conformance::Harness for MemHarness {
        type Store = MemSnapshotStore;

        fn fresh(&self) -> (MemSnapshotStore, Vec<u8>) {
            let mut store = MemSnapshotStore::default();
            let image: Vec<u8> = (0..=250u8).collect();
            store.save(crate::conformance::sample_snapshot(), image.clone());
            (store, image)
        }

        fn image(&self, meta: &SnapshotMeta, variant: u8) -> Vec<u8> {
            vec![variant ^ meta.index as u8; 9]
        }
    }

    #[test]
    fn passes_the_conformance_suite() {
        crate::conformance::run_all(&MemHarness);
    }
}
