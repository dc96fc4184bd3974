//! Appends that bypass the page cache (`O_DIRECT`), when the process asks for them
//! ([`set_direct_writes`]; the broker's `topics.direct_writes`).
//!
//! A buffered append copies the records into the page cache and the fsync that follows
//! walks those pages to write them back: on the machines Strata is measured on that was
//! the largest part of the CPU a produced GB costs the broker. A direct write hands the device the
//! records from the broker's own memory instead. It must start and end on a block boundary
//! and come from a block-aligned buffer, while batches end anywhere: the writer keeps the
//! bytes of the file's last, partial block and writes each append as that block's start,
//! the new batches and zeros up to the next boundary. So the file is longer than its batches
//! by up to a block of zeros until the segment is sealed (which cuts them) or a checkpoint
//! trims them; opening a log cuts them too, as it cuts any torn tail (zeros are no batch).
//!
//! What was written this way is not in the page cache, so the bulk reads of a fetch from the
//! active segment are direct too ([`read_append_at`]): from the disk into a buffer the thread
//! reuses, then into the fetch's buffer. A buffered read would put every page it reads in
//! the page cache first, and filling pages of memory nothing used lately is what made
//! buffered appends dear. Other reads (header walks, sealed segments) keep the ordinary
//! descriptor; the kernel drops the cached pages a direct write overlaps, so they see what was
//! written too.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The alignment of a direct write's position, length and buffer. 4 KiB serves disks with
/// 512-byte and 4 KiB logical blocks alike.
pub(crate) const BLOCK: usize = 4096;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Largest staging buffer a thread keeps between appends.
const MAX_STAGING: usize = 16 << 20;
/// Bytes a direct read takes from the disk at once.
const READ_CHUNK: usize = 4 << 20;

thread_local! {
    /// The aligned copy of an append, kept by the thread for its next one: a buffer of a
    /// megabyte or more freshly allocated was page-faulted in (and zeroed by the kernel) at
    /// every append, a tenth of the broker's CPU while producing.
    static STAGING: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// What a direct read brings from the disk, kept for the thread's next read. It only
    /// grows (zeroed once, when it does), so reads go into initialised bytes.
    static READ_STAGING: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Appends to `out` up to `want` bytes of `file` (opened with `O_DIRECT`) from `pos`, fewer
/// where the file ends, as `segment::read_append_at` does through the page cache.
pub(crate) fn read_append_at(
    file: &File,
    out: &mut Vec<u8>,
    want: usize,
    pos: u64,
) -> io::Result<usize> {
    crate::buffers::ensure(out, want);
    // Sized to the read (a tail fetch is kilobytes), so a thread that only ever reads a
    // little keeps a little: up to one chunk, the block before it (the read starts at a
    // block boundary) and one to align the buffer in.
    let needed = want.min(READ_CHUNK).next_multiple_of(BLOCK) + 2 * BLOCK;
    let mut buf = READ_STAGING.take();
    if buf.len() < needed {
        buf.resize(needed, 0);
    }
    let at = buf.as_ptr().align_offset(BLOCK);
    let result = (|| {
        let start = out.len();
        while out.len() - start < want {
            let next = pos + (out.len() - start) as u64;
            let base = next - next % BLOCK as u64;
            let skip = (next - base) as usize;
            let take = (want - (out.len() - start)).min(READ_CHUNK);
            let span = (skip + take).next_multiple_of(BLOCK);
            let got = read_full(file, &mut buf[at..at + span], base)?;
            if got <= skip {
                break;
            }
            let end = (skip + take).min(got);
            out.extend_from_slice(&buf[at + skip..at + end]);
            if end < skip + take {
                break;
            }
        }
        Ok(out.len() - start)
    })();
    READ_STAGING.set(buf);
    result
}

/// Reads into `buf` (block-aligned, a whole number of blocks) from `pos` until it is full or
/// the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(file, &mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if !done.is_multiple_of(BLOCK) {
                    break; // the end of the file, inside a block
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Makes segments that take appends from now on write them with direct I/O (or not). Logs
/// already open keep how their active segment writes until it is sealed or reopened.
pub fn set_direct_writes(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether new active segments write with direct I/O.
pub fn direct_writes() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Checks that files in `dir` take direct writes (tmpfs and some network filesystems do
/// not), by writing one block to a scratch file there and removing it.
pub fn probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(".direct-write-probe");
    let result = (|| {
        let mut writer = DirectWriter::open(&path, true)?;
        let read = writer.file.try_clone()?;
        writer.write(&read, 0, &[b"probe"])
    })();
    let removed = std::fs::remove_file(&path);
    result?;
    removed
}

/// The direct-I/O descriptor of an active segment's log file and the bytes of its last
/// partial block.
#[derive(Debug)]
pub(crate) struct DirectWriter {
    file: Arc<File>,
    /// The file's bytes from the last block boundary at or before `end` up to `end`.
    tail: Vec<u8>,
    /// The size of the batches `tail` ends at; `None` when not known (read again from the
    /// file before the next write).
    end: Option<u64>,
    /// Whether the file holds zeros past `end` (the last write ended inside a block).
    padded: bool,
}

impl DirectWriter {
    /// Opens `path` (created when `create`) for direct writes.
    pub fn open(path: &Path, create: bool) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)?;
        Ok(Self {
            file: Arc::new(file),
            tail: Vec::new(),
            end: None,
            padded: false,
        })
    }

    /// The direct-I/O descriptor, for reads of what it wrote ([`read_append_at`]).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Writes `pieces` one after another at `size`, the end of the batches in the file,
    /// which `read` (the segment's ordinary descriptor) reads. On an error what the file
    /// holds past `size` is undefined; the caller cuts it.
    pub fn write(&mut self, read: &File, size: u64, pieces: &[&[u8]]) -> io::Result<()> {
        let base = size - size % BLOCK as u64;
        if self.end != Some(size) {
            self.end = None;
            self.tail.resize((size - base) as usize, 0);
            read.read_exact_at(&mut self.tail, base)?;
        }
        self.end = None;
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let used = self.tail.len() + len;
        let padded = used.next_multiple_of(BLOCK);
        let mut buf = STAGING.take();
        buf.clear();
        buf.reserve(padded + BLOCK);
        let at = buf.as_ptr().align_offset(BLOCK);
        buf.resize(at, 0);
        buf.extend_from_slice(&self.tail);
        for piece in pieces {
            buf.extend_from_slice(piece);
        }
        buf.resize(at + padded, 0);
        let written = write_all_at(&self.file, &buf[at..], base);
        if written.is_ok() {
            let new_end = size + len as u64;
            let new_base = new_end - new_end % BLOCK as u64;
            let from = at + (new_base - base) as usize;
            self.tail.clear();
            self.tail
                .extend_from_slice(&buf[from..from + (new_end - new_base) as usize]);
            self.end = Some(new_end);
            self.padded = !new_end.is_multiple_of(BLOCK as u64);
        }
        if buf.capacity() <= MAX_STAGING {
            STAGING.set(buf);
        }
        written
    }

    /// Whether the file holds zeros past the batches (see [`DirectWriter::trimmed`]).
    pub fn padded(&self) -> bool {
        self.padded
    }

    /// Notes that the file was cut back to the end of its batches.
    pub fn trimmed(&mut self) {
        self.padded = false;
    }

    /// Forgets the last block (the file was cut or written some other way).
    pub fn forget(&mut self) {
        self.end = None;
    }
}

/// Writes all of `buf` (block-aligned, a whole number of blocks) at `pos`.
fn write_all_at(file: &File, buf: &[u8], mut pos: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(file, &buf[done..], pos) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // A short direct write ends on a block boundary; one that does not cannot be
            // continued from an aligned buffer.
            Ok(n) if done + n < buf.len() && !n.is_multiple_of(512) => {
                return Err(io::Error::other(format!(
                    "a direct write stopped at {n} bytes, inside a block"
                )));
            }
            Ok(n) => {
                done += n;
                pos += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file holds exactly what was appended, followed by zeros to the block boundary, over
    /// appends that start and end inside blocks, span several, and fill one exactly.
    #[test]
    fn appends_land_at_their_place_between_block_boundaries() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("seg.log");
        if let Err(e) = probe(dir.path()) {
            eprintln!("skipped: the temporary directory takes no direct writes ({e})");
            return;
        }
        let mut writer = DirectWriter::open(&path, true).expect("open");
        let read = File::open(&path).expect("read");
        let mut expected = Vec::new();
        let mut n = 0u8;
        for len in [10, 4086, 1, 9000, 4096, 3, 12_288, 100] {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            let (a, b) = piece.split_at(len / 3);
            writer
                .write(&read, expected.len() as u64, &[a, b])
                .expect("write");
            expected.extend_from_slice(&piece);
            let padded = expected.len().next_multiple_of(BLOCK);
            let mut on_disk = vec![0xAA; padded];
            read.read_exact_at(&mut on_disk, 0).expect("read back");
            assert_eq!(
                &on_disk[..expected.len()],
                &expected[..],
                "after {len} bytes"
            );
            assert!(
                on_disk[expected.len()..].iter().all(|&b| b == 0),
                "zeros after"
            );
            assert_eq!(writer.padded(), expected.len() % BLOCK != 0);
        }
        // A writer that does not know the last block reads it from the file.
        let mut again = DirectWriter::open(&path, false).expect("reopen");
        again
            .write(&read, expected.len() as u64, &[b"more"])
            .expect("write");
        expected.extend_from_slice(b"more");
        let mut on_disk = vec![0; expected.len()];
        read.read_exact_at(&mut on_disk, 0).expect("read back");
        assert_eq!(on_disk, expected);
    }

    /// Direct reads return what buffered ones do: from any position, for any length, across
    /// their chunks, and cut where the batches (and the file) end.
    #[test]
    fn direct_reads_return_the_bytes_asked_for() {
        let dir = tempfile::tempdir().expect("dir");
        if let Err(e) = probe(dir.path()) {
            eprintln!("skipped: the temporary directory takes no direct writes ({e})");
            return;
        }
        let path = dir.path().join("seg.log");
        let mut writer = DirectWriter::open(&path, true).expect("open");
        let read = File::open(&path).expect("read");
        let data: Vec<u8> = (0..READ_CHUNK * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        writer.write(&read, 0, &[&data]).expect("write");
        let size = data.len() as u64;
        for (pos, want) in [
            (0, 10),
            (1, 4095),
            (4095, 2),
            (5000, READ_CHUNK + 7),
            (0, data.len()),
            (size - 3, 100),
            (size, 10),
            (size - 12_000, 12_000),
        ] {
            let mut direct = Vec::new();
            let n = read_append_at(writer.file(), &mut direct, want, pos).expect("direct");
            // The file holds zeros after the data, to the block boundary: a read gets them too.
            let file_len = size.next_multiple_of(BLOCK as u64) as usize;
            let end = (pos as usize + want).min(file_len);
            let mut padded = data.clone();
            padded.resize(file_len, 0);
            let expected = padded.get(pos as usize..end).unwrap_or_default();
            assert_eq!((n, &direct[..]), (expected.len(), expected), "{pos}+{want}");
        }
        // A thread's first read sizes its buffer: the most it can span is from the end of a
        // block into the next.
        let file = Arc::clone(writer.file());
        let first = std::thread::spawn(move || {
            let mut out = Vec::new();
            read_append_at(&file, &mut out, 2, 4095).expect("read");
            out
        })
        .join()
        .expect("thread");
        assert_eq!(first, &data[4095..4097]);
        // Appended after what `out` held already.
        let mut out = b"head".to_vec();
        assert_eq!(
            read_append_at(writer.file(), &mut out, 6, 100).expect("read"),
            6
        );
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &data[100..106]);
    }
}
