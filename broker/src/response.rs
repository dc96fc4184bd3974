//! Response frames written in pieces. A Fetch answer is mostly record sets read from logs;
//! copying them into one encoded buffer cost as much CPU as reading them. Instead the
//! response is encoded with a short marker in place of each large record set, and the frame
//! is written as the encoded pieces around the record sets' own buffers (one `writev`), or,
//! for record sets still in their segment files, around those files' ranges (`sendfile` on
//! a plaintext connection: the records never enter the broker's memory).

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use strata_storage::FileRange;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Record sets at least this long are written from their own buffers; shorter ones are
/// cheaper to copy than to splice.
pub(crate) const SPLICED_RECORDS: usize = 4096;

const MARKER_LEN: usize = 16;

/// Most bytes asked of one `sendfile` call.
const MAX_SENDFILE: usize = 1 << 30;

/// A response frame (with its size prefix), as pieces written one after another.
#[derive(Debug, Default)]
pub(crate) struct Response {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Bytes(Bytes),
    File(FileRange),
}

impl Response {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.parts.push(Part::Bytes(part));
        }
    }

    /// Writes the frame to `out`: runs of buffers with one `writev`, file ranges as `out`
    /// sends them.
    pub(crate) async fn write_to<W: Sink>(self, out: &mut W) -> io::Result<()> {
        let mut run = Buffers::default();
        for part in self.parts {
            match part {
                Part::Bytes(b) => run.push(b),
                Part::File(range) => {
                    out.write_all_buf(&mut run).await?;
                    out.send_file(&range).await?;
                }
            }
        }
        out.write_all_buf(&mut run).await
    }

    /// The whole frame in memory (file ranges read).
    #[cfg(test)]
    pub(crate) fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        for part in &self.parts {
            match part {
                Part::Bytes(b) => out.extend_from_slice(b),
                Part::File(range) => out.extend_from_slice(&range.read().expect("range")),
            }
        }
        out.freeze()
    }
}

impl From<Bytes> for Response {
    fn from(bytes: Bytes) -> Self {
        let mut r = Self::default();
        r.push(bytes);
        r
    }
}

/// Where a response goes: a connection's writing half, which sends file ranges its own way.
pub(crate) trait Sink: AsyncWrite + Unpin + Send {
    /// Writes the bytes of `range`, failing if its file no longer holds them all (the frame
    /// around them already announced their length: the connection cannot continue).
    fn send_file(&mut self, range: &FileRange) -> impl Future<Output = io::Result<()>> + Send;
}

/// Plaintext TCP: from the page cache to the socket with `sendfile`, on this thread (the
/// fetch checked the range's pages were cached, so this does not wait for the disk).
impl Sink for tokio::net::tcp::OwnedWriteHalf {
    async fn send_file(&mut self, range: &FileRange) -> io::Result<()> {
        let socket: &tokio::net::TcpStream = self.as_ref();
        let (mut pos, end) = (range.pos, range.pos + range.len);
        while pos < end {
            let want = usize::try_from(end - pos).map_or(MAX_SENDFILE, |n| n.min(MAX_SENDFILE));
            let sent = socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    let mut at = pos;
                    rustix::fs::sendfile(socket, range.file(), Some(&mut at), want)
                        .map_err(io::Error::from)
                })
                .await?;
            if sent == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a segment file was truncated while its records were being sent",
                ));
            }
            pos += sent as u64;
        }
        Ok(())
    }
}

/// TLS: the records are read into memory (off the async threads) and encrypted there.
impl<T: AsyncWrite + Send> Sink for tokio::io::WriteHalf<T> {
    async fn send_file(&mut self, range: &FileRange) -> io::Result<()> {
        let range = range.clone();
        let bytes = tokio::task::spawn_blocking(move || range.read())
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)?;
        self.write_all(&bytes).await
    }
}

/// Buffers written one after another with vectored writes.
#[derive(Debug, Default)]
struct Buffers {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Buffers {
    fn push(&mut self, part: Bytes) {
        // An empty piece first would make `chunk` empty while bytes remain.
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }
}

impl Buf for Buffers {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of a response");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

/// Record sets taken out of a response before it is encoded, each replaced by a marker that
/// no client can know (random per response, drawn only when a set is taken: most answers to
/// tailing consumers carry none), so the encoded bytes can be cut where they are.
#[derive(Default)]
pub(crate) struct Taken {
    salt: Option<[u8; 12]>,
    sets: Vec<RecordSet>,
}

/// A record set taken out: in memory (in one piece or several), or ranges of segment files.
enum RecordSet {
    Bytes(Vec<Bytes>),
    Files(Vec<FileRange>),
}

impl RecordSet {
    fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.iter().map(Bytes::len).sum(),
            Self::Files(f) => f.iter().map(|r| r.len as usize).sum(),
        }
    }
}

impl Taken {
    /// Takes `records` when it is worth splicing, leaving its marker in its place.
    pub(crate) fn take(&mut self, records: &mut Bytes) {
        if records.len() >= SPLICED_RECORDS {
            let set = std::mem::take(records);
            *records = self.marker(RecordSet::Bytes(vec![set]));
        }
    }

    /// Sets `records` to the marker of a record set of `pieces`, one after another (the
    /// slices of a remote read's chunks: spliced whatever their size, as joining them would
    /// copy).
    pub(crate) fn take_pieces(&mut self, records: &mut Option<Bytes>, pieces: Vec<Bytes>) {
        *records = Some(self.marker(RecordSet::Bytes(pieces)));
    }

    /// Sets `records` to the marker of a record set sent from `files` (to no records when
    /// there are none).
    pub(crate) fn take_files(&mut self, records: &mut Option<Bytes>, files: Vec<FileRange>) {
        *records = Some(match files.is_empty() {
            true => Bytes::new(),
            false => self.marker(RecordSet::Files(files)),
        });
    }

    /// Keeps `set` and returns the marker that stands for it.
    fn marker(&mut self, set: RecordSet) -> Bytes {
        let salt = self.salt.get_or_insert_with(|| {
            let mut salt = [0u8; 12];
            salt.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
            salt
        });
        let marker = Bytes::copy_from_slice(&marker(salt, self.sets.len()));
        self.sets.push(set);
        marker
    }

    /// The frame `out` (its 4-byte size prefix not yet set), whose record sets were encoded
    /// as markers in the order they were taken, with each record set in its marker's place.
    /// `compact`: the encoding's byte strings carry an unsigned varint of length + 1 (flexible
    /// versions), else a 4-byte length.
    pub(crate) fn splice(self, mut out: BytesMut, compact: bool) -> Result<Response, String> {
        let marker_prefix = length_prefix(MARKER_LEN, compact);
        let mut cuts = Vec::with_capacity(self.sets.len());
        let salt = self.salt.unwrap_or_default();
        let mut from = 4;
        let mut size = out.len() - 4;
        for (i, set) in self.sets.iter().enumerate() {
            let marker = marker(&salt, i);
            let at = out
                .get(from..)
                .and_then(|rest| memchr::memmem::find(rest, &marker))
                .map(|p| p + from)
                .ok_or_else(|| format!("record set {i} was not encoded where expected"))?;
            let start = at
                .checked_sub(marker_prefix.len())
                .filter(|s| *s >= from && out[*s..at] == marker_prefix[..])
                .ok_or_else(|| format!("record set {i} is not a length-prefixed field"))?;
            let prefix = length_prefix(set.len(), compact);
            size = size - marker_prefix.len() - MARKER_LEN + prefix.len() + set.len();
            cuts.push((start, prefix));
            from = at + MARKER_LEN;
        }
        let size = u32::try_from(size).map_err(|_| format!("a response of {size} bytes"))?;
        out[..4].copy_from_slice(&size.to_be_bytes());
        let out = out.freeze();
        let mut response = Response::default();
        let mut last = 0;
        for ((start, prefix), set) in cuts.into_iter().zip(self.sets) {
            response.push(out.slice(last..start));
            response.push(Bytes::from(prefix));
            match set {
                RecordSet::Bytes(pieces) => pieces.into_iter().for_each(|b| response.push(b)),
                RecordSet::Files(files) => response.parts.extend(files.into_iter().map(Part::File)),
            }
            last = start + marker_prefix.len() + MARKER_LEN;
        }
        response.push(out.slice(last..));
        Ok(response)
    }
}

fn marker(salt: &[u8; 12], index: usize) -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    m[..12].copy_from_slice(salt);
    m[12..].copy_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
    m
}

/// How a byte string of `len` bytes is length-prefixed.
fn length_prefix(len: usize, compact: bool) -> Vec<u8> {
    if !compact {
        return u32::try_from(len)
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
    }
    let mut v = len as u64 + 1;
    let mut out = Vec::with_capacity(5);
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_written_in_their_pieces_and_advance_across_them() {
        let mut r = Buffers::default();
        for p in [&b"abc"[..], b"", b"defg", b"h"] {
            r.push(Bytes::copy_from_slice(p));
        }
        assert_eq!(r.remaining(), 8);
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(
            r.chunks_vectored(&mut slices),
            3,
            "empty pieces are dropped"
        );
        r.advance(4);
        assert_eq!(r.chunk(), b"efg");
        assert_eq!(r.copy_to_bytes(r.remaining()), Bytes::from_static(b"efgh"));
    }
}
