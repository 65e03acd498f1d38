//! Sorted runs on local disk: the map output of one partition, or a reduce
//! task's output.
//!
//! ```text
//! record*  footer
//! record = key_len u32 BE ‖ key ‖ value_len u32 BE ‖ value
//! footer = "MRRUN001" ‖ record count u64 BE ‖ CRC-32 of every record byte u32 BE
//! ```
//!
//! A run is written under a temporary name, fsynced and renamed into place
//! (then the directory is fsynced), so a run with its final name is whole.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io, MapReduceError};

const MAGIC: &[u8; 8] = b"MRRUN001";
const FOOTER_BYTES: u64 = 8 + 8 + 4;
/// A key or value longer than this is a damaged length, not data.
const MAX_FIELD_BYTES: u32 = 64 << 20;

/// One record: key and value.
pub type Record = (Vec<u8>, Vec<u8>);

/// The file of map task `map`'s output for partition `reduce`.
pub fn map_run_name(job: &str, map: u32, reduce: u32) -> String {
    format!("mr-{job}-{map}-{reduce}")
}

/// The file of reduce task `reduce`'s output.
pub fn reduce_output_name(job: &str, reduce: u32) -> String {
    format!("mr-{job}-out-{reduce}")
}

/// Writes one run; [`finish`](RunWriter::finish) makes it appear whole.
pub struct RunWriter {
    out: BufWriter<File>,
    temp: PathBuf,
    path: PathBuf,
    crc: crc32fast::Hasher,
    records: u64,
    bytes: u64,
}

impl RunWriter {
    /// Starts the run that will be named `path`.
    pub fn create(path: &Path) -> Result<RunWriter, MapReduceError> {
        // Unique per writer, so two attempts of one task never share it.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let temp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io(&temp))?;
        Ok(RunWriter {
            out: BufWriter::with_capacity(256 << 10, file),
            temp,
            path: path.to_path_buf(),
            crc: crc32fast::Hasher::new(),
            records: 0,
            bytes: 0,
        })
    }

    /// Appends one record (callers write in key order).
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), MapReduceError> {
        for field in [key, value] {
            let len = u32::try_from(field.len())
                .ok()
                .filter(|l| *l <= MAX_FIELD_BYTES)
                .ok_or_else(|| {
                    MapReduceError::Invalid(format!(
                        "a key or value of {} bytes (at most {MAX_FIELD_BYTES})",
                        field.len()
                    ))
                })?
                .to_be_bytes();
            self.crc.update(&len);
            self.crc.update(field);
            self.out.write_all(&len).map_err(io(&self.temp))?;
            self.out.write_all(field).map_err(io(&self.temp))?;
            self.bytes += 4 + field.len() as u64;
        }
        self.records += 1;
        Ok(())
    }

    /// Record bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the footer, syncs and renames the run into place.
    pub fn finish(mut self) -> Result<(), MapReduceError> {
        let mut footer = Vec::with_capacity(FOOTER_BYTES as usize);
        footer.extend_from_slice(MAGIC);
        footer.extend_from_slice(&self.records.to_be_bytes());
        footer.extend_from_slice(&self.crc.clone().finalize().to_be_bytes());
        self.out.write_all(&footer).map_err(io(&self.temp))?;
        let file = self.out.into_inner().map_err(|e| MapReduceError::Io {
            path: self.temp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&self.temp))?;
        std::fs::rename(&self.temp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)
    }
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), MapReduceError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Streams a run's records, checking the footer first and the checksum at
/// the end.
pub struct RunReader {
    /// The records, without the footer.
    input: BufReader<std::io::Take<File>>,
    path: PathBuf,
    remaining: u64,
    expected_crc: u32,
    crc: crc32fast::Hasher,
}

impl RunReader {
    /// Opens a whole run (see the module docs).
    pub fn open(path: &Path) -> Result<RunReader, MapReduceError> {
        let damaged = |detail: String| MapReduceError::DamagedRun {
            path: path.to_path_buf(),
            detail,
        };
        let mut file = File::open(path).map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        if len < FOOTER_BYTES {
            return Err(damaged(format!("{len} bytes, shorter than a footer")));
        }
        file.seek(SeekFrom::Start(len - FOOTER_BYTES))
            .map_err(io(path))?;
        let mut footer = [0u8; FOOTER_BYTES as usize];
        file.read_exact(&mut footer).map_err(io(path))?;
        if &footer[..8] != MAGIC {
            return Err(damaged("no run footer".into()));
        }
        let records = u64::from_be_bytes(footer[8..16].try_into().unwrap_or_default());
        let expected_crc = u32::from_be_bytes(footer[16..20].try_into().unwrap_or_default());
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        Ok(RunReader {
            input: BufReader::with_capacity(64 << 10, file.take(len - FOOTER_BYTES)),
            path: path.to_path_buf(),
            remaining: records,
            expected_crc,
            crc: crc32fast::Hasher::new(),
        })
    }

    fn damaged(&self, detail: String) -> MapReduceError {
        MapReduceError::DamagedRun {
            path: self.path.clone(),
            detail,
        }
    }

    fn field(&mut self) -> Result<Vec<u8>, MapReduceError> {
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .map_err(|e| self.damaged(format!("truncated record: {e}")))?;
        self.crc.update(&len);
        let len = u32::from_be_bytes(len);
        if len > MAX_FIELD_BYTES {
            return Err(self.damaged(format!("a field of {len} bytes")));
        }
        let mut field = vec![0u8; len as usize];
        self.input
            .read_exact(&mut field)
            .map_err(|e| self.damaged(format!("truncated record: {e}")))?;
        self.crc.update(&field);
        Ok(field)
    }

    /// The next record, `None` after the last one (once its checksum held).
    pub fn next_record(&mut self) -> Result<Option<Record>, MapReduceError> {
        if self.remaining == 0 {
            let actual = self.crc.clone().finalize();
            if actual != self.expected_crc {
                return Err(self.damaged(format!(
                    "checksum {actual:08x}, footer says {:08x}",
                    self.expected_crc
                )));
            }
            let mut rest = [0u8; 1];
            return match self.input.read(&mut rest) {
                Ok(0) => Ok(None),
                Ok(_) => Err(self.damaged("bytes after the last record".into())),
                Err(e) => Err(MapReduceError::Io {
                    path: self.path.clone(),
                    source: e,
                }),
            };
        }
        let key = self.field()?;
        let value = self.field()?;
        self.remaining -= 1;
        Ok(Some((key, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, records: &[(&[u8], &[u8])]) {
        let mut w = RunWriter::create(path).expect("create");
        for (k, v) in records {
            w.push(k, v).expect("push");
        }
        w.finish().expect("finish");
    }

    fn read_all(path: &Path) -> Result<Vec<Record>, MapReduceError> {
        let mut r = RunReader::open(path)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn a_run_reads_back_and_only_its_final_name_exists() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(map_run_name("j", 3, 1));
        write(&path, &[(b"a", b"1"), (b"b", b""), (b"", b"x")]);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("mr-j-3-1")]);
        assert_eq!(
            read_all(&path).expect("read"),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), vec![]),
                (vec![], b"x".to_vec())
            ]
        );
    }

    #[test]
    fn flipped_truncated_and_footerless_runs_are_reported_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("mr-j-0-0");
        write(&path, &[(b"key", b"value"), (b"key2", b"value2")]);
        let good = std::fs::read(&path).expect("read");

        let mut flipped = good.clone();
        flipped[5] ^= 0x40;
        std::fs::write(&path, &flipped).expect("write");
        let e = read_all(&path).expect_err("flipped");
        assert!(matches!(e, MapReduceError::DamagedRun { .. }), "{e}");
        assert!(e.to_string().contains("mr-j-0-0"), "{e}");

        let mut truncated = good[..good.len() - FOOTER_BYTES as usize - 3].to_vec();
        truncated.extend_from_slice(&good[good.len() - FOOTER_BYTES as usize..]);
        std::fs::write(&path, &truncated).expect("write");
        assert!(matches!(
            read_all(&path),
            Err(MapReduceError::DamagedRun { .. })
        ));

        std::fs::write(&path, &good[..good.len() - 1]).expect("write");
        assert!(matches!(
            read_all(&path),
            Err(MapReduceError::DamagedRun { .. })
        ));
    }
}
