//! Which key each operation of a benchmark touches, and how operations are
//! shared among clients. `flotilla bench` and `benches/etcd-driver` (a
//! separate workspace, which includes this file by path) both use it, so
//! flotilla and etcd are measured on the same keys.

/// The key for index `i`: big-endian, zero-padded to `bytes` (at least 1).
pub(crate) fn key(i: u64, bytes: usize) -> Vec<u8> {
    let mut key = vec![0u8; bytes.max(8)];
    let at = key.len() - 8;
    key[at..].copy_from_slice(&i.to_be_bytes());
    key.truncate(bytes.max(1));
    key
}

/// The key a put workload writes: every client its own range.
pub(crate) fn put_index(client: usize, op: u64, stride: u64) -> u64 {
    client as u64 * stride + op
}

/// How many keys a get workload of `ops` operations loads first and then reads.
pub(crate) fn loaded_keys(ops: usize) -> u64 {
    (ops as u64).clamp(1, 100_000)
}

/// The key a get workload's loading step writes.
pub(crate) fn load_index(client: usize, op: u64, clients: usize) -> u64 {
    op * clients.max(1) as u64 + client as u64
}

/// The key a get workload reads: spread over the loaded keys.
pub(crate) fn get_index(client: usize, op: u64, loaded: u64) -> u64 {
    (client as u64 * 7919 + op * 104_729) % loaded
}

/// Client `client`'s share of `ops` operations over `clients` clients.
pub(crate) fn per_client(ops: usize, clients: usize, client: usize) -> usize {
    ops / clients + usize::from(client < ops % clients)
}
