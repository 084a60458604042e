//! Opens files of a folder the way nothing in it can redirect: resolved beneath the folder with no
//! symbolic link anywhere on the way, a regular file only. A folder that other users of the host can
//! write (a shared filesystem, say) could otherwise hold a link to the workspace owner's files, which
//! a job would then read and publish. Used for local datastores by the control plane and by workers
//! that read a job's inputs in place.

use std::fs::File;
use std::path::Path;

/// Opens `rel` beneath `root`; the file is known to be a regular file.
pub fn open(root: &Path, rel: &str) -> Result<File, String> {
    Folder::open(root)?.open_file(rel).map(|(file, _)| file)
}

/// A folder opened once, whose files are then opened beneath it (a mini-batch's files, say).
pub struct Folder(File);

impl Folder {
    pub fn open(root: &Path) -> Result<Folder, String> {
        File::open(root).map(Folder).map_err(|e| format!("the datastore folder cannot be opened: {e}"))
    }

    /// Opens `rel` beneath the folder; returns it (a regular file) and its size.
    pub fn open_file(&self, rel: &str) -> Result<(File, u64), String> {
        use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(&self.0, rel, how).map_err(|e| match e {
            nix::errno::Errno::ELOOP => {
                "it is, or lies behind, a symbolic link; a datastore's files are read without following links"
                    .to_string()
            }
            nix::errno::Errno::EXDEV => "it leaves its datastore".to_string(),
            other => other.desc().to_string(),
        })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        Ok((file, meta.len()))
    }

    /// Reads `rel` beneath the folder whole. Blocking.
    pub fn read(&self, rel: &str) -> Result<bytes::Bytes, String> {
        use std::io::Read;
        let (mut file, len) = self.open_file(rel)?;
        let mut bytes = Vec::with_capacity(len as usize + 1);
        // Read through a plain reader: `File::read_to_end` asks the size again with a `statx` of its own,
        // a system call of six for every small input file.
        SizeKnown(&mut file).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes.into())
    }
}

/// Opens the folder `rel` beneath `root` (`root` itself when `rel` is empty), the same way as [`open`].
pub fn open_dir(root: &Path, rel: &str) -> Result<File, std::io::Error> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let dir = File::open(root)?;
    if rel.is_empty() {
        return Ok(dir);
    }
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    Ok(File::from(openat2(&dir, rel, how).map_err(std::io::Error::from)?))
}

/// A file whose size was just read: reads it without asking again.
struct SizeKnown<'a>(&'a mut File);

impl std::io::Read for SizeKnown<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// Reads `rel` beneath `root` whole. Blocking.
pub fn read(root: &Path, rel: &str) -> Result<bytes::Bytes, String> {
    Folder::open(root)?.read(rel)
}

/// Makes `rel` beneath `root` appear at `dest` without copying it when the filesystem allows: a hard
/// link to the very file that was opened and checked (through its descriptor, so a rename in between
/// cannot swap it), or else a copy. Returns whether it was linked. Blocking.
pub fn link_or_copy(root: &Path, rel: &str, dest: &Path) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let mut file = open(root, rel)?;
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    let linked = nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        by_fd.as_str(),
        nix::fcntl::AT_FDCWD,
        dest,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    );
    if linked.is_ok() {
        return Ok(true);
    }
    // Another filesystem, or a file the hard-link protection keeps to its owner: copy it.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| format!("cannot stage it: {e}"))?;
    std::io::copy(&mut file, &mut out).map_err(|e| format!("cannot stage it: {e}"))?;
    Ok(false)
}
