//! Response frames written in pieces. A Fetch answer is mostly record sets read from logs;
//! copying them into one encoded buffer cost as much CPU as reading them. Instead the
//! response is encoded with a short marker in place of each large record set, and the frame
//! is written as the encoded pieces around the record sets' own buffers (one `writev`).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Record sets at least this long are written from their own buffers; shorter ones are
/// cheaper to copy than to splice.
pub(crate) const SPLICED_RECORDS: usize = 4096;

const MARKER_LEN: usize = 16;

/// A response frame (with its size prefix), as pieces written one after another.
#[derive(Debug, Default)]
pub(crate) struct Response {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Response {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }
}

impl From<Bytes> for Response {
    fn from(bytes: Bytes) -> Self {
        let mut r = Self::default();
        r.push(bytes);
        r
    }
}

impl Buf for Response {
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
    sets: Vec<Bytes>,
}

impl Taken {
    /// Takes `records` when it is worth splicing, leaving its marker in its place.
    pub(crate) fn take(&mut self, records: &mut Bytes) {
        if records.len() >= SPLICED_RECORDS {
            let salt = self.salt.get_or_insert_with(|| {
                let mut salt = [0u8; 12];
                salt.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
                salt
            });
            let marker = Bytes::copy_from_slice(&marker(salt, self.sets.len()));
            self.sets.push(std::mem::replace(records, marker));
        }
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
            response.push(set);
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
    fn a_response_is_written_in_its_pieces_and_advances_across_them() {
        let mut r = Response::default();
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
