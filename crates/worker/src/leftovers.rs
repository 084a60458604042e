//! What a scorer leaves behind is hostile input. The worker runs outside the sandbox with the
//! workspace's credentials, so every file it reads from a folder the sandbox could write (the result
//! part, the stdout log, the files in `AZUREML_BI_OUTPUT_PATH`) is opened here and nowhere else:
//! without following a link, only if it is a regular file with a single name, and within a size limit.
//!
//! Why `O_NOFOLLOW` on the last component is enough: those folders are created by the worker, and each
//! is bind-mounted into the sandbox as itself, so the scorer can change what is *inside* them but not
//! the folders or their parents (a mount point cannot be renamed or replaced from within). Only the
//! entry itself can be a link, a FIFO, a device, a hard link to a file the worker can read, or huge.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a scorer-written file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Missing,
    /// A link, FIFO, socket, device, folder, or a file with more than one name: never read.
    NotAPlainFile(String),
    TooLarge {
        size: u64,
        limit: u64,
    },
    Io(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Missing => f.write_str("it does not exist"),
            Refused::NotAPlainFile(what) => write!(f, "it is {what}, not a regular file the scorer wrote"),
            Refused::TooLarge { size, limit } => write!(f, "it is {size} bytes, more than the limit of {limit}"),
            Refused::Io(e) => f.write_str(e),
        }
    }
}

/// Opens `path` for reading if it is a regular file with one name, never following a link and never
/// blocking on a FIFO; returns the file and its size.
fn open_plain(path: &Path) -> Result<(std::fs::File, u64), Refused> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => Refused::NotAPlainFile("a symbolic link".into()),
            _ if e.kind() == std::io::ErrorKind::NotFound => Refused::Missing,
            _ => Refused::Io(e.to_string()),
        })?;
    let meta = file.metadata().map_err(|e| Refused::Io(e.to_string()))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a folder"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(Refused::NotAPlainFile(what.into()));
    }
    if meta.nlink() != 1 {
        return Err(Refused::NotAPlainFile(format!("a file with {} names (a hard link)", meta.nlink())));
    }
    Ok((file, meta.len()))
}

/// The size of a scorer-written file, if it is one the worker would read (see [`read`]).
pub fn checked_size(path: &Path, limit: u64) -> Result<u64, Refused> {
    let (_, size) = open_plain(path)?;
    if size > limit {
        return Err(Refused::TooLarge { size, limit });
    }
    Ok(size)
}

/// Reads a whole scorer-written file of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, Refused> {
    let (file, size) = open_plain(path)?;
    if size > limit {
        return Err(Refused::TooLarge { size, limit });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // The file may grow while it is read (a process the scorer left running): never past the limit.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Refused::Io(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(Refused::TooLarge { size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

/// Reads a scorer-written log: all of it, or when it is longer than `limit`, a line saying so and its
/// last `limit` bytes. Returns the bytes and the file's size.
pub fn read_log(path: &Path, limit: u64) -> Result<(Vec<u8>, u64), Refused> {
    let (mut file, size) = open_plain(path)?;
    let mut bytes = Vec::new();
    if size > limit {
        bytes.extend_from_slice(
            format!("[cove: this log is {size} bytes; only its last {limit} bytes are kept]\n").as_bytes(),
        );
        file.seek(SeekFrom::Start(size - limit)).map_err(|e| Refused::Io(e.to_string()))?;
    }
    file.take(limit).read_to_end(&mut bytes).map_err(|e| Refused::Io(e.to_string()))?;
    Ok((bytes, size))
}

/// The size of a scorer-written file, if it is a plain one.
pub fn plain_size(path: &Path) -> Option<u64> {
    open_plain(path).ok().map(|(_, size)| size)
}

/// Opens (creating if needed) a log file for appending, refusing a link left in its place.
pub fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).custom_flags(nix::libc::O_NOFOLLOW).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_hard_links_and_huge_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("owner.token");
        std::fs::write(&secret, "secret").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "ok").unwrap();
        assert_eq!(read(&plain, 10).unwrap(), b"ok");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(read(&link, 10), Err(Refused::NotAPlainFile("a symbolic link".into())));
        assert!(read_log(&link, 10).is_err());

        let hard = dir.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        assert!(matches!(read(&hard, 10), Err(Refused::NotAPlainFile(w)) if w.contains("hard link")));

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(read(&fifo, 10), Err(Refused::NotAPlainFile("a FIFO".into())));

        assert_eq!(read(dir.path(), 10), Err(Refused::NotAPlainFile("a folder".into())));
        assert_eq!(read(&dir.path().join("none"), 10), Err(Refused::Missing));

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 100]).unwrap();
        assert_eq!(read(&big, 10), Err(Refused::TooLarge { size: 100, limit: 10 }));
        let (tail, size) = read_log(&big, 10).unwrap();
        assert_eq!(size, 100);
        assert!(String::from_utf8(tail).unwrap().ends_with("bytes are kept]\nxxxxxxxxxx"));

        assert!(open_append(&link).is_err(), "appending through a link must fail");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "secret");
    }
}
