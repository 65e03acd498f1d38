//! The files of a local cluster: `flotilla cluster init` writes them,
//! `flotilla serve` and the client commands read them.
//!
//! ```text
//! D/ca.der                      the cluster CA's certificate (its key is
//!                               not kept: no certificate can be added)
//! D/node<N>.der, node<N>.key.der node N's certificate and key
//! D/client.der, client.key.der  the client certificate (node id 0)
//! D/node<N>.toml                node N's config (serve --config)
//! D/cluster.toml                members' addresses, for clients
//! D/node<N>/                    node N's data
//! ```
//!
//! Keys are written readable by their owner only (0600), every file is
//! synced, and cluster.toml is written last.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use flotilla_net::ClusterCa;
use serde::{Deserialize, Serialize};

use crate::builder::{ClusterTls, DbBuilder};
use crate::error::{Error, Result};
use crate::Durability;

/// One member's config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: u64,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Data directory (relative paths are relative to the config file).
    pub data: PathBuf,
    /// CA certificate (DER).
    pub ca_cert: PathBuf,
    /// This node's certificate (DER).
    pub cert: PathBuf,
    /// This node's key (PKCS#8 DER).
    pub key: PathBuf,
    /// `sync` (default), `buffered` or `none`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// MiB of WAL file written at start-up so that synced writes overwrite
    /// rather than append (see `DbBuilder::wal_preallocation`). Default 0;
    /// `cluster init` writes 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_preallocation_mib: Option<u64>,
    /// Snapshot and compact the log past this many entries (default 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_entries: Option<u64>,
    /// Snapshot and compact the log past this many bytes (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_raft_state_bytes: Option<u64>,
    /// Client sessions kept for exactly-once writes (see
    /// `DbBuilder::max_sessions`; default 10,000). The same on every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
    /// How many shards keys hash to (see `DbBuilder::shards`): fixed when
    /// the cluster is created, the same on every member; `cluster init`
    /// writes it. Left out, a member opens its store with the store's own
    /// count (64 for a new store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u64>,
    /// The other members: node id → address.
    pub peers: BTreeMap<String, SocketAddr>,
}

/// What `cluster init` preallocates for each member: a member runs for long,
/// so one 64 MiB write at start-up is cheap beside the fsyncs it saves.
const CLUSTER_WAL_PREALLOCATION_MIB: u64 = 64;

fn default_durability() -> String {
    "sync".into()
}

/// What a client needs to reach the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Members: node id → address.
    pub nodes: BTreeMap<String, SocketAddr>,
    /// CA certificate (DER).
    pub ca_cert: PathBuf,
    /// Client certificate (DER, node id 0).
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

/// Writes a file others may read (a certificate, a config), synced.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_synced(path, bytes, 0o644)
}

/// Writes a private key: readable by its owner only, synced.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write_synced(path, bytes, 0o600)
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    // `mode` applies only to a file created now.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn free_port() -> Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| Error::Config(format!("cannot find a free UDP port: {e}")))?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Config(format!("cannot find a free UDP port: {e}")))
}

fn parse_ids(map: &BTreeMap<String, SocketAddr>, file: &Path) -> Result<BTreeMap<u64, SocketAddr>> {
    map.iter()
        .map(|(id, addr)| {
            id.parse::<u64>().map(|id| (id, *addr)).map_err(|_| {
                Error::Config(format!(
                    "{}: node id {id:?} is not a number",
                    file.display()
                ))
            })
        })
        .collect()
}

/// What `cluster init` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterInit {
    /// Members (1 or more).
    pub nodes: u64,
    /// Shards keys hash to (1 to 4,096; default 64).
    pub shards: u64,
}

impl ClusterInit {
    /// `nodes` members and the default shard count.
    pub fn new(nodes: u64) -> Self {
        ClusterInit {
            nodes,
            shards: u64::from(flotilla_shard::DEFAULT_SHARDS),
        }
    }
}

/// Writes a CA, certificates and configs for `nodes` members on loopback,
/// with the default shard count.
pub fn init_cluster(nodes: u64, dir: &Path) -> Result<()> {
    init_cluster_with(ClusterInit::new(nodes), dir)
}

/// Writes a CA, certificates and configs for the cluster `init` describes,
/// on loopback.
pub fn init_cluster_with(init: ClusterInit, dir: &Path) -> Result<()> {
    let ClusterInit { nodes, shards } = init;
    if nodes == 0 {
        return Err(Error::Config("a cluster needs at least one node".into()));
    }
    flotilla_shard::ShardPolicy::new(shards).map_err(|e| Error::Config(e.to_string()))?;
    if dir.join("cluster.toml").exists() {
        return Err(Error::Config(format!(
            "{} already holds a cluster; choose an empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    let tls = |e: flotilla_net::NetError| Error::Config(e.to_string());
    let ca = ClusterCa::generate("local").map_err(tls)?;
    write(&dir.join("ca.der"), &ca.cert())?;
    let addrs: BTreeMap<u64, SocketAddr> = (1..=nodes)
        .map(|id| Ok((id, SocketAddr::from(([127, 0, 0, 1], free_port()?)))))
        .collect::<Result<_>>()?;
    for (&id, &listen) in &addrs {
        let identity = ca.issue(id).map_err(tls)?;
        let cert = identity
            .certs
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        write(&dir.join(format!("node{id}.der")), &cert)?;
        write_secret(&dir.join(format!("node{id}.key.der")), &identity.key)?;
        let config = NodeConfig {
            node_id: id,
            listen,
            data: PathBuf::from(format!("node{id}")),
            ca_cert: "ca.der".into(),
            cert: format!("node{id}.der").into(),
            key: format!("node{id}.key.der").into(),
            durability: default_durability(),
            wal_preallocation_mib: Some(CLUSTER_WAL_PREALLOCATION_MIB),
            max_log_entries: None,
            max_raft_state_bytes: None,
            max_sessions: None,
            shards: Some(shards),
            peers: addrs
                .iter()
                .filter(|(&peer, _)| peer != id)
                .map(|(peer, addr)| (peer.to_string(), *addr))
                .collect(),
        };
        let text = toml::to_string(&config).map_err(|e| Error::Config(e.to_string()))?;
        write(&dir.join(format!("node{id}.toml")), text.as_bytes())?;
    }
    let client = ca.issue(0).map_err(tls)?;
    let cert = client.certs.first().map(|c| c.to_vec()).unwrap_or_default();
    write(&dir.join("client.der"), &cert)?;
    write_secret(&dir.join("client.key.der"), &client.key)?;
    let config = ClientConfig {
        nodes: addrs.iter().map(|(id, a)| (id.to_string(), *a)).collect(),
        ca_cert: "ca.der".into(),
        cert: "client.der".into(),
        key: "client.key.der".into(),
    };
    let text = toml::to_string(&config).map_err(|e| Error::Config(e.to_string()))?;
    // Written last: its presence marks a complete cluster directory.
    write(&dir.join("cluster.toml"), text.as_bytes())?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Config(format!("cannot sync {}: {e}", dir.display())))
}

/// Reads a member's config file into a builder, checking everything it names.
pub fn load_node(file: &Path) -> Result<DbBuilder> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", file.display())))?;
    let config: NodeConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let durability = match config.durability.as_str() {
        "sync" => Durability::Sync,
        "buffered" => Durability::Buffered {
            max_delay: std::time::Duration::from_millis(10),
        },
        "none" => Durability::None,
        other => {
            return Err(Error::Config(format!(
                "{}: durability {other:?} is not one of sync, buffered, none",
                file.display()
            )))
        }
    };
    let tls = ClusterTls {
        ca_cert: read(&base.join(&config.ca_cert))?,
        cert: read(&base.join(&config.cert))?,
        key: read(&base.join(&config.key))?,
    };
    tls.check(config.node_id).map_err(|e| {
        Error::Config(format!(
            "{}: certificate {} and key {} (CA {}) cannot serve as node {}: {e}",
            file.display(),
            base.join(&config.cert).display(),
            base.join(&config.key).display(),
            base.join(&config.ca_cert).display(),
            config.node_id
        ))
    })?;
    let mut compaction = crate::CompactionPolicy::default();
    if let Some(entries) = config.max_log_entries {
        compaction.max_log_entries = entries;
    }
    if let Some(bytes) = config.max_raft_state_bytes {
        compaction.max_raft_state_bytes = bytes;
    }
    let preallocation_mib = config.wal_preallocation_mib.unwrap_or(0);
    let wal_preallocation = preallocation_mib
        .checked_mul(1 << 20)
        .filter(|&bytes| bytes <= crate::MAX_WAL_PREALLOCATION)
        .ok_or_else(|| {
            Error::Config(format!(
                "{}: wal_preallocation_mib {preallocation_mib} is above the limit of {} MiB",
                file.display(),
                crate::MAX_WAL_PREALLOCATION >> 20
            ))
        })?;
    let mut builder = DbBuilder::new(base.join(&config.data))
        .compaction(compaction)
        .wal_preallocation(wal_preallocation)
        .node_id(config.node_id)
        .listen(config.listen)
        .durability(durability)
        .tls(tls);
    if let Some(sessions) = config.max_sessions {
        builder = builder.max_sessions(sessions);
    }
    if let Some(shards) = config.shards {
        builder = builder.shards(shards);
    }
    for (id, addr) in parse_ids(&config.peers, file)? {
        builder = builder.peer(id, addr);
    }
    Ok(builder)
}

/// A client's view of a cluster directory.
pub struct ClientFiles {
    /// Members: id → address.
    pub nodes: BTreeMap<u64, SocketAddr>,
    /// Certificates.
    pub tls: ClusterTls,
}

/// Reads `dir/cluster.toml` and the client certificate it names.
pub fn load_client(dir: &Path) -> Result<ClientFiles> {
    let file = dir.join("cluster.toml");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", file.display())))?;
    let config: ClientConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    let nodes = parse_ids(&config.nodes, &file)?;
    if nodes.is_empty() {
        return Err(Error::Config(format!(
            "{}: [nodes] lists no member to connect to",
            file.display()
        )));
    }
    Ok(ClientFiles {
        nodes,
        tls: ClusterTls {
            ca_cert: read(&dir.join(&config.ca_cert))?,
            cert: read(&dir.join(&config.cert))?,
            key: read(&dir.join(&config.key))?,
        },
    })
}
