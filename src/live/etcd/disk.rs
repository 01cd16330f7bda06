//! The last-known-good disk snapshot: what the etcd source serves from when etcd cannot
//! be reached at start.
//!
//! Format: one header line `substation-snapshot v1 crc32=<8 hex digits>` and then the
//! JSON payload the checksum covers. Written atomically: a temporary file in the same
//! directory, `fsync`, `rename`, `fsync` of the directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::BoxError;

const HEADER: &str = "substation-snapshot v1 crc32=";

/// The raw values of both layers at one revision, as stored in etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mirror {
    pub(crate) revision: u64,
    pub(crate) app: BTreeMap<String, String>,
    pub(crate) shared: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    written_unix_ms: u64,
    #[serde(flatten)]
    mirror: Mirror,
}

/// Writes `mirror` to `path` atomically.
pub(crate) fn write(path: &Path, mirror: &Mirror) -> Result<(), BoxError> {
    let written_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let payload = serde_json::to_vec(&Payload {
        written_unix_ms,
        mirror: mirror.clone(),
    })?;
    let crc = crc32fast::hash(&payload);
    let tmp = temp_path(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{HEADER}{crc:08x}")?;
        f.write_all(&payload)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads and verifies a snapshot; returns it with the time it was written. Blocking:
/// call it off the async threads. Anything but a regular file (a FIFO, whose `open`
/// would wait for a writer; a device; a directory) is refused before it is opened.
pub(crate) fn read(path: &Path) -> Result<(Mirror, SystemTime), BoxError> {
    regular(&std::fs::metadata(path)?)?;
    let mut file = std::fs::File::open(path)?;
    // Checked again on what was opened: the path may have changed in between.
    regular(&file.metadata()?)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("not a substation snapshot (no header line)")?;
    let header = std::str::from_utf8(&bytes[..newline])?;
    let crc = header
        .strip_prefix(HEADER)
        .ok_or("not a substation snapshot (unknown header)")?;
    let crc = u32::from_str_radix(crc, 16)?;
    let payload = &bytes[newline + 1..];
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (header {crc:08x}, content {actual:08x}): the file is damaged"
        )
        .into());
    }
    let p: Payload = serde_json::from_slice(payload)?;
    Ok((
        p.mirror,
        UNIX_EPOCH + Duration::from_millis(p.written_unix_ms),
    ))
}

fn regular(metadata: &std::fs::Metadata) -> Result<(), BoxError> {
    if metadata.is_file() {
        return Ok(());
    }
    let kind = metadata.file_type();
    let mut what = if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            what = "a FIFO";
        } else if kind.is_char_device() || kind.is_block_device() {
            what = "a device";
        } else if kind.is_socket() {
            what = "a socket";
        }
    }
    Err(format!("{what}, not a regular file: refusing to open it as a snapshot").into())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = std::env::temp_dir().join(format!("substation-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("settings.snapshot");
        let mut m = Mirror {
            revision: 42,
            ..Mirror::default()
        };
        m.app
            .insert("policies/a".into(), r#"{"timeout":{"ms":5}}"#.into());
        m.shared.insert("policies/b".into(), "{}".into());
        write(&path, &m).unwrap();
        let (back, written) = read(&path).unwrap();
        assert_eq!(back, m);
        assert!(written.elapsed().unwrap() < Duration::from_secs(60));

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
