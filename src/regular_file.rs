//! Reading files an operator (or an attacker with write access to a folder) may have replaced
//! by something that is not a file: a FIFO, a device, a socket, a folder.
//!
//! A plain `open` of a FIFO blocks until a writer appears, and a read of a device may never end,
//! so a config or picture swapped for one used to hang the thread that read it. Here every
//! open is non-blocking (`O_NONBLOCK`, which opens a FIFO at once and does nothing to a regular
//! file), the file type is checked on the open descriptor (no race between check and open),
//! and anything but a regular file is refused with an error naming it. Reads are bounded in
//! size, so a huge file costs at most the limit.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (after following symlinks); a FIFO, device,
/// socket or folder is an `InvalidInput` error naming what it is. Never blocks on the open.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file; refusing to read it"),
    ))
}

/// Reads all of the regular file `path`, refusing one larger than `max_bytes` (checked on its
/// size before reading, and again while reading, in case it grows).
pub fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    let too_large = |len: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max_bytes} allowed"),
        )
    };
    if len > max_bytes {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    pub(crate) fn make_fifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("dreamd.toml");
        make_fifo(&fifo);
        let started = Instant::now();
        let err = read_bounded(&fifo, 1024).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = open_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
    }

    #[test]
    fn size_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 2000]).unwrap();
        assert_eq!(read_bounded(&path, 2000).unwrap().len(), 2000);
        let err = read_bounded(&path, 1999).unwrap_err();
        assert!(err.to_string().contains("more than the 1999"), "{err}");
    }
}
