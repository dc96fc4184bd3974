//! The records of a compressed batch as a byte stream, so an append can count and check them
//! the way it checks uncompressed ones (Kafka's broker decompresses every batch it validates).
//!
//! Nothing is decompressed into one buffer: the walk reads through a small window, skips key,
//! value and header bytes, and stops once the stream has produced `budget` bytes, so a
//! compression bomb costs bounded time and no memory. The codecs are Kafka's: gzip, snappy
//! (xerial-framed as the Java client writes it, or one raw block as librdkafka writes it),
//! LZ4 frames and zstd (windows up to [`ZSTD_WINDOW_LOG_MAX`]).

use std::io::{self, BufRead, BufReader, Read};

/// The largest zstd window accepted: 8 MiB, what compression levels up to 19 use. A decoder
/// holds one window, so a frame declaring 2 GiB cannot make every concurrent append allocate
/// it; the "ultra" levels 20–22 are refused.
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The header of a xerial-framed snappy stream (snappy-java's `SnappyOutputStream`).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// Snappy cannot expand more than about 21-fold (a 3-byte copy of 64 bytes); a block declaring
/// more is corrupt and is refused before anything is allocated for it.
const SNAPPY_MAX_RATIO: usize = 24;

/// A decompressing reader over a batch's records that counts what it produced.
pub(crate) struct Stream<'a> {
    inner: BufReader<Box<dyn Read + 'a>>,
    position: u64,
    budget: u64,
    /// Why the stream stopped early, when it was not the end of the data.
    pub(crate) failure: Option<String>,
}

impl<'a> Stream<'a> {
    /// The decompressed records of codec `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd) in
    /// `data`, producing at most `budget` bytes.
    pub(crate) fn open(codec: i16, data: &'a [u8], budget: u64) -> io::Result<Self> {
        let inner: Box<dyn Read + 'a> = match codec {
            1 => Box::new(flate2::read::MultiGzDecoder::new(data)),
            2 => Box::new(Snappy::new(data, budget)),
            3 => Box::new(lz4::Decoder::new(data)?),
            4 => {
                let mut d = zstd::stream::read::Decoder::with_buffer(data)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Box::new(d)
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("codec {other} is not a compression codec"),
                ));
            }
        };
        Ok(Self {
            inner: BufReader::with_capacity(16 * 1024, inner),
            position: 0,
            budget,
            failure: None,
        })
    }

    /// The bytes buffered and not yet consumed; empty at the end of the data or on a failure
    /// (then `failure` says why).
    fn buffered(&mut self) -> &[u8] {
        if self.failure.is_some() {
            return &[];
        }
        let over = self.position >= self.budget;
        match self.inner.fill_buf() {
            // Data that ends exactly at the budget is within it.
            Ok([]) => &[],
            Ok(_) if over => {
                self.failure = Some(format!(
                    "the records decompress to more than {} bytes",
                    self.budget
                ));
                &[]
            }
            Ok(buf) => buf,
            Err(e) => {
                self.failure = Some(format!("decompression failed: {e}"));
                &[]
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.position += n as u64;
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        let b = *self.buffered().first()?;
        self.consume(1);
        Some(b)
    }

    pub(crate) fn skip(&mut self, mut n: usize) -> Option<()> {
        while n > 0 {
            let step = self.buffered().len().min(n);
            if step == 0 {
                return None;
            }
            self.consume(step);
            n -= step;
        }
        Some(())
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Whether the data ends here.
    pub(crate) fn at_end(&mut self) -> bool {
        self.buffered().is_empty() && self.failure.is_none()
    }

    /// Reads to the end of the data (or the budget); returns how many bytes that was.
    pub(crate) fn skip_rest(&mut self) -> usize {
        let mut n = 0;
        loop {
            let step = self.buffered().len();
            if step == 0 {
                return n;
            }
            self.consume(step);
            n += step;
        }
    }
}

/// The records of a compressed batch, decompressed whole (at most `budget` bytes): what the
/// cleaner reads before it drops some of them.
pub fn decompress_all(codec: i16, data: &[u8], budget: u64) -> io::Result<Vec<u8>> {
    let mut stream = Stream::open(codec, data, budget)?;
    let mut out = Vec::with_capacity(data.len().saturating_mul(2));
    loop {
        let chunk = stream.buffered();
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        out.extend_from_slice(chunk);
        stream.consume(n);
    }
    match stream.failure {
        Some(reason) => Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
        None => Ok(out),
    }
}

/// `data` compressed with codec `codec` as Kafka's clients write it: gzip, one raw snappy
/// block (as librdkafka writes it; the Java client reads both forms), an LZ4 frame, or a
/// zstd frame.
pub fn compress(codec: i16, data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    match codec {
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data)?;
            e.finish()
        }
        2 => snap::raw::Encoder::new()
            .compress_vec(data)
            .map_err(io::Error::other),
        3 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new())?;
            e.write_all(data)?;
            let (out, result) = e.finish();
            result.map(|()| out)
        }
        4 => zstd::bulk::compress(data, 3),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("codec {other} is not a compression codec"),
        )),
    }
}

/// Kafka's snappy: xerial frames (a 16-byte header, then blocks each prefixed by its
/// compressed length) or, without the header, one raw snappy block.
struct Snappy<'a> {
    rest: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    read: usize,
    budget: u64,
}

impl<'a> Snappy<'a> {
    fn new(data: &'a [u8], budget: u64) -> Self {
        let framed = data.len() >= XERIAL_HEADER_LEN && data.starts_with(XERIAL_MAGIC);
        Self {
            rest: if framed {
                &data[XERIAL_HEADER_LEN..]
            } else {
                data
            },
            framed,
            block: Vec::new(),
            read: 0,
            budget,
        }
    }

    /// Decompresses the next block; false at the end of the data.
    fn next_block(&mut self) -> io::Result<bool> {
        let corrupt = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if self.rest.is_empty() {
            return Ok(false);
        }
        let chunk = if self.framed {
            let Some((len, tail)) = self.rest.split_first_chunk::<4>() else {
                return Err(corrupt("truncated snappy frame length".into()));
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > tail.len() {
                return Err(corrupt(format!(
                    "snappy frame of {len} bytes runs past the batch"
                )));
            }
            let (chunk, rest) = tail.split_at(len);
            self.rest = rest;
            chunk
        } else {
            std::mem::take(&mut self.rest)
        };
        let len = snap::raw::decompress_len(chunk).map_err(|e| corrupt(e.to_string()))?;
        if len > chunk.len().saturating_mul(SNAPPY_MAX_RATIO) || len as u64 > self.budget {
            return Err(corrupt(format!(
                "snappy block of {} bytes declares {len} decompressed",
                chunk.len()
            )));
        }
        self.block.resize(len, 0);
        snap::raw::Decoder::new()
            .decompress(chunk, &mut self.block)
            .map_err(|e| corrupt(e.to_string()))?;
        self.read = 0;
        Ok(true)
    }
}

impl Read for Snappy<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.read == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.block.len() - self.read);
        out[..n].copy_from_slice(&self.block[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}
